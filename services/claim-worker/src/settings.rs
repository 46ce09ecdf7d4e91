//! The worker's configuration, read once from the environment.

use std::{net::SocketAddr, time::Duration};

use turnstile_bus::ConsumerTuning;
use turnstile_telemetry::{SettingError, setting, setting_millis, setting_millis_or};

/// Which lock store guards the resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockBackendKind {
    /// One Redis.
    Redis,
    /// Redlock over several Redis masters.
    Redlock,
    /// A lease table in the claims database.
    Postgres,
    /// Ephemeral sequential znodes in ZooKeeper.
    ZooKeeper,
}

impl std::str::FromStr for LockBackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redis" => Ok(Self::Redis),
            "redlock" => Ok(Self::Redlock),
            "postgres" => Ok(Self::Postgres),
            "zookeeper" => Ok(Self::ZooKeeper),
            other => Err(format!(
                "unknown lock backend {other:?} (expected redis, redlock, zookeeper or postgres)"
            )),
        }
    }
}

/// Everything the worker needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `KAFKA_BROKERS`.
    pub brokers: String,
    /// `TURNSTILE_KAFKA_IDEMPOTENCE`: the idempotent producer (off by
    /// default; see `turnstile_bus::producer`).
    pub kafka_idempotence: bool,
    /// `TURNSTILE_TOPIC_PREFIX`: prefix of the topic names.
    pub topic_prefix: String,
    /// `TURNSTILE_GROUP_ID`: the consumer group.
    pub group_id: String,
    /// `TURNSTILE_PARTITIONS`: partitions of topics this worker creates.
    pub partitions: i32,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `TURNSTILE_PG_POOL`: connections.
    pub pg_pool: u32,
    /// `REDIS_URL`: the resource cache (and the lock, unless `LOCK_REDIS_URL`).
    pub redis_url: String,
    /// `LOCK_BACKEND`: `redis`, `redlock`, `zookeeper` or `postgres`.
    pub lock_backend: LockBackendKind,
    /// `LOCK_REDIS_URL`: the lock's Redis.
    pub lock_redis_url: String,
    /// `REDLOCK_URLS`: comma-separated masters.
    pub redlock_urls: Vec<String>,
    /// `ZOOKEEPER_URL`: `host:port[,host:port...]` of the ensemble.
    pub zookeeper_url: String,
    /// `ZOOKEEPER_SESSION_TIMEOUT_MS`: bounds the lock ttl with that backend.
    pub zookeeper_session_timeout: Duration,
    /// `TURNSTILE_LOCK_TTL_MS`.
    pub lock_ttl: Duration,
    /// `TURNSTILE_LOCK_WAIT_MS`.
    pub lock_wait: Duration,
    /// `TURNSTILE_BATCH_SIZE`: most messages per batch.
    pub batch_size: usize,
    /// `TURNSTILE_BATCH_LINGER_MS`: how long a batch waits to fill after its
    /// first message. 0 (the default) takes what is already buffered: under
    /// load, messages gather while the previous batch is decided, so batches
    /// grow by themselves and no claim waits for a timer.
    pub batch_linger: Duration,
    /// `TURNSTILE_FETCH_WAIT_MS`: librdkafka's `fetch.wait.max.ms`.
    pub fetch_wait: Duration,
    /// `TURNSTILE_SESSION_TIMEOUT_MS`: Kafka group session.
    pub session_timeout: Duration,
    /// `TURNSTILE_SWEEP_AFTER_MS`: a claim pending this long is re-decided
    /// from the database (its message was lost or skipped).
    pub sweep_after: Duration,
    /// `TURNSTILE_SWEEP_INTERVAL_MS`: how often to look for such claims.
    pub sweep_interval: Duration,
    /// `TURNSTILE_AUDIT_INTERVAL_MS`: how often the oversold audit recounts.
    pub audit_interval: Duration,
    /// `TURNSTILE_METRICS_ADDR`: where `/metrics` and `/healthz` listen.
    pub metrics_addr: SocketAddr,
}

impl Settings {
    /// Reads and validates every setting.
    pub fn from_env() -> Result<Self, SettingError> {
        let redis_url: String = setting("REDIS_URL", "redis://127.0.0.1:6379".to_owned())?;
        let redlock: String = setting(
            "REDLOCK_URLS",
            "redis://127.0.0.1:6391,redis://127.0.0.1:6392,redis://127.0.0.1:6393".to_owned(),
        )?;
        let settings = Self {
            brokers: setting("KAFKA_BROKERS", "127.0.0.1:9092".to_owned())?,
            kafka_idempotence: setting("TURNSTILE_KAFKA_IDEMPOTENCE", false)?,
            topic_prefix: setting("TURNSTILE_TOPIC_PREFIX", String::new())?,
            group_id: setting("TURNSTILE_GROUP_ID", "claim-workers".to_owned())?,
            partitions: setting("TURNSTILE_PARTITIONS", 6)?,
            database_url: setting(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/turnstile".to_owned(),
            )?,
            pg_pool: setting("TURNSTILE_PG_POOL", 8)?,
            lock_redis_url: setting("LOCK_REDIS_URL", redis_url.clone())?,
            redis_url,
            lock_backend: setting("LOCK_BACKEND", LockBackendKind::Redis)?,
            redlock_urls: redlock
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            zookeeper_url: setting("ZOOKEEPER_URL", "127.0.0.1:2181".to_owned())?,
            zookeeper_session_timeout: setting_millis("ZOOKEEPER_SESSION_TIMEOUT_MS", 10_000)?,
            lock_ttl: setting_millis("TURNSTILE_LOCK_TTL_MS", 5_000)?,
            lock_wait: setting_millis("TURNSTILE_LOCK_WAIT_MS", 5_000)?,
            batch_size: setting("TURNSTILE_BATCH_SIZE", 500)?,
            batch_linger: setting_millis("TURNSTILE_BATCH_LINGER_MS", 0)?,
            fetch_wait: setting_millis_or("TURNSTILE_FETCH_WAIT_MS", ConsumerTuning::default().fetch_wait)?,
            session_timeout: setting_millis("TURNSTILE_SESSION_TIMEOUT_MS", 10_000)?,
            sweep_after: setting_millis("TURNSTILE_SWEEP_AFTER_MS", 10_000)?,
            sweep_interval: setting_millis("TURNSTILE_SWEEP_INTERVAL_MS", 2_000)?,
            audit_interval: setting_millis("TURNSTILE_AUDIT_INTERVAL_MS", 15_000)?,
            metrics_addr: setting("TURNSTILE_METRICS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9101)))?,
        };
        let invalid = |name: &'static str, value: String, problem: &str| SettingError {
            name,
            value,
            problem: problem.to_owned(),
        };
        if settings.batch_size == 0 {
            return Err(invalid("TURNSTILE_BATCH_SIZE", "0".into(), "must be at least 1"));
        }
        if settings.lock_ttl < Duration::from_millis(100) {
            return Err(invalid(
                "TURNSTILE_LOCK_TTL_MS",
                settings.lock_ttl.as_millis().to_string(),
                "must be at least 100",
            ));
        }
        if settings.lock_backend == LockBackendKind::ZooKeeper && settings.lock_ttl > settings.zookeeper_session_timeout
        {
            return Err(invalid(
                "TURNSTILE_LOCK_TTL_MS",
                settings.lock_ttl.as_millis().to_string(),
                "must not exceed ZOOKEEPER_SESSION_TIMEOUT_MS: a ZooKeeper lease cannot outlive its session",
            ));
        }
        if settings.audit_interval.is_zero() {
            return Err(invalid("TURNSTILE_AUDIT_INTERVAL_MS", "0".into(), "must be at least 1"));
        }
        if settings.sweep_interval.is_zero() {
            return Err(invalid("TURNSTILE_SWEEP_INTERVAL_MS", "0".into(), "must be at least 1"));
        }
        if settings.partitions < 1 {
            return Err(invalid(
                "TURNSTILE_PARTITIONS",
                settings.partitions.to_string(),
                "must be at least 1",
            ));
        }
        Ok(settings)
    }
}
