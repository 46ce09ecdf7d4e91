//! `POST /v1/claims` (decided before it answers) and `GET /v1/claims/{id}`.

use axum::{Extension, Json, extract::State, http::HeaderMap, response::Response};
use turnstile_claim::{
    ClaimId, ClaimRequestBody, ClaimRequested, UnixMillis,
    access::{Operation, Principal},
};
use turnstile_http::{auth::require, claims::ClaimView};
use turnstile_store as store;
use uuid::Uuid;

use crate::{
    app::AppState,
    extract::{self, JsonBody, PathParam},
    problem::ApiError,
    store::{ClaimOutcome, claim_resolved},
};

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
    let outcome = claim_resolved(&state.pool, &request.fingerprint(), &event, state.outcome_deadline)
        .await
        .map_err(|(e, unknown)| crate::store::problem(&e, unknown, "deciding a claim"))?;
    match outcome {
        ClaimOutcome::Decided(claim) => {
            tracing::debug!(
                claim_id = %claim.claim_id,
                resource = %event.resource,
                status = claim.status.as_str(),
                fence = claim.fence,
                "claim decided"
            );
            Ok(ClaimView::decided(claim.claim_id, claim.status, claim.reason, Some(claim.fence)).respond())
        }
        ClaimOutcome::Replay(claim_id) => match store::claim(&state.pool, claim_id).await {
            Ok(Some(row)) => Ok(ClaimView::decided(row.claim_id, row.status, row.reason, row.fence).respond()),
            Ok(None) => {
                tracing::error!(%claim_id, "an idempotency key names a claim that does not exist");
                Err(ApiError::Internal)
            }
            // The claim is recorded, maybe by this very request (a commit
            // whose answer was lost, resolved as a replay): never a 503.
            Err(e) => Err(crate::store::problem(&e, true, "reading a replayed claim")),
        },
        ClaimOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
        ClaimOutcome::UnknownResource => Err(ApiError::UnknownResource(event.resource.local_name())),
    }
}

/// Reads a claim of the caller's tenant.
pub async fn get_claim(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(raw): PathParam,
) -> Result<Json<ClaimView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("claim {raw} does not exist"));
    require(&principal, Operation::Read)?;
    let tenant = principal.tenant;
    let id = Uuid::parse_str(&raw).map_err(|_| not_found())?;
    match store::claim(&state.pool, ClaimId::from_uuid(id)).await {
        Ok(Some(row)) if row.tenant_id == tenant.as_str() => Ok(Json(ClaimView::decided(
            row.claim_id,
            row.status,
            row.reason,
            row.fence,
        ))),
        Ok(_) => Err(not_found()),
        Err(e) => Err(crate::store::problem(&e, false, "reading a claim")),
    }
}
