//! Helpers the worker's integration tests share.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use turnstile_testkit::db;

/// Polls `check` every 100 ms until it holds, for at most `within`.
pub async fn until<F: Future<Output = bool>>(within: Duration, what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many announcements are owed on `topic`.
pub async fn owed(topic: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM decision_outbox WHERE topic = $1")
        .bind(topic)
        .fetch_one(&db().await.unwrap())
        .await
        .unwrap()
}
