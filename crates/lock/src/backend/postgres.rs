//! PostgreSQL: a lease row per resource whose token counts up, for teams
//! whose only highly available store is the database they already have.
//!
//! Every operation is one autocommit statement, so:
//! - taking a lock and its token is atomic: an upsert that only replaces an
//!   expired lease and sets `token = token + 1` while holding the row lock;
//! - no connection is pinned while a lease is held: between calls the lease
//!   is a row, not a session. That is why this backend uses a lease table
//!   rather than advisory locks, which belong to a session (or a
//!   transaction) and so break behind a transaction-mode pooler such as
//!   PgBouncer, or pin a pooled connection for the whole lease;
//! - expiry uses the database's clock (`clock_timestamp()`), one clock for
//!   every client.
//!
//! Tokens are assigned under the row lock, from the row's previous token, so
//! they strictly increase per resource in grant order, and they are as
//! durable as the table. They do not come from a sequence: `nextval` runs
//! before the statement waits for the row lock, so a waiter could be
//! granted an older token than the holder before it. Release expires the row instead
//! of deleting it, to keep the token. Waiters poll with full jitter (no
//! LISTEN/NOTIFY wake-ups yet).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;

use crate::{Attempt, FencingToken, LockBackend, LockError, OwnerId};

/// The backend's schema, applied by [`PostgresLockBackend::install`].
pub const SCHEMA: &str = include_str!("../../sql/postgres.sql");

/// The advisory lock key that serialises [`PostgresLockBackend::install`].
const INSTALL_LOCK: i64 = 0x7475_726e_6c6b_6462;

/// Locks in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresLockBackend {
    pool: PgPool,
}

fn unavailable(e: sqlx::Error) -> LockError {
    LockError::unavailable("postgres", e)
}

fn secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl PostgresLockBackend {
    /// A backend on `pool`. Call [`install`](Self::install) once first.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates the lock table and token sequence if they do not exist.
    /// Safe to call from many processes at once: `IF NOT EXISTS` alone is
    /// not (two creators can both pass the check), so the statements run in
    /// one implicit transaction behind an advisory lock.
    pub async fn install(&self) -> Result<(), LockError> {
        let script = format!("SELECT pg_advisory_xact_lock({INSTALL_LOCK});\n{SCHEMA}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Tells an expired lease from one held by someone else, after an
    /// owner-checked statement touched no row.
    async fn why_not(&self, resource: &str, owner: &OwnerId) -> Result<LockError, LockError> {
        let holder = sqlx::query_scalar!(
            "SELECT owner FROM turnstile_locks WHERE resource = $1 AND expires_at > clock_timestamp()",
            resource,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let resource = resource.to_owned();
        Ok(match holder {
            Some(h) if h != owner.as_str() => LockError::HeldByOther { resource },
            _ => LockError::Expired { resource },
        })
    }
}

#[async_trait]
impl LockBackend for PostgresLockBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn try_acquire(&self, resource: &str, owner: &OwnerId, ttl: Duration) -> Result<Attempt, LockError> {
        // One round trip: insert, or replace a lease that has expired.
        let token = sqlx::query_scalar!(
            "INSERT INTO turnstile_locks AS l (resource, owner, token, expires_at)
             VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3))
             ON CONFLICT (resource) DO UPDATE
                SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
              WHERE l.expires_at <= clock_timestamp()
             RETURNING token",
            resource,
            owner.as_str(),
            secs(ttl),
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        match token {
            Some(token) => Ok(Attempt::Acquired {
                token: FencingToken::new(u64::try_from(token).unwrap_or(0)),
            }),
            None => {
                let left = sqlx::query_scalar!(
                    // A lease released since the upsert reads as '-infinity',
                    // which cannot be subtracted from: clamp it to now.
                    "SELECT (extract(epoch FROM greatest(expires_at, now_) - now_) * 1000)::int8
                       FROM turnstile_locks, clock_timestamp() AS now_ WHERE resource = $1",
                    resource,
                )
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?
                .flatten();
                Ok(Attempt::Busy {
                    retry_after: left.and_then(|ms| u64::try_from(ms).ok()).map(Duration::from_millis),
                })
            }
        }
    }

    async fn extend(
        &self,
        resource: &str,
        owner: &OwnerId,
        _token: FencingToken,
        ttl: Duration,
    ) -> Result<(), LockError> {
        let extended = sqlx::query_scalar!(
            "UPDATE turnstile_locks SET expires_at = clock_timestamp() + make_interval(secs => $3)
              WHERE resource = $1 AND owner = $2 AND expires_at > clock_timestamp()
             RETURNING true AS \"extended!\"",
            resource,
            owner.as_str(),
            secs(ttl),
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        match extended {
            Some(_) => Ok(()),
            None => Err(self.why_not(resource, owner).await?),
        }
    }

    /// Raises the row's token; a resource never locked gets an expired row
    /// holding the floor, so its first grant counts on from there.
    async fn raise_floor(&self, resource: &str, floor: FencingToken) -> Result<(), LockError> {
        sqlx::query!(
            "INSERT INTO turnstile_locks AS l (resource, owner, token, expires_at)
             VALUES ($1, '', $2, '-infinity')
             ON CONFLICT (resource) DO UPDATE SET token = greatest(l.token, EXCLUDED.token)",
            resource,
            floor.as_i64(),
        )
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn release(&self, resource: &str, owner: &OwnerId, _token: FencingToken) -> Result<(), LockError> {
        let released = sqlx::query_scalar!(
            "UPDATE turnstile_locks SET expires_at = '-infinity'
              WHERE resource = $1 AND owner = $2 AND expires_at > clock_timestamp()
             RETURNING true AS \"released!\"",
            resource,
            owner.as_str(),
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        match released {
            Some(_) => Ok(()),
            None => Err(self.why_not(resource, owner).await?),
        }
    }
}
