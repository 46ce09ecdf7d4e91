//! `turnstile-lock` on the real PostgreSQL of `scripts/stack`.

#![allow(clippy::unwrap_used)]

mod support;

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use turnstile_lock::{LockBackend, LockClient, backend::postgres::PostgresLockBackend, testsuite::ContractEnv};

use support::unique;

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".to_owned())
}

async fn backend() -> Arc<dyn LockBackend> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&database_url())
        .await
        .expect("postgres from scripts/stack must be up");
    let backend = PostgresLockBackend::new(pool);
    backend.install().await.unwrap();
    Arc::new(backend)
}

fn env(name: &str) -> ContractEnv {
    ContractEnv {
        connect: Arc::new(|| backend().boxed()),
        vanish: Arc::new(|resource: String| {
            async move {
                let pool = sqlx::PgPool::connect(&database_url()).await.unwrap();
                sqlx::query("UPDATE turnstile_locks SET expires_at = '-infinity' WHERE resource = $1")
                    .bind(resource)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            .boxed()
        }),
        namespace: unique(name),
    }
}

turnstile_lock::contract_tests!(env);

/// Tokens live in the table: a new pool (a restarted service) still gets
/// greater tokens.
#[tokio::test]
async fn tokens_survive_a_new_connection_pool() {
    let resource = unique("pg-durable");
    let first = LockClient::new(backend().await)
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    let token = first.token();
    first.release().await.unwrap();
    let second = LockClient::new(backend().await)
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(second.token() > token);
    second.release().await.unwrap();
}
