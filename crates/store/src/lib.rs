//! Where claims are kept: the Postgres store, the Redis cache in front of
//! it, and the migrations. [`turnstile_claim`] decides; this crate records.
//!
//! Every statement is checked at compile time against the schema in
//! `migrations/` (offline data in the workspace's `.sqlx`). The claims table
//! is the record of what was accepted and how it was decided; Kafka only
//! carries the news. One file per job:
//! - [`accept`] (claim-api): the pending claims of a batch of requests, in
//!   one autocommit statement. A claim row is also its idempotency record:
//!   its id is derived from tenant and key, and it keeps the request's
//!   fingerprint. The API publishes a claim's event only after its row
//!   committed, so every event names a row that exists.
//! - [`decide`] (claim-worker): the batch decision, in one transaction that
//!   first moves the resource's fence to the lease's token and is refused,
//!   by the database itself, when the token is not newer. It decides only
//!   claims whose rows exist and belong to the batch's resource.
//! - [`sweep`] (claim-worker): claims left pending past a window, the
//!   safety net for an event that was never published or never consumed.
//! - [`outbox`] (claim-worker): decisions whose `ClaimDecided` Kafka has not
//!   taken yet, so that announcing follows from the database and never
//!   holds up a decision.
//! - [`audit`]: the invariants recounted from the claims themselves, for the
//!   worker's audit, the tests and the load generator alike.
//! - [`keys`] (claim-api, sql-baseline): API keys, stored as digests.
//! - [`cache`]: the Redis read cache of resources, written only by newer
//!   fences.

mod accept;
mod audit;
pub mod cache;
mod decide;
pub mod keys;
pub mod outbox;
mod sweep;

pub use accept::{Admission, Reservation, Reserved, reserve_claim, reserve_claims};
pub use audit::check_invariants;
pub use decide::{
    BatchDecided, EarlierDecision, FencedOutcome, Orphan, OrphanReason, decide_fenced, decide_fenced_owing,
};
pub use sweep::{StalePending, SweepTurn, reject_invalid, stale_pending};

use std::time::Duration;

use sqlx::{PgPool, postgres::PgPoolOptions};

use turnstile_claim::{ClaimId, ClaimStatus, RejectReason, ResourceKey};

/// Migrations, embedded in the binaries and run at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What went wrong talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres could not be reached or is overloaded; retry later.
    #[error("postgres is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A statement failed for another reason (a bug or a constraint).
    #[error("postgres statement failed")]
    Query(#[source] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let transient = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // Connection exceptions, serialization failures and
                // deadlocks, shutdown, too many connections.
                code.starts_with("08")
                    || code.starts_with("57P")
                    || matches!(code.as_ref(), "40001" | "40P01" | "53300" | "55P03")
            }),
            _ => false,
        };
        if transient {
            Self::Unavailable(e)
        } else {
            Self::Query(e)
        }
    }
}

/// Opens a bounded pool. `acquire_timeout` is the bulkhead's teeth: when
/// every connection is busy, callers fail fast instead of queueing forever.
pub async fn connect(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect(url)
        .await?)
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// A coupon or SKU as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRow {
    /// Units it started with.
    pub total: i64,
    /// Units left.
    pub remaining: i64,
    /// Grants allowed per user.
    pub per_user_limit: Option<i32>,
    /// The newest fencing token accepted.
    pub fence: i64,
}

/// Creates a coupon or SKU. Returns `false` if it already exists.
pub async fn create_resource(
    pool: &PgPool,
    key: &ResourceKey,
    total: i64,
    per_user_limit: Option<i32>,
) -> Result<bool, StoreError> {
    let created = sqlx::query_scalar!(
        "INSERT INTO resources (tenant_id, kind, id, total, remaining, per_user_limit)
         VALUES ($5, $1, $2, $3, $3, $4)
         ON CONFLICT (tenant_id, kind, id) DO NOTHING
         RETURNING true AS \"created!\"",
        key.kind.as_str(),
        key.id.as_str(),
        total,
        per_user_limit,
        key.tenant.as_str(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(created.is_some())
}

/// Reads a coupon or SKU.
pub async fn resource(pool: &PgPool, key: &ResourceKey) -> Result<Option<ResourceRow>, StoreError> {
    Ok(sqlx::query_as!(
        ResourceRow,
        "SELECT total, remaining, per_user_limit, fence FROM resources WHERE tenant_id = $1 AND kind = $2 AND id = $3",
        key.tenant.as_str(),
        key.kind.as_str(),
        key.id.as_str(),
    )
    .fetch_optional(pool)
    .await?)
}

/// A claim as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRow {
    /// The claim.
    pub claim_id: ClaimId,
    /// Its tenant.
    pub tenant_id: String,
    /// Pending, granted or rejected.
    pub status: ClaimStatus,
    /// Why, when rejected.
    pub reason: Option<RejectReason>,
    /// The fencing token of the decision.
    pub fence: Option<i64>,
}

/// Reads a claim.
pub async fn claim(pool: &PgPool, claim_id: ClaimId) -> Result<Option<ClaimRow>, StoreError> {
    let row = sqlx::query!(
        "SELECT tenant_id, status, reason, fence FROM claims WHERE claim_id = $1",
        claim_id.as_uuid(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| ClaimRow {
        claim_id,
        tenant_id: r.tenant_id,
        // The CHECK constraints admit only the names these parse.
        status: r.status.parse().unwrap_or(ClaimStatus::Pending),
        reason: r.reason.and_then(|s| s.parse().ok()),
        fence: r.fence,
    }))
}

/// Reads the claims among `claim_ids` that exist, in one statement.
pub async fn claims(pool: &PgPool, claim_ids: &[ClaimId]) -> Result<Vec<ClaimRow>, StoreError> {
    let ids: Vec<uuid::Uuid> = claim_ids.iter().map(|id| id.as_uuid()).collect();
    let rows = sqlx::query!(
        "SELECT claim_id, tenant_id, status, reason, fence FROM claims WHERE claim_id = ANY($1)",
        &ids,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ClaimRow {
            claim_id: ClaimId::from_uuid(r.claim_id),
            tenant_id: r.tenant_id,
            // The CHECK constraints admit only the names these parse.
            status: r.status.parse().unwrap_or(ClaimStatus::Pending),
            reason: r.reason.and_then(|s| s.parse().ok()),
            fence: r.fence,
        })
        .collect())
}
