//! What the end-to-end tests share: the services built in this process
//! from their settings, and everything of the test kit.

#![allow(dead_code, clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use tokio_util::sync::CancellationToken;
pub use turnstile_testkit::*;

pub mod pki;

/// The worker binary these tests stop, kill and restart.
pub const WORKER_BIN: &str = env!("CARGO_BIN_EXE_e2e-claim-worker");

/// Builds and serves an API with `settings` in this process.
pub async fn start_api(settings: claim_api::Settings) -> Result<TestApi> {
    let database_url = settings.database.url.expose().to_owned();
    let app = claim_api::Application::build(settings).await?;
    let (addr, operator) = (app.local_addr()?, app.metrics_addr()?);
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));
    TestApi::attach(addr, operator, &database_url, stop).await
}

/// Settings for an API in a test: port 0, the test's namespace.
pub fn api_settings(ns: &Namespace) -> claim_api::Settings {
    claim_api::Settings {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: turnstile_runtime::settings::DatabaseSettings {
            url: database_url().into(),
        },
        database_read_url: None,
        pg_write_pool: 8,
        accept_batches: 4,
        pg_read_pool: 8,
        pg_acquire_timeout: Duration::from_secs(2),
        cache: turnstile_runtime::settings::CacheSettings {
            url: redis_url().into(),
        },
        redis_tls: turnstile_runtime::settings::RedisTlsSettings::default(),
        tls: turnstile_http::tls::TlsSettings::default(),
        kafka: ns.kafka(),
        worker_group_id: ns.group_id.clone(),
        max_inflight: 512,
        admission_limiter: claim_api::LimiterKind::Aimd,
        admission_slo: claim_api::DEFAULT_ADMISSION_SLO,
        admission_queue: 1024,
        admission_queue_wait: Duration::from_secs(1),
        ticket_keys: None,
        ticket_ttl: Duration::from_secs(120),
        pg_statement_timeout: Duration::from_secs(5),
        pg_lock_timeout: Duration::from_secs(2),
        outcome_deadline: Duration::from_secs(10),
        // The tests share one database, and some leave claims pending on
        // purpose: only a test about the backlog sets a bound.
        max_pending_claims: i64::MAX - 1,
        producer_linger: Duration::from_millis(5),
        max_body_bytes: 16 * 1024,
        header_read_timeout: Duration::from_secs(5),
        max_connections: 10_000,
        max_waiters: 10_000,
        // No buckets: one test client stands for many callers.
        callers: turnstile_http::CallerSettings::unlimited(Duration::from_secs(2)),
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// Settings for an in-process worker: metrics on port 0, the namespace.
pub fn worker_settings(ns: &Namespace) -> claim_worker::Settings {
    claim_worker::Settings {
        kafka: ns.kafka(),
        group_id: ns.group_id.clone(),
        database: turnstile_runtime::settings::DatabaseSettings {
            url: database_url().into(),
        },
        pg_pool: 8,
        cache: turnstile_runtime::settings::CacheSettings {
            url: redis_url().into(),
        },
        redis_tls: turnstile_runtime::settings::RedisTlsSettings::default(),
        lock_backend: claim_worker::LockBackendKind::Redis,
        lock_redis_url: None,
        redis_cluster_urls: Vec::new(),
        redlock_urls: Vec::new(),
        zookeeper_url: std::env::var("TURNSTILE_ZOOKEEPER_URL").unwrap_or_else(|_| "127.0.0.1:2181".to_owned()),
        zookeeper_session_timeout: Duration::from_secs(10),
        lock_ttl: Duration::from_secs(5),
        lock_wait: Duration::from_secs(5),
        batch_size: 500,
        batch_linger: Duration::ZERO,
        fetch_wait: Duration::from_millis(10),
        session_timeout: Duration::from_secs(6),
        sweep_after: Duration::from_secs(10),
        sweep_after_without_kafka: Duration::from_secs(1),
        sweep_interval: Duration::from_secs(2),
        audit_interval: Duration::from_secs(2),
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// [`worker_settings`] with a sweeper that decides claims pending 2 s,
/// looking every 250 ms: for tests of claims whose events never arrive.
pub fn quickly_sweeping_worker_settings(ns: &Namespace) -> claim_worker::Settings {
    claim_worker::Settings {
        sweep_after: Duration::from_secs(2),
        sweep_interval: Duration::from_millis(250),
        ..worker_settings(ns)
    }
}

/// A claim-worker running in this process.
#[derive(Debug)]
pub struct TestWorker {
    stop: CancellationToken,
    done: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl TestWorker {
    /// Builds and runs a worker with `settings`.
    pub async fn start(settings: claim_worker::Settings) -> Result<Self> {
        let worker = claim_worker::Worker::build(settings).await?;
        let stop = CancellationToken::new();
        let done = tokio::spawn(worker.run_until_stopped(stop.clone()));
        Ok(Self { stop, done: Some(done) })
    }

    /// Stops it as SIGTERM would: finish the batch, commit, leave the group.
    pub async fn stop(mut self) -> Result<()> {
        self.stop.cancel();
        match self.done.take() {
            Some(done) => done.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.stop.cancel();
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
