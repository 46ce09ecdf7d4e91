//! Helpers the worker's integration tests share.

#![allow(dead_code, clippy::unwrap_used)]

use turnstile_testkit::db;

pub use turnstile_testkit::until;

/// How many announcements are owed on `topic`.
pub async fn owed(topic: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM decision_outbox WHERE topic = $1")
        .bind(topic)
        .fetch_one(&db().await.unwrap())
        .await
        .unwrap()
}
