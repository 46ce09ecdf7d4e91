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

pub use accept::{Admission, Reservation, Reserved, pending_claims, reserve_claim, reserve_claims};
pub use audit::check_invariants;
pub use decide::{
    BatchDecided, EarlierDecision, FencedOutcome, Orphan, OrphanReason, decide_fenced, decide_fenced_owing,
};
pub use sweep::{StalePending, reject_invalid, stale_pending};

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
    /// Concurrent requests kept inserting the same keys; nothing was
    /// written for them. Retry later.
    #[error("claims contended by concurrent batches")]
    Contended,
    /// A statement failed after an earlier statement of the same call had
    /// committed rows. Retry: the committed rows are found again.
    #[error("a statement failed after rows were committed")]
    PartlyCommitted(#[source] Box<StoreError>),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Contended | Self::PartlyCommitted(_))
    }

    /// Whether the failed statement may have committed anyway: the
    /// connection failed while it ran (Postgres restarting, a network
    /// fault), so its answer was lost. A database error answered for the
    /// statement means it was rolled back; a pool that gave no connection
    /// sent nothing.
    pub fn may_have_committed(&self) -> bool {
        match self {
            Self::Unavailable(e) | Self::Query(e) => !matches!(
                e,
                sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
            Self::PartlyCommitted(_) => true,
            Self::Migrate(_) | Self::Contended => false,
        }
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
            sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
            _ => false,
        };
        if transient {
            Self::Unavailable(e)
        } else {
            Self::Query(e)
        }
    }
}

/// Whether a statement that failed with SQLSTATE `code` may succeed when
/// retried later: the failure is the server's state, not the statement's.
fn is_transient_sqlstate(code: &str) -> bool {
    // 08: connection exceptions. 53: insufficient resources (disk full,
    // out of memory, too many connections). 57P: shutdown, crash recovery.
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        // Serialization failure, deadlock; lock_timeout (55P03) and
        // statement_timeout or a cancel (57014); a read-only transaction
        // (25006: a primary demoted, or a standby not yet promoted).
        || matches!(code, "40001" | "40P01" | "55P03" | "57014" | "25006")
}

/// How long one statement, and one wait for a lock, may take on a pool's
/// connections (Postgres' `statement_timeout` and `lock_timeout`, set for
/// every session when it starts). Past them the statement fails with
/// `57014` or `55P03`, both transient: a frozen or overloaded database
/// costs a caller a bounded wait, never a connection held forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementTimeouts {
    /// Postgres' `statement_timeout`.
    pub statement: Duration,
    /// Postgres' `lock_timeout`.
    pub lock: Duration,
}

impl Default for StatementTimeouts {
    /// A backstop for any pool: above the slowest statement the services
    /// run (the worker's full oversold recount, about 1.5 s on 3.5 million
    /// claims), far below "forever".
    fn default() -> Self {
        Self {
            statement: Duration::from_secs(30),
            lock: Duration::from_secs(10),
        }
    }
}

/// Opens a bounded pool with [`StatementTimeouts::default`]. `acquire_timeout`
/// is the bulkhead's teeth: when every connection is busy, callers fail fast
/// instead of queueing forever.
pub async fn connect(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<PgPool, StoreError> {
    connect_with(url, max_connections, acquire_timeout, StatementTimeouts::default()).await
}

/// [`connect`], with `timeouts` on every connection.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
    timeouts: StatementTimeouts,
) -> Result<PgPool, StoreError> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    // Whole milliseconds; 0 would turn a timeout off, so at least 1.
    let ms = |d: Duration| d.as_millis().max(1);
    let options = options.options([
        ("statement_timeout", ms(timeouts.statement)),
        ("lock_timeout", ms(timeouts.lock)),
    ]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await?)
}

/// The resource a claim row names, when its columns parse as one: a row
/// written outside the API may hold anything.
fn stored_resource_key(tenant_id: &str, kind: &str, resource_id: &str) -> Option<ResourceKey> {
    Some(ResourceKey {
        tenant: turnstile_claim::TenantId::parse(tenant_id).ok()?,
        kind: kind.parse().ok()?,
        id: turnstile_claim::ResourceId::parse("resource", resource_id).ok()?,
    })
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

/// The distinct ids of a batch, for a statement that looks each one up
/// (`unnest` with a `LATERAL` probe returns a row per element, so a
/// repeated id would come back twice).
fn lookup_keys(claim_ids: impl Iterator<Item = ClaimId>) -> Vec<uuid::Uuid> {
    let mut ids: Vec<uuid::Uuid> = claim_ids.map(|id| id.as_uuid()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Reads the claims among `claim_ids` that exist, in one statement.
///
/// One primary-key probe per id, whatever the table's size. With
/// `claim_id = ANY($1)` Postgres may scan the table and compare every row
/// with every id, and it keeps doing so: the plan it caches for a prepared
/// statement while the table is small (a new database, the first sale)
/// stays in use as the table grows. Measured on a 3 272-row table with 50
/// ids: 0.83 ms as a scan, 0.17 ms as these lookups. The door reads a
/// batch of keys this way for every claim it answers. The `LIMIT` keeps
/// the planner from flattening the lookup into a join it could hash.
pub async fn claims(pool: &PgPool, claim_ids: &[ClaimId]) -> Result<Vec<ClaimRow>, StoreError> {
    let ids = lookup_keys(claim_ids.iter().copied());
    let rows = sqlx::query!(
        r#"SELECT c.claim_id AS "claim_id!", c.tenant_id AS "tenant_id!", c.status AS "status!", c.reason, c.fence
             FROM unnest($1::uuid[]) AS wanted(id)
             CROSS JOIN LATERAL (
               SELECT claim_id, tenant_id, status, reason, fence FROM claims WHERE claim_id = wanted.id LIMIT 1
             ) c"#,
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

#[cfg(test)]
mod tests {
    use super::is_transient_sqlstate;

    #[test]
    fn the_servers_state_is_transient_and_the_statements_fault_is_not() {
        for code in [
            "08006", "53100", "53200", "53300", "57P01", "57P03", "57014", "25006", "55P03", "40001",
        ] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "22P02", "42P01", "25P02"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }
}
