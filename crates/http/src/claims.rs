//! A claim as clients see it, and how it is answered: the same shape and
//! the same statuses from `claim-api` and from `sql-baseline`.

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use turnstile_claim::{ClaimDecided, ClaimId, ClaimStatus, RejectReason};
use utoipa::ToSchema;
use uuid::Uuid;

/// A claim as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimView {
    /// The claim's id (stable for its Idempotency-Key).
    pub claim_id: Uuid,
    /// `pending`, `granted` or `rejected`.
    #[schema(value_type = String, example = "granted")]
    pub status: &'static str,
    /// Why it was rejected: `sold_out`, `insufficient_stock`,
    /// `per_user_limit` or `unknown_resource`.
    #[schema(value_type = Option<String>)]
    pub reason: Option<&'static str>,
    /// The fencing token the decision was written under.
    pub fence: Option<i64>,
}

impl ClaimView {
    /// A claim recorded and not yet decided.
    pub fn pending(claim_id: ClaimId) -> Self {
        Self {
            claim_id: claim_id.as_uuid(),
            status: ClaimStatus::Pending.as_str(),
            reason: None,
            fence: None,
        }
    }

    /// A claim as decided.
    pub fn decided(claim_id: ClaimId, status: ClaimStatus, reason: Option<RejectReason>, fence: Option<i64>) -> Self {
        Self {
            claim_id: claim_id.as_uuid(),
            status: status.as_str(),
            reason: reason.map(RejectReason::as_str),
            fence,
        }
    }

    /// Whether the claim is decided.
    pub fn is_final(&self) -> bool {
        self.status != ClaimStatus::Pending.as_str()
    }

    /// The answer to a claim that was not recorded (rejected at the door,
    /// from what earlier decisions settled): `200` with the same body as a
    /// decided claim's, and no `Location`, as there is nothing to read back.
    pub fn respond_unrecorded(self) -> Response {
        (StatusCode::OK, Json(self)).into_response()
    }

    /// The answer to `POST /v1/claims`: 200 for a decided claim, 202 for a
    /// pending one, with its `Location` either way.
    pub fn respond(self) -> Response {
        let location = format!("/v1/claims/{}", self.claim_id);
        let status = if self.is_final() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        (status, [(header::LOCATION, location)], Json(self)).into_response()
    }
}

impl From<&ClaimDecided> for ClaimView {
    fn from(event: &ClaimDecided) -> Self {
        Self::decided(
            event.claim_id,
            event.status,
            event.reason,
            i64::try_from(event.fence).ok(),
        )
    }
}

/// The request body, for the OpenAPI document: exactly one of `coupon` and
/// `sku`; `quantity` only for SKUs (1 to 1000, default 1). The handlers
/// parse [`turnstile_claim::ClaimRequestBody`].
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ClaimBody {
    coupon: Option<String>,
    sku: Option<String>,
    user_id: String,
    quantity: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_claim_is_202_and_a_decided_one_200_both_with_their_location() {
        let id = ClaimId::from_uuid(Uuid::from_u128(7));
        let pending = ClaimView::pending(id).respond();
        assert_eq!(pending.status(), StatusCode::ACCEPTED);
        assert_eq!(
            pending.headers()[header::LOCATION],
            format!("/v1/claims/{}", id.as_uuid())
        );
        let granted = ClaimView::decided(id, ClaimStatus::Granted, None, Some(3)).respond();
        assert_eq!(granted.status(), StatusCode::OK);
        let rejected = ClaimView::decided(id, ClaimStatus::Rejected, Some(RejectReason::SoldOut), Some(3));
        assert_eq!(rejected.reason, Some("sold_out"));
        assert!(rejected.is_final());
    }
}
