//! Coupons and SKUs: create them, read their stock (straight from Postgres:
//! the baseline has no cache).

use axum::{
    Json,
    extract::{Path, State},
    response::Response,
};
use turnstile_claim::{ResourceKind, store};
use turnstile_http::resources::{Coupon, NewCoupon, NewResource, NewSku, Sku, path_key};

use crate::{app::AppState, extract::JsonBody, problem::ApiError};

async fn create(state: &AppState, new: &NewResource) -> Result<(), ApiError> {
    match store::create_resource(&state.pool, &new.key, new.total, new.per_user_limit).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::AlreadyExists(new.key.to_string())),
        Err(e) => Err(ApiError::from_store(&e, "creating a resource")),
    }
}

/// Creates a coupon.
pub async fn create_coupon(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewCoupon>,
) -> Result<Response, ApiError> {
    let coupon = body.validate()?;
    create(&state, &coupon).await?;
    Ok(coupon.created())
}

/// Creates a SKU.
pub async fn create_sku(State(state): State<AppState>, JsonBody(body): JsonBody<NewSku>) -> Result<Response, ApiError> {
    let sku = body.validate()?;
    create(&state, &sku).await?;
    Ok(sku.created())
}

async fn stock(state: &AppState, kind: ResourceKind, raw: &str) -> Result<(i64, i64), ApiError> {
    let key = path_key(kind, raw)?;
    match store::resource(&state.pool, &key).await {
        Ok(Some(row)) => Ok((row.total, row.remaining)),
        Ok(None) => Err(ApiError::NotFound(format!("{key} does not exist"))),
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
