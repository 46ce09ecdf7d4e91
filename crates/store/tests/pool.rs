//! Every pool's connections carry a statement and a lock timeout, and a
//! statement cut off by one is a transient failure (the API answers 503,
//! the worker rewinds), against the real PostgreSQL of `scripts/stack`.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use turnstile_store::{self as store, StatementTimeouts, StoreError};

fn url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".into())
}

#[tokio::test]
async fn a_statement_past_its_timeout_is_cut_off_as_transient() {
    let timeouts = StatementTimeouts {
        statement: Duration::from_millis(300),
        lock: Duration::from_millis(150),
    };
    let pool = store::connect_with(&url(), 2, Duration::from_secs(5), timeouts)
        .await
        .unwrap();
    let shown: (String, String) =
        sqlx::query_as("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(shown, ("300ms".to_owned(), "150ms".to_owned()));

    let started = Instant::now();
    let slow: Result<(), StoreError> = sqlx::query("SELECT pg_sleep(5)")
        .execute(&pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from);
    let error = slow.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cut off after {:?}",
        started.elapsed()
    );
    assert!(error.is_transient(), "57014 is transient: {error:?}");
    assert!(
        !error.may_have_committed(),
        "Postgres answered the statement: {error:?}"
    );

    // A row lock held elsewhere: the wait ends at the lock timeout.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(7261206)")
        .execute(&mut *holder)
        .await
        .unwrap();
    let waited: Result<(), StoreError> = sqlx::query("SELECT pg_advisory_xact_lock(7261206)")
        .execute(&pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from);
    let error = waited.unwrap_err();
    assert!(error.is_transient(), "55P03 is transient: {error:?}");
    holder.rollback().await.unwrap();
}

#[tokio::test]
async fn the_default_pool_has_timeouts_too() {
    let pool = store::connect(&url(), 1, Duration::from_secs(5)).await.unwrap();
    let shown: (String, String) =
        sqlx::query_as("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(shown, ("30s".to_owned(), "10s".to_owned()));
}
