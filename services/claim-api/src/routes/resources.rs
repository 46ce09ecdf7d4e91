//! Coupons and SKUs: create them, read their stock.

use axum::{
    Json,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use turnstile_claim::{ResourceId, ResourceKey, ResourceKind, store};
use utoipa::ToSchema;

use crate::{app::AppState, extract::JsonBody, problem::ApiError};

/// `POST /v1/coupons` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCoupon {
    /// The code, 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
    pub code: String,
    /// Units available.
    pub total: i64,
    /// Grants per user; absent means unlimited.
    pub per_user_limit: Option<i32>,
}

/// `POST /v1/skus` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSku {
    /// The SKU, 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
    pub sku: String,
    /// Units in stock.
    pub stock: i64,
}

/// A coupon and what is left of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Coupon {
    /// The code.
    pub code: String,
    /// Units it started with.
    pub total: i64,
    /// Units left.
    pub remaining: i64,
}

/// A SKU and what is left of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sku {
    /// The SKU.
    pub sku: String,
    /// Units it started with.
    pub stock: i64,
    /// Units left.
    pub remaining: i64,
}

const MAX_STOCK: i64 = 1_000_000_000;

fn parse_stock(field: &str, value: i64) -> Result<i64, ApiError> {
    if (0..=MAX_STOCK).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::InvalidRequest(format!(
            "{field}: must be an integer from 0 to {MAX_STOCK}"
        )))
    }
}

fn parse_id(field: &'static str, raw: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(field, raw).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

async fn create(state: &AppState, key: ResourceKey, total: i64, per_user_limit: Option<i32>) -> Result<(), ApiError> {
    state.postgres.permit()?;
    let created = store::create_resource(&state.write_pool, &key, total, per_user_limit).await;
    state
        .postgres
        .record(created.as_ref().map_or_else(|e| !e.is_transient(), |_| true));
    match created {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::AlreadyExists(key.to_string())),
        Err(e) if e.is_transient() => Err(state.postgres.unavailable()),
        Err(e) => {
            tracing::error!(error = %e, cause = ?e, "creating a resource failed");
            Err(ApiError::Internal)
        }
    }
}

/// Creates a coupon.
#[utoipa::path(post, path = "/v1/coupons", request_body = NewCoupon, tag = "resources",
    responses((status = 201, body = Coupon), (status = 409, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem)))]
pub async fn create_coupon(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewCoupon>,
) -> Result<Response, ApiError> {
    let id = parse_id("code", &body.code)?;
    let total = parse_stock("total", body.total)?;
    if body.per_user_limit.is_some_and(|l| l < 1) {
        return Err(ApiError::InvalidRequest(
            "per_user_limit: must be at least 1".to_owned(),
        ));
    }
    create(&state, ResourceKey::coupon(id.clone()), total, body.per_user_limit).await?;
    let location = format!("/v1/coupons/{}", id.as_str());
    let coupon = Coupon {
        code: id.into(),
        total,
        remaining: total,
    };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(coupon)).into_response())
}

/// Creates a SKU.
#[utoipa::path(post, path = "/v1/skus", request_body = NewSku, tag = "resources",
    responses((status = 201, body = Sku), (status = 409, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem)))]
pub async fn create_sku(State(state): State<AppState>, JsonBody(body): JsonBody<NewSku>) -> Result<Response, ApiError> {
    let id = parse_id("sku", &body.sku)?;
    let stock = parse_stock("stock", body.stock)?;
    create(&state, ResourceKey::sku(id.clone()), stock, None).await?;
    let location = format!("/v1/skus/{}", id.as_str());
    let sku = Sku {
        sku: id.into(),
        stock,
        remaining: stock,
    };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(sku)).into_response())
}

/// Stock of a resource: the Redis cache first, Postgres when the cache
/// misses or fails (and the cache is filled, fenced, on the way out).
async fn stock(state: &AppState, key: &ResourceKey) -> Result<(i64, i64), ApiError> {
    if let Ok(Some(cached)) = state.cache.get(key).await {
        return Ok((cached.total, cached.remaining));
    }
    state.postgres.permit()?;
    let row = store::resource(&state.read_pool, key).await;
    state
        .postgres
        .record(row.as_ref().map_or_else(|e| !e.is_transient(), |_| true));
    match row {
        Ok(Some(row)) => {
            let _ = state.cache.update(key, row.fence, row.remaining, row.total).await;
            Ok((row.total, row.remaining))
        }
        Ok(None) => Err(ApiError::NotFound(format!("{key} does not exist"))),
        Err(e) if e.is_transient() => Err(state.postgres.unavailable()),
        Err(e) => {
            tracing::error!(error = %e, cause = ?e, "reading a resource failed");
            Err(ApiError::Internal)
        }
    }
}

fn path_id(kind: ResourceKind, raw: &str) -> Result<ResourceKey, ApiError> {
    // An id that cannot exist is simply not found.
    ResourceId::parse("id", raw)
        .map(|id| ResourceKey { kind, id })
        .map_err(|_| ApiError::NotFound(format!("{}:{raw} does not exist", kind.as_str())))
}

/// Reads a coupon.
#[utoipa::path(get, path = "/v1/coupons/{code}", tag = "resources",
    params(("code" = String, Path, description = "Coupon code")),
    responses((status = 200, body = Coupon), (status = 404, body = crate::problem::Problem)))]
pub async fn get_coupon(State(state): State<AppState>, Path(code): Path<String>) -> Result<Json<Coupon>, ApiError> {
    let key = path_id(ResourceKind::Coupon, &code)?;
    let (total, remaining) = stock(&state, &key).await?;
    Ok(Json(Coupon { code, total, remaining }))
}

/// Reads a SKU.
#[utoipa::path(get, path = "/v1/skus/{sku}", tag = "resources",
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 200, body = Sku), (status = 404, body = crate::problem::Problem)))]
pub async fn get_sku(State(state): State<AppState>, Path(sku): Path<String>) -> Result<Json<Sku>, ApiError> {
    let key = path_id(ResourceKind::Sku, &sku)?;
    let (stock, remaining) = stock(&state, &key).await?;
    Ok(Json(Sku { sku, stock, remaining }))
}
