//! Reads of claims and resources, from a replica when one is configured
//! (`TURNSTILE_DATABASE_READ_URL`), else from the primary through the read
//! pool.
//!
//! A replica lags its primary. A row it does not have yet (a claim accepted
//! a moment ago, a coupon just created) is read again from the primary, and
//! so is every read the replica cannot answer (down, overloaded), so a
//! replica makes reads cheaper but never turns an accepted claim into a
//! 404 or a replica outage into 503s. What a replica can still show is an
//! older state of a row it has: a claim `pending` that the primary has
//! already decided. A claim's status only moves forward, so a client that
//! polls sees the decision at most one replication lag later.
//!
//! The API keys are never read from a replica: a revoked key must stop
//! working when the revocation commits, not when it has replicated.

use std::collections::HashSet;

use prometheus::IntCounterVec;
use sqlx::PgPool;
use turnstile_claim::{ClaimId, ResourceKey};
use turnstile_store::{self as store, ClaimRow, ResourceRow, StoreError};

/// Where reads go.
#[derive(Debug, Clone)]
pub(crate) struct Reads {
    /// The read pool: on the replica if one is configured, else on the primary.
    pool: PgPool,
    /// The primary, behind a replica; `None` when `pool` is the primary.
    primary: Option<PgPool>,
    /// Reads the replica could not answer, by reason (`missing`, `unavailable`).
    fallbacks: IntCounterVec,
}

impl Reads {
    /// Reads from `pool`; when it is a replica, `primary` answers what it cannot.
    pub(crate) fn new(pool: PgPool, primary: Option<PgPool>, fallbacks: IntCounterVec) -> Self {
        Self {
            pool,
            primary,
            fallbacks,
        }
    }

    /// The read pool (the replica's, if there is one).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A pool on the primary: the read pool when it is on the primary, else
    /// the one behind the replica.
    pub(crate) fn primary(&self) -> &PgPool {
        self.primary.as_ref().unwrap_or(&self.pool)
    }

    /// One claim.
    pub(crate) async fn claim(&self, id: ClaimId) -> Result<Option<ClaimRow>, StoreError> {
        let first = store::claim(&self.pool, id).await;
        match (&self.primary, fallback_reason(&first, |row| row.is_none())) {
            (Some(primary), Some(reason)) => {
                self.fallbacks.with_label_values(&[reason]).inc();
                store::claim(primary, id).await
            }
            _ => first,
        }
    }

    /// Claims by id, in one statement per pool; ids the replica lacks are
    /// read from the primary.
    pub(crate) async fn claims(&self, ids: &[ClaimId]) -> Result<Vec<ClaimRow>, StoreError> {
        let first = store::claims(&self.pool, ids).await;
        let Some(primary) = &self.primary else {
            return first;
        };
        match first {
            Ok(mut rows) if rows.len() < ids.len() => {
                self.fallbacks.with_label_values(&["missing"]).inc();
                let found: HashSet<ClaimId> = rows.iter().map(|row| row.claim_id).collect();
                let missing: Vec<ClaimId> = ids.iter().copied().filter(|id| !found.contains(id)).collect();
                rows.extend(store::claims(primary, &missing).await?);
                Ok(rows)
            }
            Err(e) if e.is_transient() => {
                self.fallbacks.with_label_values(&["unavailable"]).inc();
                store::claims(primary, ids).await
            }
            answered => answered,
        }
    }

    /// One coupon or SKU.
    pub(crate) async fn resource(&self, key: &ResourceKey) -> Result<Option<ResourceRow>, StoreError> {
        let first = store::resource(&self.pool, key).await;
        match (&self.primary, fallback_reason(&first, |row| row.is_none())) {
            (Some(primary), Some(reason)) => {
                self.fallbacks.with_label_values(&[reason]).inc();
                store::resource(primary, key).await
            }
            _ => first,
        }
    }
}

/// Why the primary must answer instead of the replica, if it must.
fn fallback_reason<T>(first: &Result<T, StoreError>, missing: impl Fn(&T) -> bool) -> Option<&'static str> {
    match first {
        Ok(found) if missing(found) => Some("missing"),
        Ok(_) => None,
        Err(e) if e.is_transient() => Some("unavailable"),
        Err(_) => None,
    }
}
