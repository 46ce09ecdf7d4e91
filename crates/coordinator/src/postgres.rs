//! The Postgres side of a fenced handler: the fence check a transaction
//! starts with, and the sweeper's turn. Behind the `postgres` feature.

use std::future::Future;

use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::{
    handler::FencingToken,
    sweep::{SweepError, SweepTurn},
};

/// What [`advance_fence`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceCheck {
    /// The token is newer than the last accepted: the fence moved to it,
    /// and the row stays locked until the transaction ends, so every
    /// writer of the resource is ordered by it.
    Advanced,
    /// The store had accepted `last_accepted`, not older than the token:
    /// the transaction must write nothing (roll back, or commit nothing).
    Stale {
        /// The newest token accepted.
        last_accepted: u64,
    },
}

/// The fence table [`advance_fence`] keeps, one row per resource. Resource
/// names share it, so a handler names its resources apart from others'
/// (`accounts/42`, say).
pub const FENCE_TABLE: &str = "turnstile_fences";

/// Creates [`FENCE_TABLE`] if it does not exist. Members starting at once
/// take turns: two concurrent `CREATE TABLE IF NOT EXISTS` of one table
/// can fail on the catalog's unique index.
pub async fn install_fence_table(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('turnstile_fences'))")
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS turnstile_fences (resource text PRIMARY KEY, fence bigint NOT NULL)")
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Moves `resource`'s fence to `token` inside `tx`, if `token` is newer
/// than the last accepted (`WHERE fence < $token`): the first statement of
/// every fenced transaction. The row stays locked until `tx` ends, so it
/// orders every writer of the resource. One round trip; a second only when
/// refused, to say what was accepted.
pub async fn advance_fence(
    tx: &mut Transaction<'_, Postgres>,
    resource: &str,
    token: FencingToken,
) -> Result<FenceCheck, sqlx::Error> {
    let advanced = sqlx::query(
        "INSERT INTO turnstile_fences (resource, fence) VALUES ($1, $2)
         ON CONFLICT (resource) DO UPDATE SET fence = EXCLUDED.fence WHERE turnstile_fences.fence < EXCLUDED.fence",
    )
    .bind(resource)
    .bind(token.as_i64())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if advanced == 1 {
        return Ok(FenceCheck::Advanced);
    }
    let last: i64 = sqlx::query_scalar("SELECT fence FROM turnstile_fences WHERE resource = $1")
        .bind(resource)
        .fetch_one(&mut **tx)
        .await?;
    Ok(FenceCheck::Stale {
        last_accepted: u64::try_from(last).unwrap_or(0),
    })
}

/// The sweeper's turn as a session-level advisory lock on a connection of
/// its own. It is no pooled connection: a pooled one could go back to the
/// pool still holding the lock. If the process dies the connection closes
/// and the lock goes with it.
#[derive(Debug)]
pub struct AdvisoryTurn {
    conn: PgConnection,
    key: i64,
}

impl AdvisoryTurn {
    /// Opens the turn's connection; `key` names the advisory lock, one per
    /// group of sweepers.
    pub async fn connect(url: &str, key: i64) -> Result<Self, sqlx::Error> {
        Ok(Self {
            conn: PgConnection::connect(url).await?,
            key,
        })
    }
}

impl SweepTurn for AdvisoryTurn {
    /// No transaction stays open while `pass` runs: the lock belongs to the
    /// session.
    async fn run<F: Future<Output = ()> + Send>(&mut self, pass: F) -> Result<bool, SweepError> {
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut self.conn)
            .await?;
        if !ours {
            return Ok(false);
        }
        pass.await;
        let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .fetch_one(&mut self.conn)
            .await?;
        Ok(true)
    }
}
