//! The baseline's settings: each one a flag and an environment variable,
//! read once at start-up; the names and meanings are claim-api's.
//! `sql-baseline --help` lists them with their defaults.

use std::{net::SocketAddr, time::Duration};

use turnstile_http::{CallerSettings, tls::TlsSettings};
use turnstile_runtime::settings::{DatabaseSettings, InvalidSetting, duration};

/// Everything the baseline needs to know. `main` parses it with
/// `turnstile_runtime::settings::parse`; tests build it directly.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sql-baseline")]
pub struct Settings {
    /// Where the baseline listens (port 0 picks a free one).
    #[arg(long, env = "TURNSTILE_HTTP_ADDR", default_value = "127.0.0.1:8090")]
    pub http_addr: SocketAddr,

    /// Where the claims database is.
    #[command(flatten)]
    pub database: DatabaseSettings,

    /// Connections, so at most this many claims are in a transaction at
    /// once. On a hot coupon all but one of them wait on the row lock, so
    /// more connections add waiting, not throughput: on two cores, 4, 8 and
    /// 16 all decide 320 to 380 claims/s at 2000/s offered, with the lowest
    /// latency at 8.
    #[arg(long, env = "TURNSTILE_PG_POOL", default_value_t = 8)]
    pub pg_pool: u32,

    /// How long a request waits for a connection before it is answered 503.
    #[arg(long, env = "TURNSTILE_PG_ACQUIRE_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub pg_acquire_timeout: Duration,

    /// The longest one statement may run (Postgres' statement_timeout).
    #[arg(long, env = "TURNSTILE_PG_STATEMENT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub pg_statement_timeout: Duration,

    /// The longest a statement waits for a row lock (Postgres'
    /// lock_timeout). On a hot coupon every claim queues for the row: with
    /// the pool's 8 transactions of a few milliseconds ahead, a wait of
    /// seconds means the database is stuck, not busy.
    #[arg(long, env = "TURNSTILE_PG_LOCK_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub pg_lock_timeout: Duration,

    /// How long a claim whose commit's answer was lost is retried to learn
    /// its outcome; past it the answer is 504 outcome-unknown.
    #[arg(long, env = "TURNSTILE_OUTCOME_DEADLINE", default_value = "10s", value_parser = duration)]
    pub outcome_deadline: Duration,

    /// Claims in progress at once; beyond that the service answers 429 at
    /// once. It keeps the pool's queue short: with thousands of requests
    /// queued on the pool, acquires that time out while connecting drop the
    /// fresh connection, and the pool thrashes instead of serving (seen here
    /// at 2000 claims/s: throughput fell to 0). 32 (four per connection)
    /// kept throughput and halved p99 against 64.
    #[arg(long, env = "TURNSTILE_MAX_INFLIGHT", default_value_t = 32)]
    pub max_inflight: usize,

    /// Larger request bodies are answered 413.
    #[arg(long, env = "TURNSTILE_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// API keys' reload, and each key's and each user's bucket.
    #[command(flatten)]
    pub callers: CallerSettings,

    /// TLS on the listener, and optionally mutual TLS.
    #[command(flatten)]
    pub tls: TlsSettings,
}

impl Settings {
    /// Checks the settings that have a floor or a ceiling; parsing checked
    /// each value alone.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (name, value) in [
            ("TURNSTILE_PG_POOL", self.pg_pool as usize),
            ("TURNSTILE_MAX_INFLIGHT", self.max_inflight),
        ] {
            if value == 0 {
                return Err(InvalidSetting::new(name, value, "must be at least 1"));
            }
        }
        for (name, value) in [
            ("TURNSTILE_PG_STATEMENT_TIMEOUT", self.pg_statement_timeout),
            ("TURNSTILE_PG_LOCK_TIMEOUT", self.pg_lock_timeout),
            ("TURNSTILE_OUTCOME_DEADLINE", self.outcome_deadline),
        ] {
            if value.is_zero() {
                return Err(InvalidSetting::duration(name, value, "must be above 0"));
            }
        }
        self.callers.validate()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Settings::command().debug_assert();
    }

    #[test]
    fn every_setting_has_a_variable_and_a_default() {
        let breaches =
            turnstile_runtime::settings::convention_breaches(&Settings::command(), &TlsSettings::WITHOUT_DEFAULT);
        assert!(breaches.is_empty(), "{breaches:?}");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let settings = Settings::try_parse_from([
            "sql-baseline",
            "--database-url",
            "postgres://turnstile:hunter2@db:5432/turnstile",
        ])
        .unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db:5432"), "where it connects still shows: {shown}");
    }
}
