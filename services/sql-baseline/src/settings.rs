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
    /// row lock, so more connections add waiting, not throughput; 16 keeps
    /// the lock's queue full on a 2-core machine without crowding Postgres.
    pub pg_pool: u32,
    /// `TURNSTILE_PG_ACQUIRE_TIMEOUT_MS`: how long a request waits for a
    /// connection before answering 503.
    pub pg_acquire_timeout: Duration,
    /// `TURNSTILE_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
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
            pg_pool: setting("TURNSTILE_PG_POOL", 16)?,
            pg_acquire_timeout: setting_millis("TURNSTILE_PG_ACQUIRE_TIMEOUT_MS", 1_000)?,
            max_body_bytes: setting("TURNSTILE_MAX_BODY_BYTES", 16 * 1024)?,
        };
        if settings.pg_pool == 0 {
            return Err(SettingError {
                name: "TURNSTILE_PG_POOL",
                value: "0".to_owned(),
                problem: "must be at least 1".to_owned(),
            });
        }
        Ok(settings)
    }
}
