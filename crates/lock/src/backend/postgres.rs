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

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgPool};

use crate::{Attempt, FencingToken, LockBackend, LockError, OwnerId};

/// The schema for the default table, `turnstile_locks`; see
/// [`PostgresLockBackend::schema`] for another table.
pub const SCHEMA: &str = include_str!("../../sql/postgres.sql");

/// The table [`SCHEMA`] creates, and the default.
pub const DEFAULT_TABLE: &str = "turnstile_locks";

/// The advisory lock key that serialises [`PostgresLockBackend::install`].
const INSTALL_LOCK: i64 = 0x7475_726e_6c6b_6462;

/// Where the leases live.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresLockConfig {
    /// The lease table: an identifier of lowercase ASCII letters, digits and
    /// underscores, optionally schema-qualified (`locks.leases`).
    pub table: String,
}

impl Default for PostgresLockConfig {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
        }
    }
}

impl PostgresLockConfig {
    /// Leases in `table` (checked when the backend is built).
    pub fn with_table(table: impl Into<String>) -> Self {
        Self { table: table.into() }
    }
}

/// Whether `name` is a plain identifier, or two joined by a dot: what may
/// be written into a statement unquoted.
fn is_table_name(name: &str) -> bool {
    let part = |p: &str| {
        (1..=63).contains(&p.len())
            && p.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    match name.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(name),
    }
}

/// The statements, written once for the configured table.
#[derive(Debug)]
struct Statements {
    schema: String,
    acquire: Arc<str>,
    time_left: Arc<str>,
    holder: Arc<str>,
    extend: Arc<str>,
    raise_floor: Arc<str>,
    release: Arc<str>,
}

/// A statement of [`Statements`] as sqlx takes it: built at start-up from
/// a validated table name, never from input, so safe to run as is.
fn safe(statement: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(statement))
}

impl Statements {
    fn for_table(table: &str) -> Self {
        let sql = |s: String| Arc::<str>::from(s);
        Self {
            schema: SCHEMA.replace(DEFAULT_TABLE, table),
            // One round trip: insert, or replace a lease that has expired.
            acquire: sql(format!(
                "INSERT INTO {table} AS l (resource, owner, token, expires_at)
                 VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3))
                 ON CONFLICT (resource) DO UPDATE
                    SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
                  WHERE l.expires_at <= clock_timestamp()
                 RETURNING token"
            )),
            // A lease released since the upsert reads as '-infinity', which
            // cannot be subtracted from: clamp it to now.
            time_left: sql(format!(
                "SELECT (extract(epoch FROM greatest(expires_at, now_) - now_) * 1000)::int8
                   FROM {table}, clock_timestamp() AS now_ WHERE resource = $1"
            )),
            holder: sql(format!(
                "SELECT owner FROM {table} WHERE resource = $1 AND expires_at > clock_timestamp()"
            )),
            extend: sql(format!(
                "UPDATE {table} SET expires_at = clock_timestamp() + make_interval(secs => $3)
                  WHERE resource = $1 AND owner = $2 AND expires_at > clock_timestamp()
                 RETURNING true"
            )),
            raise_floor: sql(format!(
                "INSERT INTO {table} AS l (resource, owner, token, expires_at)
                 VALUES ($1, '', $2, '-infinity')
                 ON CONFLICT (resource) DO UPDATE SET token = greatest(l.token, EXCLUDED.token)"
            )),
            release: sql(format!(
                "UPDATE {table} SET expires_at = '-infinity'
                  WHERE resource = $1 AND owner = $2 AND expires_at > clock_timestamp()
                 RETURNING true"
            )),
        }
    }
}

/// Locks in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresLockBackend {
    pool: PgPool,
    sql: Arc<Statements>,
}

fn unavailable(e: sqlx::Error) -> LockError {
    LockError::unavailable("postgres", e)
}

fn secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl PostgresLockBackend {
    /// A backend on `pool` (an existing pool: the lock needs no connection
    /// of its own between calls), with leases in `turnstile_locks`. Call
    /// [`install`](Self::install) once first.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sql: Arc::new(Statements::for_table(DEFAULT_TABLE)),
        }
    }

    /// A backend on `pool` with `config`'s table; refuses a table name that
    /// is not a plain (optionally schema-qualified) lowercase identifier.
    pub fn with_config(pool: PgPool, config: &PostgresLockConfig) -> Result<Self, LockError> {
        if !is_table_name(&config.table) {
            return Err(LockError::InvalidConfig(format!(
                "lock table {:?}: expected a lowercase identifier, optionally schema-qualified",
                config.table
            )));
        }
        Ok(Self {
            pool,
            sql: Arc::new(Statements::for_table(&config.table)),
        })
    }

    /// The schema [`install`](Self::install) applies: the table, created if
    /// it does not exist. For migrations of one's own.
    pub fn schema(&self) -> &str {
        &self.sql.schema
    }

    /// Creates the lock table if it does not exist.
    /// Safe to call from many processes at once: `IF NOT EXISTS` alone is
    /// not (two creators can both pass the check), so the statements run in
    /// one implicit transaction behind an advisory lock.
    pub async fn install(&self) -> Result<(), LockError> {
        let script = format!("SELECT pg_advisory_xact_lock({INSTALL_LOCK});\n{}", self.sql.schema);
        sqlx::raw_sql(AssertSqlSafe(script))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Tells an expired lease from one held by someone else, after an
    /// owner-checked statement touched no row.
    async fn why_not(&self, resource: &str, owner: &OwnerId) -> Result<LockError, LockError> {
        let holder: Option<String> = sqlx::query_scalar(safe(&self.sql.holder))
            .bind(resource)
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
        let token: Option<i64> = sqlx::query_scalar(safe(&self.sql.acquire))
            .bind(resource)
            .bind(owner.as_str())
            .bind(secs(ttl))
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        match token {
            Some(token) => Ok(Attempt::Acquired {
                token: FencingToken::new(u64::try_from(token).unwrap_or(0)),
            }),
            None => {
                let left: Option<Option<i64>> = sqlx::query_scalar(safe(&self.sql.time_left))
                    .bind(resource)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(Attempt::Busy {
                    retry_after: left
                        .flatten()
                        .and_then(|ms| u64::try_from(ms).ok())
                        .map(Duration::from_millis),
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
        let extended: Option<bool> = sqlx::query_scalar(safe(&self.sql.extend))
            .bind(resource)
            .bind(owner.as_str())
            .bind(secs(ttl))
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
        sqlx::query(safe(&self.sql.raise_floor))
            .bind(resource)
            .bind(floor.as_i64())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn release(&self, resource: &str, owner: &OwnerId, _token: FencingToken) -> Result<(), LockError> {
        let released: Option<bool> = sqlx::query_scalar(safe(&self.sql.release))
            .bind(resource)
            .bind(owner.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        match released {
            Some(_) => Ok(()),
            None => Err(self.why_not(resource, owner).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_table_names() {
        for ok in ["turnstile_locks", "locks", "app.leases", "_x1"] {
            assert!(is_table_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Locks",
            "1locks",
            "a.b.c",
            "locks; DROP TABLE x",
            "\"q\"",
            "a.",
            ".a",
        ] {
            assert!(!is_table_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_schema_names_the_configured_table() {
        let sql = Statements::for_table("app.leases");
        assert!(
            sql.schema.contains("CREATE TABLE IF NOT EXISTS app.leases"),
            "{}",
            sql.schema
        );
        assert!(!sql.schema.contains(DEFAULT_TABLE));
        assert!(sql.acquire.contains("INSERT INTO app.leases AS l"));
    }
}
