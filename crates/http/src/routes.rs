//! The `/v1` route table both services serve: one path per operation,
//! declared once, so a service cannot leave one out or spell it its own way.

use axum::{Router, routing::MethodRouter};

/// `POST` a claim.
pub const CLAIMS: &str = "/v1/claims";
/// `GET` a claim.
pub const CLAIM: &str = "/v1/claims/{claim_id}";
/// `POST` a coupon.
pub const COUPONS: &str = "/v1/coupons";
/// `GET` a coupon.
pub const COUPON: &str = "/v1/coupons/{code}";
/// `POST` a SKU.
pub const SKUS: &str = "/v1/skus";
/// `GET` a SKU.
pub const SKU: &str = "/v1/skus/{sku}";

/// A service's handler for every `/v1` operation.
pub struct V1Routes<S> {
    pub create_claim: MethodRouter<S>,
    pub get_claim: MethodRouter<S>,
    pub create_coupon: MethodRouter<S>,
    pub get_coupon: MethodRouter<S>,
    pub create_sku: MethodRouter<S>,
    pub get_sku: MethodRouter<S>,
}

impl<S> std::fmt::Debug for V1Routes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V1Routes").finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> V1Routes<S> {
    /// The router of every `/v1` route.
    pub fn into_router(self) -> Router<S> {
        Router::new()
            .route(CLAIMS, self.create_claim)
            .route(CLAIM, self.get_claim)
            .route(COUPONS, self.create_coupon)
            .route(COUPON, self.get_coupon)
            .route(SKUS, self.create_sku)
            .route(SKU, self.get_sku)
    }
}
