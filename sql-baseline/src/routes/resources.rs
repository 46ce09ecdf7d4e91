//! Coupons and SKUs: create them, read their stock (straight from Postgres:
//! the baseline has no cache).

use axum::{Extension, Json, extract::State, response::Response};
use turnstile_claim::{
    ResourceKind,
    access::{Operation, Principal},
};
use turnstile_http::auth::require;
use turnstile_http::resources::{Coupon, NewCoupon, NewResource, NewSku, Sku, path_key};
use turnstile_store as store;

use crate::{
    app::AppState,
    extract::{JsonBody, PathParam},
    problem::ApiError,
};

async fn create(state: &AppState, new: &NewResource) -> Result<(), ApiError> {
    match store::create_resource(&state.pool, &new.key, new.total, new.per_user_limit).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::AlreadyExists(new.key.local_name())),
        Err(e) => Err(crate::store::problem(&e, false, "creating a resource")),
    }
}

/// Creates a coupon of the caller's tenant (admin keys).
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

async fn stock(state: &AppState, principal: Principal, kind: ResourceKind, raw: &str) -> Result<(i64, i64), ApiError> {
    require(&principal, Operation::Read)?;
    let key = path_key(principal.tenant, kind, raw)?;
    match store::resource(&state.pool, &key).await {
        Ok(Some(row)) => Ok((row.total, row.remaining)),
        Ok(None) => Err(ApiError::NotFound(format!("{} does not exist", key.local_name()))),
        Err(e) => Err(crate::store::problem(&e, false, "reading a resource")),
    }
}

/// Reads a coupon of the caller's tenant.
pub async fn get_coupon(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(code): PathParam,
) -> Result<Json<Coupon>, ApiError> {
    let (total, remaining) = stock(&state, principal, ResourceKind::Coupon, &code).await?;
    Ok(Json(Coupon { code, total, remaining }))
}

/// Reads a SKU of the caller's tenant.
pub async fn get_sku(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(sku): PathParam,
) -> Result<Json<Sku>, ApiError> {
    let (stock, remaining) = stock(&state, principal, ResourceKind::Sku, &sku).await?;
    Ok(Json(Sku { sku, stock, remaining }))
}
