//! Admission: the pending claims of a batch of requests.

use std::collections::{HashMap, hash_map::Entry};

use sqlx::PgConnection;
use uuid::Uuid;

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

/// Records the pending claims of a whole batch of admissions in one
/// statement (group commit: on an autocommit connection the batch shares
/// one round trip and one WAL flush).
///
/// The claim row is the idempotency record: its id is derived from the
/// tenant and the key. Claims are inserted in id order, so concurrent
/// batches cannot deadlock; a claim held by another batch's uncommitted
/// insert makes this one wait for it, and then counts as used before. Only
/// when some key was used before does a second statement read what the
/// earlier request stored.
pub async fn reserve_claims(conn: &mut PgConnection, batch: &[Admission<'_>]) -> Result<Vec<Reserved>, StoreError> {
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
        tenants.push(a.event.tenant().as_str());
        fingerprints.push(&a.fingerprint[..]);
        claim_ids.push(a.event.claim_id.as_uuid());
        kinds.push(a.event.resource.kind.as_str());
        resource_ids.push(a.event.resource.id.as_str());
        users.push(a.event.user_id.as_str());
        // Quantity is at most 1000.
        quantities.push(i32::try_from(a.event.quantity.get()).unwrap_or(i32::MAX));
        accepted.push(a.event.accepted_at_ms.get() as f64);
    }
    let rows = sqlx::query!(
        r#"WITH input AS (
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::uuid[], $4::text[], $5::text[],
                                  $6::text[], $7::int4[], $8::float8[]) WITH ORDINALITY
                 AS t(tenant_id, fingerprint, claim_id, kind, resource_id, user_id, quantity, accepted_ms, n)
           ), known AS (
             SELECT i.*, coalesce(r.per_user_limit = 1, false) AS one_per_user
               FROM input i JOIN resources r
                 ON r.tenant_id = i.tenant_id AND r.kind = i.kind AND r.id = i.resource_id
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
    .fetch_all(&mut *conn)
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
            Entry::Occupied(_) => copies.push(i),
            Entry::Vacant(first) => {
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
        .fetch_all(&mut *conn)
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
    Ok(reserved)
}
