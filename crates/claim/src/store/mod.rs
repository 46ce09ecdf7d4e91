//! The Postgres adapter: every statement the claim services run, checked at
//! compile time against the schema in `migrations/` (offline data in `.sqlx`).
//!
//! Two writes matter:
//! - [`reserve_claims`] (claim-api; [`reserve_claim`] is the one-claim form
//!   sql-baseline uses): the pending claims, in a transaction the caller
//!   commits only after Kafka acknowledged the events. A claim row is also
//!   its idempotency record: its id is derived from tenant and key, and it
//!   keeps the request's fingerprint. A concurrent request with the same key
//!   blocks on the primary key until that commit, then replays its result:
//!   one claim, however many copies of the request arrive at once.
//! - [`decide_fenced`] (claim-worker): the batch decision, in one transaction
//!   that first moves the resource's fence to the lease's token and is
//!   refused, by the database itself, when the token is not newer.

use std::{collections::HashMap, time::Duration};

use sqlx::{PgPool, Postgres, Transaction, postgres::PgPoolOptions};
use time::OffsetDateTime;
use turnstile_lock::FencingToken;
use uuid::Uuid;

use crate::{
    ClaimId, ClaimRequested, ClaimStatus, Decision, PendingClaim, RejectReason, ResourceKey, ResourceState,
    audit::{AuditScope, ResourceRecount},
    decide_batch,
};

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
        "INSERT INTO resources (kind, id, total, remaining, per_user_limit)
         VALUES ($1, $2, $3, $3, $4)
         ON CONFLICT (kind, id) DO NOTHING
         RETURNING true AS \"created!\"",
        key.kind.as_str(),
        key.id.as_str(),
        total,
        per_user_limit,
    )
    .fetch_optional(pool)
    .await?;
    Ok(created.is_some())
}

/// Reads a coupon or SKU.
pub async fn resource(pool: &PgPool, key: &ResourceKey) -> Result<Option<ResourceRow>, StoreError> {
    Ok(sqlx::query_as!(
        ResourceRow,
        "SELECT total, remaining, per_user_limit, fence FROM resources WHERE kind = $1 AND id = $2",
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

/// The result of [`reserve_claim`].
#[derive(Debug)]
pub enum Reservation {
    /// A new claim: publish it, then commit the transaction. Dropping the
    /// transaction instead rolls the reservation back.
    New(Transaction<'static, Postgres>),
    /// The key was used before with the same request: answer as before.
    Replay(ClaimId),
    /// The key was used before with a different request.
    KeyReused,
    /// No such coupon or SKU.
    UnknownResource,
}

/// Records the pending claim for `event`, its idempotency key included: the
/// claim's id is derived from the tenant and the key, so the claims primary
/// key is the idempotency record. [`reserve_claims`] with a batch of one.
pub async fn reserve_claim(
    pool: &PgPool,
    fingerprint: &[u8; 32],
    event: &ClaimRequested,
) -> Result<Reservation, StoreError> {
    let (tx, reserved) = reserve_claims(pool, &[Admission { fingerprint, event }]).await?;
    Ok(match reserved.first() {
        Some(Reserved::New) => Reservation::New(tx),
        Some(Reserved::Replay(claim_id)) => Reservation::Replay(*claim_id),
        Some(Reserved::KeyReused) => Reservation::KeyReused,
        Some(Reserved::UnknownResource) | None => Reservation::UnknownResource,
    })
}

/// Whether a stored fingerprint is the request's. A claim without one was
/// written from its event alone, or before fingerprints moved into claims:
/// its key replays it.
fn same_request(stored: Option<&[u8]>, fingerprint: &[u8; 32]) -> bool {
    stored.is_none_or(|stored| stored == &fingerprint[..])
}

/// One claim to admit in [`reserve_claims`].
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// The request's meaning, to tell a retry from a reused key.
    pub fingerprint: &'a [u8; 32],
    /// The event to publish if the claim is new. Its claim id is derived
    /// from the tenant and the idempotency key.
    pub event: &'a ClaimRequested,
}

/// What [`reserve_claims`] found for one admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// A new claim, recorded in the batch's transaction: publish, then commit.
    New,
    /// The key was used before (or earlier in this batch) with the same
    /// request: answer as before.
    Replay(ClaimId),
    /// The key was used before (or earlier in this batch) with a different
    /// request.
    KeyReused,
    /// No such coupon or SKU.
    UnknownResource,
}

/// Records the pending claims of a whole batch of admissions in one
/// transaction and one statement (group commit: the batch shares its round
/// trips and its WAL flush). Publish the `New` events, then commit; dropping
/// the transaction rolls the batch back.
///
/// The claim row is the idempotency record: its id is derived from the
/// tenant and the key. Claims are inserted in id order, so concurrent
/// batches cannot deadlock; a claim held by another batch's open
/// transaction makes this one wait for it, and then counts as used before.
pub async fn reserve_claims(
    pool: &PgPool,
    batch: &[Admission<'_>],
) -> Result<(Transaction<'static, Postgres>, Vec<Reserved>), StoreError> {
    let n = batch.len();
    let (mut tenants, mut fingerprints, mut claim_ids, mut kinds, mut resource_ids) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut users, mut quantities, mut accepted) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for a in batch {
        tenants.push(a.event.tenant_id.as_str());
        fingerprints.push(&a.fingerprint[..]);
        claim_ids.push(a.event.claim_id.as_uuid());
        kinds.push(a.event.resource.kind.as_str());
        resource_ids.push(a.event.resource.id.as_str());
        users.push(a.event.user_id.as_str());
        quantities.push(i32::try_from(a.event.quantity).unwrap_or(i32::MAX));
        accepted.push(a.event.accepted_at_ms as f64);
    }
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        r#"WITH input AS (
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::uuid[], $4::text[], $5::text[],
                                  $6::text[], $7::int4[], $8::float8[]) WITH ORDINALITY
                 AS t(tenant_id, fingerprint, claim_id, kind, resource_id, user_id, quantity, accepted_ms, n)
           ), known AS (
             SELECT i.*, coalesce(r.per_user_limit = 1, false) AS one_per_user
               FROM input i JOIN resources r ON r.kind = i.kind AND r.id = i.resource_id
           ), new_claims AS (
             INSERT INTO claims (claim_id, tenant_id, kind, resource_id, user_id, quantity, one_per_user, accepted_at,
                                 fingerprint)
             SELECT DISTINCT ON (claim_id) claim_id, tenant_id, kind, resource_id, user_id, quantity, one_per_user,
                    to_timestamp(accepted_ms / 1000), fingerprint
               FROM known ORDER BY claim_id, n
             ON CONFLICT (claim_id) DO NOTHING
             RETURNING claim_id
           )
           SELECT i.n AS "n!", (k.n IS NOT NULL) AS "known!", (nc.claim_id IS NOT NULL) AS "new!"
             FROM input i
             LEFT JOIN known k ON k.n = i.n
             LEFT JOIN new_claims nc ON nc.claim_id = i.claim_id
            ORDER BY i.n"#,
        &tenants as &[&str],
        &fingerprints as &[&[u8]],
        &claim_ids,
        &kinds as &[&str],
        &resource_ids as &[&str],
        &users as &[&str],
        &quantities,
        &accepted,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut reserved = vec![Reserved::UnknownResource; n];
    let mut conflicted = Vec::new();
    // The first admission of a claim id in the batch owns it; later copies
    // of a claim the batch made new are retries (same request) or reuse.
    let mut owner_of: HashMap<ClaimId, usize> = HashMap::new();
    let mut copies = Vec::new();
    for row in rows.iter().filter(|row| row.known) {
        let i = usize::try_from(row.n - 1).unwrap_or(usize::MAX);
        let Some(a) = batch.get(i) else { continue };
        match owner_of.entry(a.event.claim_id) {
            std::collections::hash_map::Entry::Occupied(_) => copies.push(i),
            std::collections::hash_map::Entry::Vacant(first) => {
                first.insert(i);
                if row.new {
                    reserved[i] = Reserved::New;
                } else {
                    conflicted.push(i);
                }
            }
        }
    }
    for i in copies {
        let first = owner_of[&batch[i].event.claim_id];
        if reserved[first] == Reserved::New {
            reserved[i] = if batch[first].fingerprint == batch[i].fingerprint {
                Reserved::Replay(batch[i].event.claim_id)
            } else {
                Reserved::KeyReused
            };
        } else {
            conflicted.push(i);
        }
    }
    if !conflicted.is_empty() {
        // A new statement, so claims committed by others meanwhile are seen.
        let ids: Vec<Uuid> = conflicted.iter().map(|&i| batch[i].event.claim_id.as_uuid()).collect();
        let earlier = sqlx::query!(
            "SELECT claim_id, fingerprint FROM claims WHERE claim_id = ANY($1)",
            &ids,
        )
        .fetch_all(&mut *tx)
        .await?;
        for i in conflicted {
            let a = &batch[i];
            let found = earlier.iter().find(|e| e.claim_id == a.event.claim_id.as_uuid());
            reserved[i] = match found {
                Some(e) if same_request(e.fingerprint.as_deref(), a.fingerprint) => Reserved::Replay(a.event.claim_id),
                _ => Reserved::KeyReused,
            };
        }
    }
    Ok((tx, reserved))
}

/// Takes claims out of a [`reserve_claims`] transaction before it commits
/// (their events could not be published): their pending rows, which are
/// also their idempotency records, go.
pub async fn forget_claims(
    tx: &mut Transaction<'static, Postgres>,
    claims: &[Admission<'_>],
) -> Result<(), StoreError> {
    let claim_ids: Vec<Uuid> = claims.iter().map(|a| a.event.claim_id.as_uuid()).collect();
    sqlx::query!(
        "DELETE FROM claims WHERE claim_id = ANY($1) AND status = 'pending'",
        &claim_ids,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The result of [`decide_fenced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FencedOutcome {
    /// Decisions were written under the token.
    Applied {
        /// Decisions for the claims that were still pending, in order.
        decisions: Vec<Decision>,
        /// Units left afterwards.
        remaining: i64,
        /// Units the resource started with.
        total: i64,
    },
    /// The database had already accepted a newer token: this writer's lease
    /// is stale and nothing was written.
    StaleFence {
        /// The newest token the database accepted.
        last_accepted: i64,
    },
    /// No such resource: the claims were rejected as `unknown_resource`.
    UnknownResource {
        /// The rejections written.
        decisions: Vec<Decision>,
    },
}

/// Decides `events` (one resource, arrival order) under `fence`, in one
/// transaction. Claims already decided (a redelivery after a crash) are
/// skipped, so running a batch twice is harmless.
///
/// Five round trips whatever the batch size: `BEGIN`, the fence, one read of
/// the claims, one write of the decisions, `COMMIT`. The fence is its own
/// statement on purpose: it takes the resource's row lock, and the read
/// after it gets a snapshot in which every earlier writer has committed.
pub async fn decide_fenced(
    pool: &PgPool,
    resource: &ResourceKey,
    fence: FencingToken,
    events: &[ClaimRequested],
) -> Result<FencedOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    let kind = resource.kind.as_str();
    let id = resource.id.as_str();
    let token = fence.as_i64();

    // The fence: this row lock orders every writer of the resource, and the
    // predicate refuses a token that is not newer than the last accepted.
    let fenced = sqlx::query!(
        "UPDATE resources SET fence = $3, decided_at = now() WHERE kind = $1 AND id = $2 AND fence < $3
         RETURNING remaining, total, per_user_limit",
        kind,
        id,
        token,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let state = match fenced {
        Some(row) => Some(row),
        None => {
            let last = sqlx::query_scalar!("SELECT fence FROM resources WHERE kind = $1 AND id = $2", kind, id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(last_accepted) = last {
                return Ok(FencedOutcome::StaleFence { last_accepted });
            }
            None
        }
    };

    let per_user_limit = state.as_ref().and_then(|s| s.per_user_limit);
    let mut found = claim_states(&mut tx, resource, per_user_limit, events).await?;
    // A claim whose acceptance committed while the read waited on its row
    // is missing from that read's snapshot; a new statement sees it. (Fewer
    // rows than events can also be a claim delivered twice in the batch,
    // which needs no second read.)
    if found.len() < events.len() {
        let seen: std::collections::HashSet<Uuid> = found.iter().map(|c| c.claim_id).collect();
        let missing: Vec<ClaimRequested> = events
            .iter()
            .filter(|e| !seen.contains(&e.claim_id.as_uuid()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            found.extend(claim_states(&mut tx, resource, per_user_limit, &missing).await?);
        }
    }
    let mut granted_before: HashMap<String, u32> = HashMap::new();
    let mut pending_by_id: HashMap<Uuid, (String, i32)> = HashMap::with_capacity(found.len());
    for claim in found.into_iter().filter(|c| c.pending) {
        if let Some(grants) = claim.granted_before {
            granted_before.insert(claim.user_id.clone(), u32::try_from(grants).unwrap_or(u32::MAX));
        }
        pending_by_id.insert(claim.claim_id, (claim.user_id, claim.quantity));
    }
    // Arrival order decides, not the order rows came back in.
    let claims: Vec<PendingClaim> = events
        .iter()
        .filter_map(|e| {
            pending_by_id
                .remove(&e.claim_id.as_uuid())
                .map(|(user_id, quantity)| PendingClaim {
                    claim_id: e.claim_id,
                    user_id,
                    quantity: u32::try_from(quantity).unwrap_or(0),
                })
        })
        .collect();

    let Some(state) = state else {
        let decisions: Vec<Decision> = claims
            .iter()
            .map(|c| Decision::Rejected(c.claim_id, RejectReason::UnknownResource))
            .collect();
        write_decisions(&mut tx, resource, &decisions, None, None).await?;
        tx.commit().await?;
        return Ok(FencedOutcome::UnknownResource { decisions });
    };

    let outcome = decide_batch(
        ResourceState {
            remaining: state.remaining,
            per_user_limit: state.per_user_limit.and_then(|l| u32::try_from(l).ok()),
        },
        &granted_before,
        &claims,
    );
    write_decisions(
        &mut tx,
        resource,
        &outcome.decisions,
        Some(token),
        Some(outcome.remaining),
    )
    .await?;
    tx.commit().await?;
    Ok(FencedOutcome::Applied {
        decisions: outcome.decisions,
        remaining: outcome.remaining,
        total: state.total,
    })
}

/// A claim of a batch as [`decide_fenced`] reads it.
struct ClaimState {
    claim_id: Uuid,
    user_id: String,
    quantity: i32,
    pending: bool,
    /// Grants the claim's user already holds on the resource (pending
    /// claims of a resource with a per-user limit only).
    granted_before: Option<i64>,
}

/// One statement: inserts the rows of claims that have none (normally the
/// API wrote them, but a claim whose acceptance transaction failed after
/// publishing is decided from the event alone), and reads every claim's
/// state with, for the pending ones, their users' earlier grants.
async fn claim_states(
    tx: &mut Transaction<'static, Postgres>,
    resource: &ResourceKey,
    per_user_limit: Option<i32>,
    events: &[ClaimRequested],
) -> Result<Vec<ClaimState>, StoreError> {
    let n = events.len();
    let (mut ids, mut tenants, mut users, mut quantities, mut accepted) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events {
        ids.push(e.claim_id.as_uuid());
        tenants.push(e.tenant_id.as_str());
        users.push(e.user_id.as_str());
        quantities.push(i32::try_from(e.quantity).unwrap_or(i32::MAX));
        accepted.push(e.accepted_at_ms as f64);
    }
    let rows = sqlx::query!(
        r#"WITH inserted AS (
             INSERT INTO claims (claim_id, tenant_id, kind, resource_id, user_id, quantity, one_per_user, accepted_at)
             SELECT c.claim_id, c.tenant_id, $1, $2, c.user_id, c.quantity, coalesce($3 = 1, false),
                    to_timestamp(c.accepted_ms / 1000)
               FROM unnest($4::uuid[], $5::text[], $6::text[], $7::int4[], $8::float8[])
                    AS c(claim_id, tenant_id, user_id, quantity, accepted_ms)
             ON CONFLICT (claim_id) DO NOTHING
             RETURNING claim_id, user_id, quantity, status
           ), found AS (
             SELECT claim_id, user_id, quantity, status FROM claims WHERE claim_id = ANY($4)
             UNION ALL
             SELECT claim_id, user_id, quantity, status FROM inserted
           )
           SELECT f.claim_id AS "claim_id!", f.user_id AS "user_id!", f.quantity AS "quantity!",
                  f.status = 'pending' AS "pending!",
                  CASE WHEN $3::int4 IS NOT NULL AND f.status = 'pending' THEN
                    (SELECT count(*) FROM claims g
                      WHERE g.kind = $1 AND g.resource_id = $2 AND g.status = 'granted' AND g.user_id = f.user_id)
                  END AS granted_before
             FROM found f"#,
        resource.kind.as_str(),
        resource.id.as_str(),
        per_user_limit,
        &ids,
        &tenants as &[&str],
        &users as &[&str],
        &quantities,
        &accepted,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ClaimState {
            claim_id: r.claim_id,
            user_id: r.user_id,
            quantity: r.quantity,
            pending: r.pending,
            granted_before: r.granted_before,
        })
        .collect())
}

/// One statement: the decisions, and the units left (when the resource
/// exists) under the same fence.
///
/// `decided_at` is `clock_timestamp()`, not `now()`: the statement runs after
/// the fence row lock is taken, so per resource it orders decisions as they
/// were committed, which the fence-regression audit relies on.
async fn write_decisions(
    tx: &mut Transaction<'static, Postgres>,
    resource: &ResourceKey,
    decisions: &[Decision],
    fence: Option<i64>,
    remaining: Option<i64>,
) -> Result<(), StoreError> {
    let n = decisions.len();
    let (mut ids, mut statuses, mut reasons) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for d in decisions {
        ids.push(d.claim_id().as_uuid());
        let (status, reason) = match d {
            Decision::Granted(_) => (ClaimStatus::Granted, None),
            Decision::Rejected(_, reason) => (ClaimStatus::Rejected, Some(reason.as_str())),
        };
        statuses.push(status.as_str());
        reasons.push(reason);
    }
    sqlx::query!(
        "WITH decided AS (
           UPDATE claims AS c SET status = d.status, reason = d.reason, fence = $6, decided_at = clock_timestamp()
             FROM unnest($3::uuid[], $4::text[], $5::text[]) AS d(claim_id, status, reason)
            WHERE c.claim_id = d.claim_id AND c.status = 'pending'
         )
         UPDATE resources SET remaining = $7
          WHERE kind = $1 AND id = $2 AND fence = $6 AND $7::int8 IS NOT NULL",
        resource.kind.as_str(),
        resource.id.as_str(),
        &ids,
        &statuses as &[&str],
        &reasons as &[Option<&str>],
        fence,
        remaining,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Takes the sweeper's turn: an open transaction holding a transaction-level
/// advisory lock, or `None` when another worker is sweeping. Dropping the
/// transaction ends the turn, also when the worker dies mid-sweep.
pub async fn sweep_turn(pool: &PgPool) -> Result<Option<Transaction<'static, Postgres>>, StoreError> {
    /// An arbitrary constant naming the sweeper's advisory lock.
    const SWEEP_LOCK: i64 = 0x7475_726e_7374_696c; // "turnstil"
    let mut tx = pool.begin().await?;
    let ours = sqlx::query_scalar!("SELECT pg_try_advisory_xact_lock($1) AS \"ours!\"", SWEEP_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    Ok(ours.then_some(tx))
}

/// Claims still pending `older_than` after acceptance, oldest first, as the
/// events that carried them: for re-deciding claims whose message was lost
/// or skipped on the way (the claims table, not the broker, is the record of
/// what was accepted).
pub async fn stale_pending(pool: &PgPool, older_than: Duration, limit: i64) -> Result<Vec<ClaimRequested>, StoreError> {
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
        .filter_map(|r| {
            // Rows were written from parsed values; one that no longer parses
            // is left for an operator rather than guessed at.
            let resource = ResourceKey {
                kind: r.kind.parse().ok()?,
                id: crate::ResourceId::parse("resource", &r.resource_id).ok()?,
            };
            Some(ClaimRequested {
                claim_id: ClaimId::from_uuid(r.claim_id),
                tenant_id: crate::TenantId::parse(&r.tenant_id).ok()?,
                resource,
                user_id: crate::UserId::parse(&r.user_id).ok()?,
                quantity: u32::try_from(r.quantity).ok()?,
                accepted_at_ms: r.accepted_at_ms,
            })
        })
        .collect())
}

/// One pass of the oversold audit (see [`crate::audit`]): Postgres' clock
/// when the pass began, and the recount of the resources in `scope`. A full
/// pass returns only the oversold resources; an incremental pass returns
/// every resource it recounted, so the ledger can clear those now at 0.
/// Both count granted units from the claims themselves, not from
/// `remaining`, so the audit would catch a bug in either.
pub async fn recount_oversold(
    pool: &PgPool,
    scope: AuditScope,
) -> Result<(OffsetDateTime, Vec<ResourceRecount>), StoreError> {
    // Before the recount's snapshot: a decision committed after that
    // snapshot began after this instant, or within the overlap before it.
    let started = sqlx::query_scalar!(r#"SELECT now() AS "now!""#).fetch_one(pool).await?;
    let recounts = match scope {
        AuditScope::Everything => {
            sqlx::query_as!(
                ResourceRecount,
                r#"SELECT r.kind AS "kind!", r.id AS "id!", (g.granted - r.total)::int8 AS "oversold!"
                 FROM resources r
                 JOIN (SELECT kind, resource_id, sum(quantity) AS granted
                         FROM claims WHERE status = 'granted'
                        GROUP BY kind, resource_id) g
                   ON g.kind = r.kind AND g.resource_id = r.id
                WHERE g.granted > r.total"#,
            )
            .fetch_all(pool)
            .await?
        }
        AuditScope::DecidedSince(since) => {
            sqlx::query_as!(
                ResourceRecount,
                r#"SELECT r.kind AS "kind!", r.id AS "id!",
                      greatest(coalesce(g.granted, 0) - r.total, 0)::int8 AS "oversold!"
                 FROM resources r
                 CROSS JOIN LATERAL (SELECT sum(c.quantity) AS granted FROM claims c
                                      WHERE c.kind = r.kind AND c.resource_id = r.id
                                        AND c.status = 'granted') g
                WHERE r.decided_at >= $1"#,
                since,
            )
            .fetch_all(pool)
            .await?
        }
    };
    Ok((started, recounts))
}
