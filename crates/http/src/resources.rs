//! The coupon and SKU bodies every service takes and answers with, and
//! their validation, so `POST /v1/coupons` means the same everywhere.

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use turnstile_claim::{ResourceId, ResourceKey, ResourceKind, TenantId};
use utoipa::ToSchema;

use crate::problem::ApiError;

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

/// A resource to create, validated.
#[derive(Debug, Clone)]
pub struct NewResource {
    /// Which coupon or SKU.
    pub key: ResourceKey,
    /// Units it starts with.
    pub total: i64,
    /// Grants per user (coupons only); `None` is unlimited.
    pub per_user_limit: Option<i32>,
}

/// The most units a resource may have.
pub const MAX_STOCK: i64 = 1_000_000_000;

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

impl NewCoupon {
    /// Checks the code, the total and the per-user limit (422 otherwise),
    /// for a coupon of `tenant`.
    pub fn validate(&self, tenant: TenantId) -> Result<NewResource, ApiError> {
        let id = parse_id("code", &self.code)?;
        let total = parse_stock("total", self.total)?;
        if self.per_user_limit.is_some_and(|l| l < 1) {
            return Err(ApiError::InvalidRequest(
                "per_user_limit: must be at least 1".to_owned(),
            ));
        }
        Ok(NewResource {
            key: ResourceKey::coupon(tenant, id),
            total,
            per_user_limit: self.per_user_limit,
        })
    }
}

impl NewSku {
    /// Checks the SKU and the stock (422 otherwise), for a SKU of `tenant`.
    pub fn validate(&self, tenant: TenantId) -> Result<NewResource, ApiError> {
        Ok(NewResource {
            key: ResourceKey::sku(tenant, parse_id("sku", &self.sku)?),
            total: parse_stock("stock", self.stock)?,
            per_user_limit: None,
        })
    }
}

impl NewResource {
    /// The `201 Created` answer, with its `Location`.
    pub fn created(&self) -> Response {
        let id = self.key.id.as_str().to_owned();
        match self.key.kind {
            ResourceKind::Coupon => {
                let location = format!("/v1/coupons/{id}");
                let body = Coupon {
                    code: id,
                    total: self.total,
                    remaining: self.total,
                };
                (StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response()
            }
            ResourceKind::Sku => {
                let location = format!("/v1/skus/{id}");
                let body = Sku {
                    sku: id,
                    stock: self.total,
                    remaining: self.total,
                };
                (StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response()
            }
        }
    }
}

/// The resource of `tenant` a path names; an id that cannot exist is simply
/// not found.
pub fn path_key(tenant: TenantId, kind: ResourceKind, raw: &str) -> Result<ResourceKey, ApiError> {
    ResourceId::parse("id", raw)
        .map(|id| ResourceKey { tenant, kind, id })
        .map_err(|_| ApiError::NotFound(format!("{}:{raw} does not exist", kind.as_str())))
}
