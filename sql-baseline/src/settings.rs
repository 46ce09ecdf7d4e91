//! The baseline's configuration, read once from the environment.

use std::{net::SocketAddr, time::Duration};

use turnstile_telemetry::{SettingError, setting, setting_millis};

/// Everything the baseline needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `TURNSTILE_HTTP_ADDR`: where to listen (port 0 picks a free one).
    pub http_addr: SocketAddr,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `TURNSTILE_PG_POOL`: connections, so at most this many claims are in
    /// a transaction at once. On a hot coupon all but one of them wait on the
    /// row lock, so more connections add waiting, not throughput: on the
    /// 2-core machine 4, 8 and 16 all decided 320 to 380 claims/s at
    /// 2000/s offered, with the lowest latency at 8.
    pub pg_pool: u32,
    /// `TURNSTILE_PG_ACQUIRE_TIMEOUT_MS`: how long a request waits for a
    /// connection before answering 503.
    pub pg_acquire_timeout: Duration,
    /// `TURNSTILE_MAX_INFLIGHT`: claims in progress at once; beyond that the
    /// service answers 429 at once. It keeps the pool's queue short: with
    /// thousands of requests queued on the pool, acquires that time out
    /// while connecting drop the fresh connection, and the pool thrashes
    /// instead of serving (seen here at 2000 claims/s: throughput fell to 0).
    /// 32 (four per connection) kept throughput and halved p99 against 64.
    pub max_inflight: usize,
    /// `TURNSTILE_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `TURNSTILE_KEY_REFRESH_MS`, `TURNSTILE_KEY_RATE`, `TURNSTILE_KEY_BURST`,
    /// `TURNSTILE_USER_RATE`, `TURNSTILE_USER_BURST`: API keys and the
    /// per-caller buckets, as in claim-api.
    pub key_refresh: Duration,
    /// Each key's bucket.
    pub key_rate: turnstile_http::auth::RateLimit,
    /// Each user's bucket.
    pub user_rate: turnstile_http::auth::RateLimit,
}

impl Settings {
    /// Reads and validates every setting.
    pub fn from_env() -> Result<Self, SettingError> {
        let settings = Self {
            http_addr: setting("TURNSTILE_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8090)))?,
            database_url: setting(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/turnstile".to_owned(),
            )?,
            pg_pool: setting("TURNSTILE_PG_POOL", 8)?,
            pg_acquire_timeout: setting_millis("TURNSTILE_PG_ACQUIRE_TIMEOUT_MS", 1_000)?,
            max_inflight: setting("TURNSTILE_MAX_INFLIGHT", 32)?,
            max_body_bytes: setting("TURNSTILE_MAX_BODY_BYTES", 16 * 1024)?,
            key_refresh: turnstile_telemetry::setting_millis("TURNSTILE_KEY_REFRESH_MS", 2_000)?
                .min(turnstile_http::auth::MAX_KEY_REFRESH),
            key_rate: turnstile_http::auth::RateLimit {
                per_second: setting("TURNSTILE_KEY_RATE", 20_000)?,
                burst: setting("TURNSTILE_KEY_BURST", 2_000)?,
            },
            user_rate: turnstile_http::auth::RateLimit {
                per_second: setting("TURNSTILE_USER_RATE", 5)?,
                burst: setting("TURNSTILE_USER_BURST", 10)?,
            },
        };
        for (name, value) in [
            ("TURNSTILE_PG_POOL", settings.pg_pool as usize),
            ("TURNSTILE_MAX_INFLIGHT", settings.max_inflight),
        ] {
            if value == 0 {
                return Err(SettingError {
                    name,
                    value: "0".to_owned(),
                    problem: "must be at least 1".to_owned(),
                });
            }
        }
        Ok(settings)
    }
}
