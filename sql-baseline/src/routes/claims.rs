//! `POST /v1/claims` (decided before it answers) and `GET /v1/claims/{id}`.

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use turnstile_claim::{ClaimId, ClaimRequestBody, ClaimRequested, ClaimStatus, RejectReason, UnixMillis, access::{Operation, Principal}};
use turnstile_store::{self as store, ClaimRow};
use turnstile_http::auth::require;
use uuid::Uuid;

use crate::{
    app::AppState,
    extract::{self, JsonBody},
    problem::ApiError,
    store::{ClaimOutcome, DecidedClaim, claim_for_update},
};

/// A claim as clients see it: the same shape `claim-api` answers with.
#[derive(Debug, Serialize)]
pub struct ClaimView {
    /// The claim's id (stable for its Idempotency-Key).
    pub claim_id: Uuid,
    /// `pending`, `granted` or `rejected`.
    pub status: &'static str,
    /// Why it was rejected.
    pub reason: Option<&'static str>,
    /// The decision counter the claim was decided under.
    pub fence: Option<i64>,
}

impl ClaimView {
    fn decided(claim: &DecidedClaim) -> Self {
        Self {
            claim_id: claim.claim_id.as_uuid(),
            status: claim.status.as_str(),
            reason: claim.reason.map(RejectReason::as_str),
            fence: Some(claim.fence),
        }
    }

    fn from_row(row: &ClaimRow) -> Self {
        Self {
            claim_id: row.claim_id.as_uuid(),
            status: row.status.as_str(),
            reason: row.reason.map(RejectReason::as_str),
            fence: row.fence,
        }
    }
}

/// 200 for a decided claim, 202 for one still pending (only a claim the
/// pipeline accepted under the same tenant and key can be), as `claim-api`.
fn respond(view: ClaimView) -> Response {
    let location = format!("/v1/claims/{}", view.claim_id);
    let status = if view.status == ClaimStatus::Pending.as_str() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, [(header::LOCATION, location)], Json(view)).into_response()
}

/// Decides a claim for a coupon or SKU and answers with the decision.
/// Exactly one claim exists per tenant and `Idempotency-Key`, however often
/// and however concurrently the request is sent.
pub async fn create_claim(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ClaimRequestBody>,
) -> Result<Response, ApiError> {
    require(&principal, Operation::PostClaims)?;
    let key = extract::idempotency_key(&headers)?;
    let tenant = principal.tenant;
    let request = body
        .parse(tenant.clone())
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    state.limits.check_user(&tenant, &request.user)?;
    // Shed rather than queue: a full house answers 429 before any work.
    let Ok(_permit) = state.inflight.clone().try_acquire_owned() else {
        return Err(ApiError::Overloaded {
            cause: "concurrency",
            retry_after: 1,
        });
    };
    let event = ClaimRequested {
        claim_id: ClaimId::for_request(&tenant, &key),
        resource: request.resource.clone(),
        user_id: request.user.clone(),
        quantity: request.quantity,
        accepted_at_ms: UnixMillis::now(),
    };
    let outcome = claim_for_update(&state.pool, &request.fingerprint(), &event)
        .await
        .map_err(|e| crate::store::problem(&e, "deciding a claim"))?;
    match outcome {
        ClaimOutcome::Decided(claim) => {
            tracing::debug!(
                claim_id = %claim.claim_id,
                resource = %event.resource,
                status = claim.status.as_str(),
                fence = claim.fence,
                "claim decided"
            );
            Ok(respond(ClaimView::decided(&claim)))
        }
        ClaimOutcome::Replay(claim_id) => match store::claim(&state.pool, claim_id).await {
            Ok(Some(row)) => Ok(respond(ClaimView::from_row(&row))),
            Ok(None) => {
                tracing::error!(%claim_id, "an idempotency key names a claim that does not exist");
                Err(ApiError::Internal)
            }
            Err(e) => Err(crate::store::problem(&e, "reading a replayed claim")),
        },
        ClaimOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
        ClaimOutcome::UnknownResource => Err(ApiError::UnknownResource(event.resource.local_name())),
    }
}

/// Reads a claim of the caller's tenant.
pub async fn get_claim(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(raw): Path<String>,
) -> Result<Json<ClaimView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("claim {raw} does not exist"));
    require(&principal, Operation::Read)?;
    let tenant = principal.tenant;
    let id = Uuid::parse_str(&raw).map_err(|_| not_found())?;
    match store::claim(&state.pool, ClaimId::from_uuid(id)).await {
        Ok(Some(row)) if row.tenant_id == tenant.as_str() => Ok(Json(ClaimView::from_row(&row))),
        Ok(_) => Err(not_found()),
        Err(e) => Err(crate::store::problem(&e, "reading a claim")),
    }
}
