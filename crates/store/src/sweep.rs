//! The sweeper's queries: claims left pending past a window.
//!
//! Kafka is the fast path and the claims table the record. A claim whose
//! event was never published (the API stopped or Kafka failed after the
//! claim committed) or never consumed is still pending here, and the
//! sweeper decides it, under the same lock and fence as the worker's path.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::StoreError;
use turnstile_claim::{ClaimId, ClaimRequested, Quantity, RejectReason, UnixMillis, UserId};

/// A claim left pending, as the sweeper found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StalePending {
    /// A valid claim, as the event that would carry it.
    Claim(ClaimRequested),
    /// A row that is no valid claim (written or altered outside the API):
    /// it is rejected as invalid rather than left pending.
    Invalid(ClaimId),
}

/// At most `limit` claims still pending `older_than` after acceptance,
/// oldest first.
pub async fn stale_pending(pool: &PgPool, older_than: Duration, limit: i64) -> Result<Vec<StalePending>, StoreError> {
    let rows = sqlx::query!(
        "SELECT claim_id, tenant_id, kind, resource_id, user_id, quantity,
                (extract(epoch FROM accepted_at) * 1000)::int8 AS \"accepted_at_ms!\"
           FROM claims
          WHERE status = 'pending' AND accepted_at < now() - make_interval(secs => $1)
          ORDER BY accepted_at
          LIMIT $2",
        older_than.as_secs_f64(),
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let claim_id = ClaimId::from_uuid(r.claim_id);
            let parsed = (|| {
                Some(ClaimRequested {
                    claim_id,
                    resource: crate::stored_resource_key(&r.tenant_id, &r.kind, &r.resource_id)?,
                    user_id: UserId::parse(&r.user_id).ok()?,
                    quantity: Quantity::parse(i64::from(r.quantity)).ok()?,
                    accepted_at_ms: UnixMillis::parse(r.accepted_at_ms).ok()?,
                })
            })();
            parsed.map_or(StalePending::Invalid(claim_id), StalePending::Claim)
        })
        .collect())
}

/// Rejects pending claims whose rows are no valid claims, with the reason
/// `invalid_claim`, and owes their announcements on `topic` (the
/// [`crate::outbox`]).
/// No stock changes, so no fence is needed; but the write holds the row
/// locks of the resources the rows name, as every decision does, so it
/// cannot interleave with a fenced decision of the same claims. A claim
/// decided meanwhile is left as it is.
pub async fn reject_invalid(pool: &PgPool, claims: &[ClaimId], topic: &str) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = claims.iter().map(ClaimId::as_uuid).collect();
    let mut tx = pool.begin().await?;
    // In key order, as in every multi-resource lock, so two such writers
    // cannot deadlock.
    sqlx::query!(
        "SELECT r.fence FROM resources r JOIN claims c
             ON r.tenant_id = c.tenant_id AND r.kind = c.kind AND r.id = c.resource_id
          WHERE c.claim_id = ANY($1)
          ORDER BY r.tenant_id, r.kind, r.id
            FOR UPDATE OF r",
        &ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    let rejected = sqlx::query_scalar!(
        r#"WITH rejected AS (
             UPDATE claims SET status = 'rejected', reason = $2, decided_at = clock_timestamp()
              WHERE claim_id = ANY($1) AND status = 'pending'
             RETURNING claim_id
           ), owed AS (
             INSERT INTO decision_outbox (claim_id, topic) SELECT claim_id, $3 FROM rejected
             ON CONFLICT (claim_id) DO NOTHING
           )
           SELECT count(*) AS "rejected!" FROM rejected"#,
        &ids,
        RejectReason::InvalidClaim.as_str(),
        topic,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(u64::try_from(rejected).unwrap_or(0))
}
