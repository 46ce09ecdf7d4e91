//! `POST /v1/claims` and `GET /v1/claims/{claim_id}`.

use std::{sync::Arc, time::Duration};

use axum::{
    Extension, Json,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use prometheus::IntGauge;
use tokio::sync::OwnedSemaphorePermit;
use turnstile_claim::{
    ClaimId, ClaimRequest, ClaimRequestBody, ClaimRequested, ClaimStatus, RejectReason, UnixMillis,
    access::{Operation, Principal},
};
use turnstile_http::{
    auth::require,
    claims::{ClaimBody, ClaimView},
    openapi::{ClaimErrors, ReadErrors},
};
use uuid::Uuid;

use crate::{
    accept::{AcceptJob, Admitted},
    admission::{Admission, AdmissionTicket, Entry},
    app::{AppState, ClaimContext, CorrelationId},
    extract::{self, JsonBody, PathParam},
    problem::ApiError,
};

/// Accepts a claim for a coupon or SKU and publishes it for a worker to
/// decide. Exactly one claim exists per tenant and `Idempotency-Key`, however
/// often and however concurrently the request is sent. A claim whose
/// rejection earlier decisions settled (sold out, or the user at the
/// per-user limit) is answered at the door: `200 rejected`, not recorded.
#[utoipa::path(post, path = "/v1/claims", request_body = ClaimBody, tag = "claims",
    params(
        ("Idempotency-Key" = String, Header, description = "1 to 255 visible ASCII characters; required"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (seconds, at most 10) waits for the decision"),
        ("Turnstile-Ticket" = Option<String>, Header, description = "The ticket of an earlier 429 for this key, \
            sent back unchanged: the claim keeps its first attempt's place in line"),
    ),
    responses(
        (status = 202, description = "Accepted, not decided yet; `Location` names the claim", body = ClaimView),
        (status = 200, description = "Decided, within `Prefer: wait` or before this repeat of the request (with `Location`); \
            or rejected at the door (`sold_out`, `per_user_limit`: what the pipeline would answer, from earlier \
            decisions), without `Location`, not recorded: a GET of its id answers 404 and the key stays free", body = ClaimView),
        ClaimErrors,
    ),
    security(("api_key" = [])))]
pub async fn create_claim(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    correlation: Option<Extension<CorrelationId>>,
    admission: Option<Extension<Admission>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ClaimRequestBody>,
) -> Result<Response, ApiError> {
    // The admission layer decides on every claim request first.
    let Some(entry) = admission.and_then(|Extension(admission)| admission.take()) else {
        tracing::error!("a claim reached its handler without an admission entry");
        return Err(ApiError::Internal);
    };
    require(&principal, Operation::PostClaims)?;
    let key = extract::idempotency_key(&headers)?;
    let tenant = principal.tenant;
    let request = body
        .parse(tenant.clone())
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    if let Err(limited) = state.limits.check_user(&tenant, &request.user) {
        state.metrics.throttled.with_label_values(&["rate_user"]).inc();
        return Err(limited);
    }
    let claim_id = ClaimId::for_request(&tenant, &key);
    let context = ClaimContext { tenant, claim_id };
    let correlation_id = correlation.map(|Extension(CorrelationId(id))| id).unwrap_or_default();
    let door = state
        .door
        .answer(&request.resource, request.user.as_str(), request.quantity.get());
    let slot = match entry {
        Entry::Slot(slot) => Some(slot),
        Entry::Queued(queued) if door.is_none() => match queued.wait().await {
            Ok(slot) => Some(slot),
            Err(refusal) => return Ok(refusal.response()),
        },
        Entry::Refused(refusal) if door.is_none() => return Ok(refusal.response()),
        // The door answers it: no slot needed.
        Entry::Queued(_) | Entry::Refused(_) => None,
    };
    let accepted = accept(&state, slot.as_ref(), door, &headers, claim_id, request, correlation_id).await;
    let mut response = accepted.into_response();
    response.extensions_mut().insert(context);
    Ok(response)
}

/// A held `Prefer: wait` slot, counted in `turnstile_decision_waiters`.
struct WaiterSlot {
    _slot: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl WaiterSlot {
    fn new(slot: OwnedSemaphorePermit, gauge: &IntGauge) -> Self {
        gauge.inc();
        Self {
            _slot: slot,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The work of `POST /v1/claims` once the request parsed.
/// A claim without a slot (`slot` is `None`) is one the door answers: it
/// is only looked up, never recorded anew.
async fn accept(
    state: &AppState,
    slot: Option<&AdmissionTicket>,
    door: Option<RejectReason>,
    headers: &HeaderMap,
    claim_id: ClaimId,
    request: ClaimRequest,
    correlation_id: String,
) -> Result<Response, ApiError> {
    // A waiter holds a slot of `TURNSTILE_MAX_WAITERS`; with none free the
    // claim is answered 202 at once, as without `Prefer: wait`.
    let waiter_slot = extract::prefer_wait(headers).and_then(|secs| {
        Arc::clone(&state.waiters).try_acquire_owned().ok().map(|slot| {
            (
                Duration::from_secs(secs),
                WaiterSlot::new(slot, &state.metrics.decision_waiters),
            )
        })
    });
    let wait = waiter_slot.as_ref().map(|(wait, _)| *wait);

    let event = ClaimRequested {
        claim_id,
        resource: request.resource.clone(),
        user_id: request.user.clone(),
        quantity: request.quantity,
        accepted_at_ms: UnixMillis::now(),
    };
    // Before publishing, so the decision cannot arrive unobserved.
    let waiting = wait.map(|_| state.decisions.register(claim_id));

    let job = AcceptJob {
        fingerprint: request.fingerprint(),
        door,
        door_only: slot.is_none(),
        event,
        correlation_id,
    };
    let Some(slot) = slot else {
        let admitted = state.accept.try_admit(job).await?;
        return answer(state, claim_id, admitted, wait, waiting).await;
    };
    let admitted = state.accept.clone().admit(job).await;
    // Recorded or refused: the slot is free for the next claim (waiting
    // for the decision needs none).
    slot.complete(matches!(
        admitted,
        Err(ApiError::Unavailable { .. } | ApiError::OutcomeUnknown { .. } | ApiError::Internal)
    ));
    answer(state, claim_id, admitted?, wait, waiting).await
}

/// The answer to an admitted claim: the door's, the claim as stored, or
/// (with `Prefer: wait`) its decision when it comes in time.
async fn answer(
    state: &AppState,
    claim_id: ClaimId,
    admitted: Admitted,
    wait: Option<Duration>,
    waiting: Option<crate::feeds::Waiting>,
) -> Result<Response, ApiError> {
    if let Admitted::AtTheDoor(reason) = admitted {
        state.door.answered(reason);
        return Ok(ClaimView::decided(claim_id, ClaimStatus::Rejected, Some(reason), None).respond_unrecorded());
    }
    if let Admitted::Replayed(Some(row)) = &admitted {
        // A replay reports the claim as it stands now.
        if row.status != ClaimStatus::Pending || wait.is_none() {
            return Ok(ClaimView::decided(row.claim_id, row.status, row.reason, row.fence).respond());
        }
    }

    let (Some(wait), Some(waiting)) = (wait, waiting) else {
        return Ok(ClaimView::pending(claim_id).respond());
    };
    let mut waiting = waiting;
    match tokio::time::timeout(wait, &mut waiting.decided).await {
        Ok(Ok(decided)) => Ok(ClaimView::from(&decided).respond()),
        // Not in time, or the feed missed it: the database has the answer.
        _ => match state.reads.claim(claim_id).await {
            Ok(Some(row)) => Ok(ClaimView::decided(row.claim_id, row.status, row.reason, row.fence).respond()),
            _ => Ok(ClaimView::pending(claim_id).respond()),
        },
    }
}

/// Reads a claim of the caller's tenant; another tenant's claim is not
/// found, exactly as one that does not exist.
#[utoipa::path(get, path = "/v1/claims/{claim_id}", tag = "claims",
    params(("claim_id" = Uuid, Path, description = "The claim id")),
    responses((status = 200, description = "The claim as it stands", body = ClaimView), ReadErrors),
    security(("api_key" = [])))]
pub async fn get_claim(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(raw): PathParam,
) -> Result<Json<ClaimView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("claim {raw} does not exist"));
    require(&principal, Operation::Read)?;
    let tenant = principal.tenant;
    let id = Uuid::parse_str(&raw).map_err(|_| not_found())?;
    state.postgres.permit()?;
    let row = state.reads.claim(ClaimId::from_uuid(id)).await;
    state
        .postgres
        .record(row.as_ref().map_or_else(|e| !e.is_transient(), |_| true));
    match row {
        Ok(Some(row)) if row.tenant_id == tenant.as_str() => Ok(Json(ClaimView::decided(
            row.claim_id,
            row.status,
            row.reason,
            row.fence,
        ))),
        Ok(_) => Err(not_found()),
        Err(e) if e.is_transient() => Err(state.postgres.unavailable()),
        Err(e) => {
            tracing::error!(error = %e, cause = ?e, "reading a claim failed");
            Err(ApiError::Internal)
        }
    }
}
