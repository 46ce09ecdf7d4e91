//! Coupons and SKUs: create them, read their stock.

use axum::{Extension, Json, extract::State, response::Response};
use turnstile_claim::{
    ResourceKey, ResourceKind,
    access::{Operation, Principal},
};
use turnstile_http::{
    auth::require,
    openapi::{CreateErrors, ReadErrors},
    resources::{Coupon, NewCoupon, NewResource, NewSku, Sku, path_key},
};
use turnstile_store as store;

use crate::{
    app::AppState,
    extract::{JsonBody, PathParam},
    problem::ApiError,
};

async fn create(state: &AppState, new: &NewResource) -> Result<(), ApiError> {
    state.postgres.permit()?;
    let created = store::create_resource(&state.write_pool, &new.key, new.total, new.per_user_limit).await;
    state
        .postgres
        .record(created.as_ref().map_or_else(|e| !e.is_transient(), |_| true));
    match created {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::AlreadyExists(new.key.local_name())),
        Err(e) if e.is_transient() => Err(state.postgres.unavailable()),
        Err(e) => {
            tracing::error!(error = %e, cause = ?e, "creating a resource failed");
            Err(ApiError::Internal)
        }
    }
}

/// Creates a coupon of the caller's tenant (admin keys).
#[utoipa::path(post, path = "/v1/coupons", request_body = NewCoupon, tag = "resources",
    responses((status = 201, description = "Created; `Location` names it", body = Coupon), CreateErrors),
    security(("api_key" = [])))]
pub async fn create_coupon(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody<NewCoupon>,
) -> Result<Response, ApiError> {
    require(&principal, Operation::ManageResources)?;
    let coupon = body.validate(principal.tenant)?;
    create(&state, &coupon).await?;
    Ok(coupon.created())
}

/// Creates a SKU of the caller's tenant (admin keys).
#[utoipa::path(post, path = "/v1/skus", request_body = NewSku, tag = "resources",
    responses((status = 201, description = "Created; `Location` names it", body = Sku), CreateErrors),
    security(("api_key" = [])))]
pub async fn create_sku(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody<NewSku>,
) -> Result<Response, ApiError> {
    require(&principal, Operation::ManageResources)?;
    let sku = body.validate(principal.tenant)?;
    create(&state, &sku).await?;
    Ok(sku.created())
}

/// Stock of a resource: the Redis cache first, Postgres when the cache
/// misses or fails (and the cache is filled, fenced, on the way out).
async fn stock(state: &AppState, key: &ResourceKey) -> Result<(i64, i64), ApiError> {
    if let Ok(Some(cached)) = state.cache.get(key).await {
        return Ok((cached.total, cached.remaining));
    }
    state.postgres.permit()?;
    let row = state.reads.resource(key).await;
    state
        .postgres
        .record(row.as_ref().map_or_else(|e| !e.is_transient(), |_| true));
    match row {
        Ok(Some(row)) => {
            let _ = state.cache.update(key, row.fence, row.remaining, row.total).await;
            Ok((row.total, row.remaining))
        }
        Ok(None) => Err(ApiError::NotFound(format!("{} does not exist", key.local_name()))),
        Err(e) if e.is_transient() => Err(state.postgres.unavailable()),
        Err(e) => {
            tracing::error!(error = %e, cause = ?e, "reading a resource failed");
            Err(ApiError::Internal)
        }
    }
}

/// Reads a coupon of the caller's tenant.
#[utoipa::path(get, path = "/v1/coupons/{code}", tag = "resources",
    params(("code" = String, Path, description = "Coupon code")),
    responses((status = 200, description = "The coupon and what is left of it", body = Coupon), ReadErrors),
    security(("api_key" = [])))]
pub async fn get_coupon(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(code): PathParam,
) -> Result<Json<Coupon>, ApiError> {
    require(&principal, Operation::Read)?;
    let key = path_key(principal.tenant, ResourceKind::Coupon, &code)?;
    let (total, remaining) = stock(&state, &key).await?;
    Ok(Json(Coupon { code, total, remaining }))
}

/// Reads a SKU of the caller's tenant.
#[utoipa::path(get, path = "/v1/skus/{sku}", tag = "resources",
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 200, description = "The SKU and what is left of it", body = Sku), ReadErrors),
    security(("api_key" = [])))]
pub async fn get_sku(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(sku): PathParam,
) -> Result<Json<Sku>, ApiError> {
    require(&principal, Operation::Read)?;
    let key = path_key(principal.tenant, ResourceKind::Sku, &sku)?;
    let (stock, remaining) = stock(&state, &key).await?;
    Ok(Json(Sku { sku, stock, remaining }))
}
