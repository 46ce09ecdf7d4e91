//! `balances`: applies the account movements on the `balances.movements`
//! topic until SIGTERM. `DATABASE_URL`, `TURNSTILE_KAFKA_BROKERS` and
//! `TURNSTILE_REDIS_URL` (the locks) say where things are; the defaults are
//! the native stack's.

use std::sync::Arc;

use turnstile_bus::KafkaConnection;
use turnstile_lock::{LockClient, backend::redis::RedisLockBackend};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let pool = sqlx::PgPool::connect(&env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/turnstile")).await?;
    turnstile_example_balances::install(&pool).await?;
    let kafka = KafkaConnection::new(env("TURNSTILE_KAFKA_BROKERS", "127.0.0.1:9092"));
    let redis = RedisLockBackend::connect(&env("TURNSTILE_REDIS_URL", "redis://127.0.0.1:6379")).await?;
    let locks = LockClient::new(Arc::new(redis));
    let registry = prometheus::Registry::new();
    let member = turnstile_example_balances::member(pool, &kafka, "balances", "", locks, &registry).await?;
    turnstile_runtime::run_until_signal(|stop| async move {
        member.run_until_stopped(stop).await;
        Ok(())
    })
    .await
}
