//! Admission: the pending claims of a batch of requests.
//!
//! One statement records a batch and tells each admission what it found:
//! a new claim, or the claim an earlier request with the same key left
//! (the same request: a replay; another: a reused key). The check of the
//! earlier request's fingerprint is part of that statement, so when it
//! answers, every row it wrote is accounted for; a statement that fails
//! wrote nothing (it is its own transaction). The only case one statement
//! cannot settle is a key another batch inserted while this one ran: the
//! insert waits for that batch and then skips the key, but the statement's
//! snapshot predates the other row. Such keys ([`reserve_claims`] calls
//! them unsettled) get the same statement again, which inserts nothing new
//! for them unless the other batch rolled back.

use std::collections::{HashMap, hash_map::Entry};

use sqlx::PgConnection;

use crate::StoreError;
use turnstile_claim::{ClaimId, ClaimRequested};

/// The result of [`reserve_claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A new claim, recorded on the connection (committed, unless the
    /// connection is inside a transaction the caller has yet to commit).
    New,
    /// The key was used before with the same request: answer as before.
    Replay(ClaimId),
    /// The key was used before with a different request.
    KeyReused,
    /// No such coupon or SKU.
    UnknownResource,
}

/// Records the pending claim for `event`: [`reserve_claims`] with a batch
/// of one.
pub async fn reserve_claim(
    conn: &mut PgConnection,
    fingerprint: &[u8; 32],
    event: &ClaimRequested,
) -> Result<Reservation, StoreError> {
    let reserved = reserve_claims(conn, &[Admission { fingerprint, event }]).await?;
    Ok(match reserved.first() {
        Some(Reserved::New) => Reservation::New,
        Some(Reserved::Replay(claim_id)) => Reservation::Replay(*claim_id),
        Some(Reserved::KeyReused) => Reservation::KeyReused,
        Some(Reserved::UnknownResource) | None => Reservation::UnknownResource,
    })
}

/// Whether a stored fingerprint is the request's. A claim with none (the
/// column is nullable for rows written before it existed) is replayed by
/// its key alone.
fn same_request(stored: Option<&[u8]>, fingerprint: &[u8; 32]) -> bool {
    stored.is_none_or(|stored| stored == &fingerprint[..])
}

/// One claim to admit in [`reserve_claims`].
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// The request's meaning, to tell a retry from a reused key.
    pub fingerprint: &'a [u8; 32],
    /// The claim, as its event will carry it. Its claim id is derived from
    /// the tenant and the idempotency key.
    pub event: &'a ClaimRequested,
}

/// What [`reserve_claims`] found for one admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// A new claim, recorded.
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

/// How often [`reserve_claims`] runs its statement again for keys that a
/// concurrent batch held. One more run settles them (its snapshot sees the
/// other batch's commit); the spare runs cover a second racer.
const SETTLE_RUNS: usize = 3;

/// Records the pending claims of a whole batch of admissions (group commit:
/// on an autocommit connection the batch shares one round trip and one WAL
/// flush).
///
/// The claim row is the idempotency record: its id is derived from the
/// tenant and the key, `accepted_at` is the database's `now()` (the clock
/// the sweeper compares it with). Claims are inserted in id order, so
/// concurrent batches cannot deadlock. The first admission of a key in the
/// batch owns it; later copies are retries (same fingerprint) or reuse.
///
/// An error means nothing was written, except
/// [`StoreError::PartlyCommitted`] (a statement failed after an earlier one
/// committed rows, only when a concurrent batch held some keys) and an
/// error that [`StoreError::may_have_committed`]: calling again with the
/// same batch finds such rows, as replays of themselves.
pub async fn reserve_claims(conn: &mut PgConnection, batch: &[Admission<'_>]) -> Result<Vec<Reserved>, StoreError> {
    let mut reserved = vec![Reserved::UnknownResource; batch.len()];
    // The first admission of each claim id owns it; its copies follow it.
    let mut owner_of: HashMap<ClaimId, usize> = HashMap::new();
    let mut owners = Vec::new();
    for (i, a) in batch.iter().enumerate() {
        if let Entry::Vacant(first) = owner_of.entry(a.event.claim_id) {
            first.insert(i);
            owners.push(i);
        }
    }
    let mut found: HashMap<usize, Existing> = HashMap::with_capacity(owners.len());
    let mut unsettled = owners;
    for _ in 0..SETTLE_RUNS {
        if unsettled.is_empty() {
            break;
        }
        let admissions: Vec<Admission<'_>> = unsettled.iter().map(|&i| batch[i]).collect();
        let runs = match record_batch(conn, &admissions).await {
            Ok(runs) => runs,
            // An earlier run committed rows this call cannot answer for now.
            Err(e) if found.values().any(|f| matches!(f, Existing::New)) => {
                return Err(StoreError::PartlyCommitted(Box::new(e)));
            }
            Err(e) => return Err(e),
        };
        let mut again = Vec::new();
        for (&i, run) in unsettled.iter().zip(runs) {
            match run {
                Some(existing) => {
                    found.insert(i, existing);
                }
                None => again.push(i),
            }
        }
        unsettled = again;
    }
    if !unsettled.is_empty() {
        // A third racer in a row: the keys are in contention. Nothing was
        // written for them; the batch is answered as if Postgres were busy.
        return Err(StoreError::Contended);
    }
    for (i, a) in batch.iter().enumerate() {
        let owner = owner_of[&a.event.claim_id];
        reserved[i] = match found.get(&owner) {
            None | Some(Existing::UnknownResource) => Reserved::UnknownResource,
            Some(Existing::New) if owner == i => Reserved::New,
            Some(Existing::New) if batch[owner].fingerprint == a.fingerprint => Reserved::Replay(a.event.claim_id),
            Some(Existing::New) => Reserved::KeyReused,
            Some(Existing::Earlier(stored)) if same_request(stored.as_deref(), a.fingerprint) => {
                Reserved::Replay(a.event.claim_id)
            }
            Some(Existing::Earlier(_)) => Reserved::KeyReused,
        };
    }
    Ok(reserved)
}

/// What one run of the statement found for a claim id.
enum Existing {
    /// Its resource does not exist; nothing written.
    UnknownResource,
    /// Inserted by this statement.
    New,
    /// Written before this statement began, with this fingerprint.
    Earlier(Option<Vec<u8>>),
}

/// One statement: inserts the admissions (distinct claim ids) whose
/// resource exists, and reads, from the same snapshot, the rows that
/// existed before it. `None` for a claim id another batch inserted while
/// this statement ran: its row is not in the snapshot, so run again.
async fn record_batch(conn: &mut PgConnection, batch: &[Admission<'_>]) -> Result<Vec<Option<Existing>>, StoreError> {
    let n = batch.len();
    let (mut tenants, mut fingerprints, mut claim_ids, mut kinds, mut resource_ids) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut users, mut quantities) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for a in batch {
        tenants.push(a.event.tenant().as_str());
        fingerprints.push(&a.fingerprint[..]);
        claim_ids.push(a.event.claim_id.as_uuid());
        kinds.push(a.event.resource.kind.as_str());
        resource_ids.push(a.event.resource.id.as_str());
        users.push(a.event.user_id.as_str());
        // Quantity is at most 1000.
        quantities.push(i32::try_from(a.event.quantity.get()).unwrap_or(i32::MAX));
    }
    // The data-modifying CTE and the outer query share one snapshot: the
    // outer join on `claims` sees the rows committed before the statement
    // began, never the ones it inserts.
    let rows = sqlx::query!(
        r#"WITH input AS (
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::uuid[], $4::text[], $5::text[],
                                  $6::text[], $7::int4[]) WITH ORDINALITY
                 AS t(tenant_id, fingerprint, claim_id, kind, resource_id, user_id, quantity, n)
           ), known AS (
             SELECT i.*, coalesce(r.per_user_limit = 1, false) AS one_per_user
               FROM input i JOIN resources r
                 ON r.tenant_id = i.tenant_id AND r.kind = i.kind AND r.id = i.resource_id
           ), new_claims AS (
             INSERT INTO claims (claim_id, tenant_id, kind, resource_id, user_id, quantity, one_per_user, fingerprint)
             SELECT claim_id, tenant_id, kind, resource_id, user_id, quantity, one_per_user, fingerprint
               FROM known ORDER BY claim_id
             ON CONFLICT (claim_id) DO NOTHING
             RETURNING claim_id
           )
           SELECT i.n AS "n!", (k.n IS NOT NULL) AS "known!", (nc.claim_id IS NOT NULL) AS "new!",
                  (c.claim_id IS NOT NULL) AS "earlier!", c.fingerprint AS "earlier_fingerprint?"
             FROM input i
             LEFT JOIN known k ON k.n = i.n
             LEFT JOIN new_claims nc ON nc.claim_id = i.claim_id
             -- One primary-key probe per key (see `crate::claims`), not a
             -- join Postgres may plan as a scan of the whole table.
             LEFT JOIN LATERAL (
               SELECT claims.claim_id, claims.fingerprint FROM claims WHERE claims.claim_id = i.claim_id LIMIT 1
             ) c ON true
            ORDER BY i.n"#,
        &tenants as &[&str],
        &fingerprints as &[&[u8]],
        &claim_ids,
        &kinds as &[&str],
        &resource_ids as &[&str],
        &users as &[&str],
        &quantities,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut found: Vec<Option<Existing>> = (0..n).map(|_| Some(Existing::UnknownResource)).collect();
    for row in rows {
        let i = usize::try_from(row.n - 1).unwrap_or(usize::MAX);
        let Some(slot) = found.get_mut(i) else { continue };
        *slot = if !row.known {
            Some(Existing::UnknownResource)
        } else if row.new {
            Some(Existing::New)
        } else if row.earlier {
            Some(Existing::Earlier(row.earlier_fingerprint))
        } else {
            None
        };
    }
    Ok(found)
}

/// Claims pending now, counted up to `cap` (claim-api's backpressure): an
/// index-only scan of `claims_pending_since`, the partial index of pending
/// claims, that stops at `cap` rows, so a deep backlog costs no more than a
/// full one. Measured on a table of a million claims (2 cores, busy): 1.2
/// ms with 20 000 pending, 0.1-0.4 ms with 300. The first count after
/// 20 000 claims were decided took 136 ms, as it marked their index
/// entries dead; the next ones took 0.2-0.4 ms again.
pub async fn pending_claims(pool: &sqlx::PgPool, cap: i64) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "pending!" FROM (
             SELECT 1 FROM claims WHERE status = 'pending' LIMIT $1
           ) AS p"#,
        cap,
    )
    .fetch_one(pool)
    .await?)
}
