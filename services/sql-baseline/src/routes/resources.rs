//! Coupons and SKUs: create them, read their stock (straight from Postgres:
//! the baseline has no cache).

use axum::{
    Json,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use turnstile_claim::{ResourceId, ResourceKey, ResourceKind, store};

use crate::{app::AppState, extract::JsonBody, problem::ApiError};

/// `POST /v1/coupons` body, as `claim-api` takes it.
#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSku {
    /// The SKU.
    pub sku: String,
    /// Units in stock.
    pub stock: i64,
}

/// A coupon and what is left of it.
#[derive(Debug, Serialize)]
pub struct Coupon {
    /// The code.
    pub code: String,
    /// Units it started with.
    pub total: i64,
    /// Units left.
    pub remaining: i64,
}

/// A SKU and what is left of it.
#[derive(Debug, Serialize)]
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

async fn create(state: &AppState, key: &ResourceKey, total: i64, per_user_limit: Option<i32>) -> Result<(), ApiError> {
    match store::create_resource(&state.pool, key, total, per_user_limit).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::AlreadyExists(key.to_string())),
        Err(e) => Err(ApiError::from_store(&e, "creating a resource")),
    }
}

/// Creates a coupon.
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
    create(&state, &ResourceKey::coupon(id.clone()), total, body.per_user_limit).await?;
    let location = format!("/v1/coupons/{}", id.as_str());
    let coupon = Coupon {
        code: id.into(),
        total,
        remaining: total,
    };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(coupon)).into_response())
}

/// Creates a SKU.
pub async fn create_sku(State(state): State<AppState>, JsonBody(body): JsonBody<NewSku>) -> Result<Response, ApiError> {
    let id = parse_id("sku", &body.sku)?;
    let stock = parse_stock("stock", body.stock)?;
    create(&state, &ResourceKey::sku(id.clone()), stock, None).await?;
    let location = format!("/v1/skus/{}", id.as_str());
    let sku = Sku {
        sku: id.into(),
        stock,
        remaining: stock,
    };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(sku)).into_response())
}

async fn stock(state: &AppState, kind: ResourceKind, raw: &str) -> Result<(i64, i64), ApiError> {
    let not_found = || ApiError::NotFound(format!("{}:{raw} does not exist", kind.as_str()));
    // An id that cannot exist is simply not found.
    let id = ResourceId::parse("id", raw).map_err(|_| not_found())?;
    match store::resource(&state.pool, &ResourceKey { kind, id }).await {
        Ok(Some(row)) => Ok((row.total, row.remaining)),
        Ok(None) => Err(not_found()),
        Err(e) => Err(ApiError::from_store(&e, "reading a resource")),
    }
}

/// Reads a coupon.
pub async fn get_coupon(State(state): State<AppState>, Path(code): Path<String>) -> Result<Json<Coupon>, ApiError> {
    let (total, remaining) = stock(&state, ResourceKind::Coupon, &code).await?;
    Ok(Json(Coupon { code, total, remaining }))
}

/// Reads a SKU.
pub async fn get_sku(State(state): State<AppState>, Path(sku): Path<String>) -> Result<Json<Sku>, ApiError> {
    let (stock, remaining) = stock(&state, ResourceKind::Sku, &sku).await?;
    Ok(Json(Sku { sku, stock, remaining }))
}
