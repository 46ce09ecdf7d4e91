//! A fenced write to PostgreSQL: the lock keeps writers apart, the fence
//! makes a stale one harmless.
//!
//! Each row remembers the last token that wrote it, and an update carries
//! its lease's token and applies only if that token is newer. A writer that
//! paused past its lease (a GC pause, `SIGSTOP`) and wakes up after someone
//! else took the lock writes nothing: its token is older.
//!
//! Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432
//! (`scripts/stack up` starts both):
//! `cargo run -p turnstile-lock --example fenced_write`

#![allow(clippy::print_stdout)] // an example reports what it did

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgPoolOptions};
use turnstile_lock::{FencingToken, LockClient, backend::redis::RedisLockBackend};

/// Adds `amount` to the account, if `token` is newer than the last writer's.
async fn fenced_add(db: &PgPool, account: &str, amount: i64, token: FencingToken) -> sqlx::Result<bool> {
    let applied = sqlx::query(
        "UPDATE example_accounts SET balance = balance + $2, fence = $3
          WHERE id = $1 AND fence < $3",
    )
    .bind(account)
    .bind(amount)
    .bind(token.as_i64())
    .execute(db)
    .await?
    .rows_affected();
    Ok(applied == 1)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let postgres =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".to_owned());
    let db = PgPoolOptions::new().max_connections(2).connect(&postgres).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL, fence BIGINT NOT NULL)",
    )
    .execute(&db)
    .await?;
    let account = format!("acct-{}", std::process::id());
    sqlx::query("INSERT INTO example_accounts VALUES ($1, 0, 0)")
        .bind(&account)
        .execute(&db)
        .await?;

    let locks = LockClient::new(Arc::new(RedisLockBackend::connect(&redis).await?));
    let resource = format!("example:account:{account}");

    // The zombie: takes the lock, then stalls past its 200 ms lease.
    let zombie = locks.try_acquire(&resource, Duration::from_millis(200)).await?;
    let stale = zombie.token();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Meanwhile the lock expired and a live writer took it and wrote.
    let live = locks
        .acquire(&resource, Duration::from_secs(5), Duration::from_secs(1))
        .await?;
    assert!(fenced_add(&db, &account, 100, live.token()).await?);
    live.release().await?;

    // The zombie wakes up and writes with its old token: refused.
    assert!(!fenced_add(&db, &account, 1_000_000, stale).await?);
    drop(zombie);

    let balance: i64 = sqlx::query_scalar("SELECT balance FROM example_accounts WHERE id = $1")
        .bind(&account)
        .fetch_one(&db)
        .await?;
    assert_eq!(balance, 100);
    println!("balance {balance}: the live write applied, the stale token {stale} was refused");
    sqlx::query("DELETE FROM example_accounts WHERE id = $1")
        .bind(&account)
        .execute(&db)
        .await?;
    Ok(())
}
