//! The API's configuration, read once from the environment.

use std::{net::SocketAddr, time::Duration};

use turnstile_bus::ProducerTuning;

use crate::admission::LimiterKind;
use turnstile_http::auth::RateLimit;
use turnstile_telemetry::{SettingError, setting, setting_millis, setting_millis_or};

/// Everything the API needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `TURNSTILE_HTTP_ADDR`: where to listen (port 0 picks a free one).
    pub http_addr: SocketAddr,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `TURNSTILE_PG_WRITE_POOL`: connections for accepting claims.
    pub pg_write_pool: u32,
    /// `TURNSTILE_ACCEPT_BATCHES`: group-commit transactions open at once.
    /// Few is the point: while they are busy, arriving claims gather into
    /// the next batch, so a busier API writes bigger batches, not more of
    /// them. Must leave a write connection for everything else.
    pub accept_batches: u32,
    /// `TURNSTILE_PG_READ_POOL`: connections for reads, kept apart so that
    /// slow reads cannot starve the accept path (and the other way round).
    pub pg_read_pool: u32,
    /// `TURNSTILE_PG_ACQUIRE_TIMEOUT_MS`: how long to wait for a connection
    /// before answering 503.
    pub pg_acquire_timeout: Duration,
    /// `REDIS_URL`: the resource cache.
    pub redis_url: String,
    /// `KAFKA_BROKERS`.
    pub brokers: String,
    /// `TURNSTILE_TOPIC_PREFIX`.
    pub topic_prefix: String,
    /// `TURNSTILE_PARTITIONS`: partitions of topics the API creates.
    pub partitions: i32,
    /// `TURNSTILE_GROUP_ID`: the workers' group, whose lag is watched.
    pub worker_group_id: String,
    /// `TURNSTILE_MAX_INFLIGHT`: claims in progress at once before 429.
    pub max_inflight: usize,
    /// `TURNSTILE_ADMISSION_LIMITER`: `aimd` (default) or `gradient`, the algorithm
    /// that adapts how many claims are admitted at once.
    pub admission_limiter: LimiterKind,
    /// `TURNSTILE_ADMISSION_SLO_MS`: for the `aimd` limiter, an admission
    /// slower than this counts as congestion and lowers the limit.
    pub admission_slo: Duration,
    /// `TURNSTILE_PRODUCER_QUEUE_LIMIT`: unacknowledged Kafka messages before 429.
    pub producer_queue_limit: i32,
    /// `TURNSTILE_PRODUCER_LINGER_MS`: how long the producer gathers events
    /// into one request (librdkafka `linger.ms`). Fewer, larger requests
    /// cost the broker less per event; every accepted claim waits up to this
    /// long for Kafka's acknowledgement. The default is [`ProducerTuning`]'s.
    pub producer_linger: Duration,
    /// `TURNSTILE_KAFKA_IDEMPOTENCE`: the idempotent producer (off by
    /// default; see `turnstile_bus::producer`).
    pub kafka_idempotence: bool,
    /// `TURNSTILE_MAX_CONSUMER_LAG`: undecided claims in Kafka before 429 (0: off).
    pub max_consumer_lag: i64,
    /// `TURNSTILE_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `TURNSTILE_HEADER_READ_TIMEOUT_MS`: how long a request's head may
    /// take to arrive before the connection is closed.
    pub header_read_timeout: Duration,
    /// `TURNSTILE_MAX_CONNECTIONS`: open connections at most; past it new
    /// ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// `TURNSTILE_MAX_WAITERS`: requests waiting for a decision
    /// (`Prefer: wait`) at most; past it a claim is answered `202` at once.
    pub max_waiters: usize,
    /// `TURNSTILE_KEY_REFRESH_MS`: how often the API keys in force are
    /// reloaded, at most 5 000: a revoked key works at most this long.
    pub key_refresh: Duration,
    /// `TURNSTILE_KEY_RATE` and `TURNSTILE_KEY_BURST`: each API key's
    /// requests per second and burst (rate 0: unlimited).
    pub key_rate: RateLimit,
    /// `TURNSTILE_USER_RATE` and `TURNSTILE_USER_BURST`: each user's
    /// claims per second and burst, per tenant (rate 0: unlimited).
    pub user_rate: RateLimit,
    /// `TURNSTILE_METRICS_ADDR`: the operator listener (`/metrics`,
    /// `/readyz`, `/healthz`), on loopback unless configured otherwise.
    pub metrics_addr: SocketAddr,
}

impl Settings {
    /// Reads and validates every setting.
    pub fn from_env() -> Result<Self, SettingError> {
        let settings = Self {
            http_addr: setting("TURNSTILE_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            database_url: setting(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/turnstile".to_owned(),
            )?,
            pg_write_pool: setting("TURNSTILE_PG_WRITE_POOL", 8)?,
            accept_batches: setting("TURNSTILE_ACCEPT_BATCHES", 4)?,
            pg_read_pool: setting("TURNSTILE_PG_READ_POOL", 8)?,
            pg_acquire_timeout: setting_millis("TURNSTILE_PG_ACQUIRE_TIMEOUT_MS", 1_000)?,
            redis_url: setting("REDIS_URL", "redis://127.0.0.1:6379".to_owned())?,
            brokers: setting("KAFKA_BROKERS", "127.0.0.1:9092".to_owned())?,
            topic_prefix: setting("TURNSTILE_TOPIC_PREFIX", String::new())?,
            partitions: setting("TURNSTILE_PARTITIONS", 6)?,
            worker_group_id: setting("TURNSTILE_GROUP_ID", "claim-workers".to_owned())?,
            max_inflight: setting("TURNSTILE_MAX_INFLIGHT", 256)?,
            admission_limiter: setting("TURNSTILE_ADMISSION_LIMITER", LimiterKind::Aimd)?,
            admission_slo: setting_millis_or("TURNSTILE_ADMISSION_SLO_MS", crate::DEFAULT_ADMISSION_SLO)?,
            producer_queue_limit: setting("TURNSTILE_PRODUCER_QUEUE_LIMIT", 5_000)?,
            producer_linger: setting_millis_or("TURNSTILE_PRODUCER_LINGER_MS", ProducerTuning::default().linger)?,
            kafka_idempotence: setting("TURNSTILE_KAFKA_IDEMPOTENCE", false)?,
            max_consumer_lag: setting("TURNSTILE_MAX_CONSUMER_LAG", 50_000)?,
            max_body_bytes: setting("TURNSTILE_MAX_BODY_BYTES", 16 * 1024)?,
            header_read_timeout: setting_millis("TURNSTILE_HEADER_READ_TIMEOUT_MS", 5_000)?,
            max_connections: setting("TURNSTILE_MAX_CONNECTIONS", 10_000)?,
            max_waiters: setting("TURNSTILE_MAX_WAITERS", 10_000)?,
            key_refresh: setting_millis("TURNSTILE_KEY_REFRESH_MS", 2_000)?,
            key_rate: RateLimit {
                per_second: setting("TURNSTILE_KEY_RATE", 20_000)?,
                burst: setting("TURNSTILE_KEY_BURST", 2_000)?,
            },
            user_rate: RateLimit {
                per_second: setting("TURNSTILE_USER_RATE", 5)?,
                burst: setting("TURNSTILE_USER_BURST", 10)?,
            },
            metrics_addr: setting("TURNSTILE_METRICS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9100)))?,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the settings that depend on each other or have a floor.
    pub fn validate(&self) -> Result<(), SettingError> {
        if self.accept_batches == 0 || self.accept_batches >= self.pg_write_pool {
            return Err(SettingError {
                name: "TURNSTILE_ACCEPT_BATCHES",
                value: self.accept_batches.to_string(),
                problem: format!(
                    "must be at least 1 and below TURNSTILE_PG_WRITE_POOL ({})",
                    self.pg_write_pool
                ),
            });
        }
        if self.admission_slo.is_zero() {
            return Err(SettingError {
                name: "TURNSTILE_ADMISSION_SLO_MS",
                value: "0".to_owned(),
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.header_read_timeout.is_zero() {
            return Err(SettingError {
                name: "TURNSTILE_HEADER_READ_TIMEOUT_MS",
                value: "0".to_owned(),
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.max_connections == 0 {
            return Err(SettingError {
                name: "TURNSTILE_MAX_CONNECTIONS",
                value: "0".to_owned(),
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.key_refresh.is_zero() || self.key_refresh > turnstile_http::auth::MAX_KEY_REFRESH {
            return Err(SettingError {
                name: "TURNSTILE_KEY_REFRESH_MS",
                value: self.key_refresh.as_millis().to_string(),
                problem: "must be from 1 to 5000".to_owned(),
            });
        }
        if self.max_inflight == 0 {
            return Err(SettingError {
                name: "TURNSTILE_MAX_INFLIGHT",
                value: "0".to_owned(),
                problem: "must be at least 1".to_owned(),
            });
        }
        Ok(())
    }
}
