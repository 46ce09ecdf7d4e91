//! The decision outbox: decisions committed whose `ClaimDecided` Kafka has
//! not acknowledged yet.
//!
//! A decision's record is its claim row; its announcement follows from the
//! database. Decisions made without a partition offset to hold them back
//! (the sweeper's, the invalid-claim rejections) owe their announcement in
//! the same transaction as the decision ([`crate::decide_fenced_owing`],
//! [`crate::reject_invalid`]). The consume path announces at once and owes
//! only what Kafka did not take ([`owe`]), before its offset is stored.
//! Every worker relays what is due ([`take_due`]), deletes what Kafka
//! acknowledged ([`settle`]) and pushes the rest back with backoff and
//! jitter ([`retry_later`]). Nothing here waits on Kafka.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::StoreError;
use turnstile_claim::{ClaimDecided, ClaimId, ClaimStatus};

/// Owes the announcement of `claims` (decided, not taken by Kafka) on
/// `topic`. A claim already owed stays as it is.
pub async fn owe(pool: &PgPool, topic: &str, claims: &[ClaimId]) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = claims.iter().map(ClaimId::as_uuid).collect();
    sqlx::query!(
        "INSERT INTO decision_outbox (claim_id, topic)
         SELECT claim_id, $2 FROM claims WHERE claim_id = ANY($1) AND status <> 'pending'
         ON CONFLICT (claim_id) DO NOTHING",
        &ids,
        topic,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// One owed announcement, taken by a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwedAnnouncement {
    /// The decision, as stored, to send.
    Decided(ClaimDecided),
    /// A row whose resource is no valid key (written outside the API): it
    /// has no partition to go to, and no client waits for it.
    Unannounceable(ClaimId),
}

impl OwedAnnouncement {
    /// The claim it is about.
    pub fn claim_id(&self) -> ClaimId {
        match self {
            Self::Decided(decided) => decided.claim_id,
            Self::Unannounceable(claim_id) => *claim_id,
        }
    }
}

/// Takes at most `limit` announcements owed on `topic` that are due, oldest
/// due first, and
/// holds them for `hold` (longer than a send may take), so that another
/// relay takes them only if this one dies. Rows locked by another relay
/// are skipped.
pub async fn take_due(
    pool: &PgPool,
    topic: &str,
    limit: i64,
    hold: Duration,
) -> Result<Vec<OwedAnnouncement>, StoreError> {
    let rows = sqlx::query!(
        r#"WITH due AS (
             SELECT claim_id FROM decision_outbox
              WHERE topic = $3 AND next_attempt_at <= now()
              ORDER BY next_attempt_at
              LIMIT $1
              FOR UPDATE SKIP LOCKED
           ), held AS (
             UPDATE decision_outbox o
                SET attempts = o.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
               FROM due WHERE o.claim_id = due.claim_id
             RETURNING o.claim_id
           )
           SELECT c.claim_id, c.tenant_id, c.kind, c.resource_id, c.status, c.reason,
                  coalesce(c.fence, 0) AS "fence!",
                  coalesce((extract(epoch FROM c.decided_at) * 1000)::int8, 0) AS "decided_at_ms!"
             FROM claims c JOIN held USING (claim_id)
            ORDER BY c.decided_at"#,
        limit,
        hold.as_secs_f64(),
        topic,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let claim_id = ClaimId::from_uuid(r.claim_id);
            let decided = (|| {
                let status: ClaimStatus = r.status.parse().ok()?;
                if status == ClaimStatus::Pending {
                    return None;
                }
                Some(ClaimDecided {
                    claim_id,
                    resource: crate::stored_resource_key(&r.tenant_id, &r.kind, &r.resource_id)?,
                    status,
                    reason: r.reason.as_deref().and_then(|s| s.parse().ok()),
                    fence: u64::try_from(r.fence).unwrap_or(0),
                    decided_at_ms: r.decided_at_ms,
                    door: None,
                })
            })();
            decided.map_or(OwedAnnouncement::Unannounceable(claim_id), OwedAnnouncement::Decided)
        })
        .collect())
}

/// Kafka took these announcements: they are owed no more.
pub async fn settle(pool: &PgPool, claims: &[ClaimId]) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = claims.iter().map(ClaimId::as_uuid).collect();
    sqlx::query!("DELETE FROM decision_outbox WHERE claim_id = ANY($1)", &ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// Kafka did not take these announcements: try again after a delay that
/// doubles with each attempt from `base` up to `max`, times a random factor
/// between 0.5 and 1.5, so relays that failed together do not come back
/// together.
pub async fn retry_later(pool: &PgPool, claims: &[ClaimId], base: Duration, max: Duration) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = claims.iter().map(ClaimId::as_uuid).collect();
    sqlx::query!(
        "UPDATE decision_outbox
            SET next_attempt_at = now() + make_interval(
                  secs => least($2 * power(2, least(attempts - 1, 16)), $3) * (0.5 + random()))
          WHERE claim_id = ANY($1)",
        &ids,
        base.as_secs_f64(),
        max.as_secs_f64(),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// How many announcements are owed, and how long the oldest has been.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Announcements owed.
    pub owed: i64,
    /// Age of the oldest, in seconds (0 when none is owed).
    pub oldest_seconds: f64,
}

/// The outbox's size and age on `topic`, in one statement.
pub async fn backlog(pool: &PgPool, topic: &str) -> Result<Backlog, StoreError> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "owed!",
                  coalesce(extract(epoch FROM now() - min(owed_since)), 0)::float8 AS "oldest_seconds!"
             FROM decision_outbox WHERE topic = $1"#,
        topic,
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        owed: row.owed,
        oldest_seconds: row.oldest_seconds,
    })
}
