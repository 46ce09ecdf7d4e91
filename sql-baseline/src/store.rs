//! The baseline's one write: a claim decided inside its request, in one
//! Postgres transaction serialised by the resource's row lock.
//!
//! Statement order matters for how long the hot lock is held. The pending
//! claim row, which is also the idempotency record, is written first (by
//! `turnstile-claim`'s own [`store::reserve_claim`], so replays and key
//! reuse behave exactly as in `claim-api`), *before* the row lock: they touch
//! only this request's rows. Then, under `FOR UPDATE`, three statements and
//! the commit: read the stock, count the user's grants, write the decision
//! and the new stock in one statement. Every lock waiter pays for those round
//! trips and the commit's WAL flush of every transaction ahead of it.

use std::collections::HashMap;

use sqlx::PgPool;
use turnstile_claim::{
    ClaimId, ClaimRequested, ClaimStatus, Decision, PendingClaim, RejectReason, ResourceState, decide_batch,
};
use turnstile_http::problem::ApiError;
use turnstile_store::{self as store, Reservation, StoreError};

/// A claim as it was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecidedClaim {
    /// The claim.
    pub claim_id: ClaimId,
    /// Granted or rejected.
    pub status: ClaimStatus,
    /// Why, when rejected.
    pub reason: Option<RejectReason>,
    /// The resource's decision counter after this decision (see the crate
    /// docs: the row lock's stand-in for a fencing token).
    pub fence: i64,
}

/// The result of [`claim_for_update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Decided and committed now.
    Decided(DecidedClaim),
    /// The key was used before with the same request: answer as stored.
    Replay(ClaimId),
    /// The key was used before with a different request; nothing written.
    KeyReused,
    /// No such coupon or SKU; nothing written.
    UnknownResource,
}

/// Records, decides and commits `event` in one transaction.
pub async fn claim_for_update(
    pool: &PgPool,
    fingerprint: &[u8; 32],
    event: &ClaimRequested,
) -> Result<ClaimOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    match store::reserve_claim(&mut tx, fingerprint, event).await? {
        Reservation::New => {}
        Reservation::Replay(claim_id) => return Ok(ClaimOutcome::Replay(claim_id)),
        Reservation::KeyReused => return Ok(ClaimOutcome::KeyReused),
        Reservation::UnknownResource => return Ok(ClaimOutcome::UnknownResource),
    };
    let tenant = event.resource.tenant.as_str();
    let kind = event.resource.kind.as_str();
    let id = event.resource.id.as_str();

    // The hot lock: every claim on this resource queues here until the
    // transaction ahead of it commits.
    let Some(resource) = sqlx::query!(
        "SELECT remaining, per_user_limit FROM resources WHERE tenant_id = $3 AND kind = $1 AND id = $2 FOR UPDATE",
        kind,
        id,
        tenant,
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        // reserve_claim saw it; resources are never deleted. Roll back.
        return Ok(ClaimOutcome::UnknownResource);
    };
    // A statement of its own, after the lock: its snapshot then includes
    // every grant committed while this request waited for the row.
    let held = match resource.per_user_limit {
        Some(_) => {
            sqlx::query_scalar!(
                "SELECT count(*) AS \"grants!\" FROM claims
              WHERE tenant_id = $4 AND kind = $1 AND resource_id = $2 AND user_id = $3 AND status = 'granted'",
                kind,
                id,
                event.user_id.as_str(),
                tenant,
            )
            .fetch_one(&mut *tx)
            .await?
        }
        None => 0,
    };
    let (decision, remaining) = decide_one(resource.remaining, resource.per_user_limit, held, event);
    let (status, reason) = decision.outcome();

    // Decision and stock in one round trip. The claim is updated only while
    // pending, and the resource only if the claim was: a claim row decided
    // before (same key, an earlier attempt) leaves the stock alone.
    let fence = sqlx::query_scalar!(
        "WITH decided AS (
           UPDATE claims
              SET status = $4, reason = $5, decided_at = clock_timestamp(),
                  fence = (SELECT fence + 1 FROM resources WHERE tenant_id = $7 AND kind = $1 AND id = $2)
            WHERE claim_id = $3 AND status = 'pending'
           RETURNING fence)
         UPDATE resources r SET remaining = $6, fence = decided.fence, decided_at = now()
           FROM decided WHERE r.tenant_id = $7 AND r.kind = $1 AND r.id = $2
         RETURNING r.fence",
        kind,
        id,
        event.claim_id.as_uuid(),
        status.as_str(),
        reason.map(RejectReason::as_str),
        remaining,
        tenant,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(fence) = fence else {
        return Ok(ClaimOutcome::Replay(event.claim_id));
    };
    tx.commit().await?;
    Ok(ClaimOutcome::Decided(DecidedClaim {
        claim_id: event.claim_id,
        status,
        reason,
        fence,
    }))
}

/// [`claim_for_update`], with its commit resolved: when a failure may hide
/// a commit (the connection died while the transaction committed), the
/// same claim is tried again, with back-off, until `deadline` passes. The
/// claim is idempotent: a committed first attempt comes back as a replay,
/// and one that did not commit is decided now. `Err` carries the last
/// failure, and whether it may have committed (the outcome is unknown).
pub async fn claim_resolved(
    pool: &PgPool,
    fingerprint: &[u8; 32],
    event: &ClaimRequested,
    deadline: std::time::Duration,
) -> Result<ClaimOutcome, (StoreError, bool)> {
    let give_up = std::time::Instant::now() + deadline;
    let mut wait = std::time::Duration::from_millis(20);
    let mut ambiguous = false;
    loop {
        let attempt = async {
            let outcome = claim_for_update(pool, fingerprint, event).await?;
            // Fault injection for the tests: the commit happened, its answer is lost.
            fail::fail_point!("claim-answer-lost", |_| Err(StoreError::Unavailable(sqlx::Error::Io(
                std::io::ErrorKind::ConnectionReset.into()
            ))));
            Ok::<_, StoreError>(outcome)
        };
        let error = match attempt.await {
            Ok(outcome) => return Ok(outcome),
            Err(e) => e,
        };
        ambiguous |= error.may_have_committed();
        if !ambiguous || std::time::Instant::now() + wait >= give_up {
            return Err((error, ambiguous));
        }
        tracing::debug!(error = %error, wait_ms = wait.as_millis() as u64, "trying a claim again to resolve its commit");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(1));
    }
}

/// Decides one claim against the locked row with the pipeline's own rule
/// ([`decide_batch`], a batch of one); returns the decision and the stock
/// left afterwards.
fn decide_one(remaining: i64, per_user_limit: Option<i32>, held: i64, event: &ClaimRequested) -> (Decision, i64) {
    let claim = PendingClaim {
        claim_id: event.claim_id,
        user_id: event.user_id.as_str().to_owned(),
        quantity: event.quantity.get(),
    };
    let granted_before = HashMap::from([(claim.user_id.clone(), u32::try_from(held).unwrap_or(u32::MAX))]);
    let state = ResourceState {
        remaining,
        per_user_limit: per_user_limit.and_then(|l| u32::try_from(l).ok()),
    };
    let outcome = decide_batch(state, &granted_before, std::slice::from_ref(&claim));
    let decision = outcome
        .decisions
        .first()
        .copied()
        // decide_batch answers once per claim; a batch of one has one answer.
        .unwrap_or(Decision::Rejected(event.claim_id, RejectReason::SoldOut));
    (decision, outcome.remaining)
}

/// A store failure as the client should see it: one that may have
/// committed is `504 outcome-unknown`; transient ones (pool exhausted,
/// deadlock, a timeout) are retryable 503s, which promise nothing was
/// recorded; anything else is a bug, logged here.
pub fn problem(e: &StoreError, may_have_committed: bool, doing: &'static str) -> ApiError {
    if may_have_committed {
        tracing::warn!(error = %e, cause = ?e, doing, "the outcome of a commit is unknown");
        ApiError::OutcomeUnknown { retry_after: 1 }
    } else if e.is_transient() {
        tracing::debug!(error = %e, cause = ?e, doing, "postgres unavailable");
        ApiError::Unavailable {
            dependency: "postgres",
            retry_after: 1,
        }
    } else {
        tracing::error!(error = %e, cause = ?e, doing, "postgres statement failed");
        ApiError::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnstile_claim::{Quantity, ResourceId, ResourceKey, TenantId, UnixMillis, UserId};
    use uuid::Uuid;

    fn event(quantity: u32) -> ClaimRequested {
        ClaimRequested {
            claim_id: ClaimId::from_uuid(Uuid::from_u128(7)),
            resource: ResourceKey::coupon(TenantId::default_tenant(), ResourceId::parse("coupon", "C").unwrap()),
            user_id: UserId::parse("u").unwrap(),
            quantity: Quantity::parse(i64::from(quantity)).unwrap(),
            accepted_at_ms: UnixMillis::parse(1_795_000_000_000).unwrap(),
        }
    }

    #[test]
    fn grants_while_stock_lasts_then_sold_out() {
        assert!(matches!(
            decide_one(1, Some(1), 0, &event(1)),
            (Decision::Granted(_), 0)
        ));
        assert!(matches!(
            decide_one(0, Some(1), 0, &event(1)),
            (Decision::Rejected(_, RejectReason::SoldOut), 0)
        ));
    }

    #[test]
    fn per_user_limit_counts_earlier_grants() {
        assert!(matches!(
            decide_one(5, Some(1), 1, &event(1)),
            (Decision::Rejected(_, RejectReason::PerUserLimit), 5)
        ));
        assert!(matches!(
            decide_one(5, Some(2), 1, &event(1)),
            (Decision::Granted(_), 4)
        ));
        assert!(matches!(decide_one(5, None, 9, &event(1)), (Decision::Granted(_), 4)));
    }

    #[test]
    fn insufficient_stock_for_a_large_sku_claim() {
        assert!(matches!(
            decide_one(2, None, 0, &event(3)),
            (Decision::Rejected(_, RejectReason::InsufficientStock), 2)
        ));
    }
}
