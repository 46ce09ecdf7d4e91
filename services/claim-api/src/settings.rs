//! The API's settings: each one a flag and an environment variable, read
//! once at start-up. `claim-api --help` lists them with their defaults.

use std::{net::SocketAddr, time::Duration};

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use turnstile_bus::KafkaSettings;
use turnstile_http::{CallerSettings, tls::TlsSettings};
use turnstile_runtime::{
    secret::ConnectionUrl,
    settings::{CacheSettings, DatabaseSettings, InvalidSetting, RedisTlsSettings, duration},
};

use crate::{admission::LimiterKind, ticket::TicketKeys};

/// Parses `TURNSTILE_TICKET_KEYS`; the error never quotes a secret.
fn parse_ticket_keys(raw: &str) -> Result<TicketKeys, String> {
    TicketKeys::parse(raw).map_err(|e| e.to_string())
}

/// Everything the API needs to know. `main` parses it with
/// `turnstile_runtime::settings::parse`; tests build it directly.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "claim-api")]
pub struct Settings {
    /// Where the API listens (port 0 picks a free one).
    #[arg(long, env = "TURNSTILE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// The operator listener (/metrics, /readyz, /healthz), on loopback
    /// unless configured otherwise: it is not for the API's callers.
    #[arg(long, env = "TURNSTILE_METRICS_ADDR", default_value = "127.0.0.1:9100")]
    pub metrics_addr: SocketAddr,

    /// Where the claims database is.
    #[command(flatten)]
    pub database: DatabaseSettings,

    /// A read replica of that database for the API's reads (claims,
    /// coupons, SKUs). A row the replica lacks, and any read it cannot
    /// answer, is read from the primary. Unset: reads go to the primary.
    #[arg(long, env = "TURNSTILE_DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<ConnectionUrl>,

    /// Connections for accepting claims and creating resources.
    #[arg(long, env = "TURNSTILE_PG_WRITE_POOL", default_value_t = 8)]
    pub pg_write_pool: u32,

    /// Group-commit statements open at once, at least 1 and below the write
    /// pool. Few is the point: while they are busy, arriving claims gather
    /// into the next batch, so a busier API writes bigger batches, not more
    /// of them; and one write connection stays free for everything else.
    #[arg(long, env = "TURNSTILE_ACCEPT_BATCHES", default_value_t = 4)]
    pub accept_batches: u32,

    /// Connections for reads, apart from the accept path so that slow reads
    /// cannot starve it (and the other way round).
    #[arg(long, env = "TURNSTILE_PG_READ_POOL", default_value_t = 8)]
    pub pg_read_pool: u32,

    /// How long a request waits for a database connection before it is
    /// answered 503.
    #[arg(long, env = "TURNSTILE_PG_ACQUIRE_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub pg_acquire_timeout: Duration,

    /// The longest one statement may run on the API's connections
    /// (Postgres' statement_timeout). A group commit takes milliseconds;
    /// one that takes seconds meets a frozen or overloaded database, and
    /// is better retried (or answered) than left holding its connection.
    #[arg(long, env = "TURNSTILE_PG_STATEMENT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub pg_statement_timeout: Duration,

    /// The longest a statement waits for a row lock (Postgres'
    /// lock_timeout): a group commit waits for a concurrent copy of one of
    /// its keys, which commits in milliseconds.
    #[arg(long, env = "TURNSTILE_PG_LOCK_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub pg_lock_timeout: Duration,

    /// How long a commit whose answer was lost (Postgres restarting, a
    /// network fault) is retried to learn its outcome; past it the claim is
    /// answered 504 outcome-unknown. Below the 15 s request deadline, so
    /// the answer still arrives.
    #[arg(long, env = "TURNSTILE_OUTCOME_DEADLINE", default_value = "10s", value_parser = duration)]
    pub outcome_deadline: Duration,

    /// Where the stock cache is.
    #[command(flatten)]
    pub cache: CacheSettings,

    /// TLS for the cache's rediss:// URL.
    #[command(flatten)]
    pub redis_tls: RedisTlsSettings,

    /// TLS on the listeners, and optionally mutual TLS on the public one.
    #[command(flatten)]
    pub tls: TlsSettings,

    /// The cluster, the producer, the topics' names and layout, and any
    /// librdkafka property.
    #[command(flatten)]
    pub kafka: KafkaSettings,

    /// The workers' consumer group, whose lag the API reports.
    #[arg(
        long = "group-id",
        value_name = "GROUP_ID",
        env = "TURNSTILE_GROUP_ID",
        default_value = "claim-workers"
    )]
    pub worker_group_id: String,

    /// The most claims admitted at once: the adaptive limit's ceiling;
    /// past the limit a claim is answered 429.
    #[arg(long, env = "TURNSTILE_MAX_INFLIGHT", default_value_t = 256)]
    pub max_inflight: usize,

    /// Claims waiting for an admission slot at most. A freed slot goes to
    /// the waiter with the oldest first attempt (a ticket's, or its
    /// arrival); past this many waiters a claim is answered 429 with a
    /// ticket.
    #[arg(long, env = "TURNSTILE_ADMISSION_QUEUE", default_value_t = 1024)]
    pub admission_queue: usize,

    /// The longest a claim waits in that queue before it is answered 429
    /// with a ticket.
    #[arg(long, env = "TURNSTILE_ADMISSION_QUEUE_WAIT", default_value = "1s", value_parser = duration)]
    pub admission_queue_wait: Duration,

    /// Keys that sign the tickets of 429s, `id=secret,...` (secrets of 16
    /// to 256 bytes): the first signs, every one verifies. Rotate by putting
    /// a new key first and dropping the old one a ticket TTL later. Unset,
    /// a random key known to this process alone: replicas behind one
    /// balancer need the same keys.
    #[arg(long, env = "TURNSTILE_TICKET_KEYS", hide_env_values = true, value_parser = parse_ticket_keys)]
    pub ticket_keys: Option<TicketKeys>,

    /// How long a ticket keeps its holder's place, from the first attempt.
    #[arg(long, env = "TURNSTILE_TICKET_TTL", default_value = "2m", value_parser = duration)]
    pub ticket_ttl: Duration,

    /// How the admission limit adapts: aimd to a latency objective,
    /// gradient to latency rising.
    #[arg(
        long,
        env = "TURNSTILE_ADMISSION_LIMITER",
        default_value = "aimd",
        value_parser = PossibleValuesParser::new(["aimd", "gradient"]).try_map(|kind| kind.parse::<LimiterKind>())
    )]
    pub admission_limiter: LimiterKind,

    /// For the aimd limiter: an admission slower than this counts as
    /// congestion and cuts the limit by 10%.
    #[arg(long, env = "TURNSTILE_ADMISSION_SLO", default_value = "100ms", value_parser = duration)]
    pub admission_slo: Duration,

    /// Claims recorded and not yet decided, in the database, past which new
    /// claims are answered 429 (`pending_backlog`); 0 refuses every claim.
    /// The backlog is what a claim queues behind, whatever Kafka does:
    /// while the broker is down the sweeper decides it, and 1 000 decided
    /// a second (the target on 2 cores) clears 20 000 in 20 s, within the
    /// 30 s a claim may wait after the broker is back. In normal operation
    /// the backlog is the claims in flight, a few hundred at 5 000/s.
    #[arg(long, env = "TURNSTILE_MAX_PENDING_CLAIMS", default_value_t = 20_000)]
    pub max_pending_claims: i64,

    /// How long the producer gathers events into one request (librdkafka's
    /// linger.ms). Fewer, larger requests cost the broker less per event;
    /// every accepted claim waits up to this long for Kafka's acknowledgement.
    #[arg(long, env = "TURNSTILE_PRODUCER_LINGER", default_value = "5ms", value_parser = duration)]
    pub producer_linger: Duration,

    /// Larger request bodies are answered 413.
    #[arg(long, env = "TURNSTILE_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// A request's head (or the next one on an idle connection) must arrive
    /// within this, or the connection is closed: slow clients cannot hold
    /// connections open.
    #[arg(long, env = "TURNSTILE_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub header_read_timeout: Duration,

    /// Open connections at most; past it new ones wait in the kernel's
    /// accept queue.
    #[arg(long, env = "TURNSTILE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Requests waiting for a decision (Prefer: wait) at most; past it a
    /// claim is answered 202 at once.
    #[arg(long, env = "TURNSTILE_MAX_WAITERS", default_value_t = 10_000)]
    pub max_waiters: usize,

    /// API keys' reload, and each key's and each user's bucket.
    #[command(flatten)]
    pub callers: CallerSettings,
}

impl Settings {
    /// Checks the settings that depend on each other or have a floor;
    /// parsing checked each value alone.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.accept_batches == 0 || self.accept_batches >= self.pg_write_pool {
            return Err(InvalidSetting::new(
                "TURNSTILE_ACCEPT_BATCHES",
                self.accept_batches,
                format!(
                    "must be at least 1 and below TURNSTILE_PG_WRITE_POOL ({})",
                    self.pg_write_pool
                ),
            ));
        }
        for (name, value) in [
            ("TURNSTILE_PG_READ_POOL", self.pg_read_pool as usize),
            ("TURNSTILE_MAX_INFLIGHT", self.max_inflight),
            ("TURNSTILE_MAX_CONNECTIONS", self.max_connections),
        ] {
            if value == 0 {
                return Err(InvalidSetting::new(name, value, "must be at least 1"));
            }
        }
        if let Err((name, value, problem)) = self.kafka.check() {
            return Err(InvalidSetting::new(name, value, problem));
        }
        for (name, value) in [
            ("TURNSTILE_ADMISSION_SLO", self.admission_slo),
            ("TURNSTILE_ADMISSION_QUEUE_WAIT", self.admission_queue_wait),
            ("TURNSTILE_TICKET_TTL", self.ticket_ttl),
            ("TURNSTILE_HEADER_READ_TIMEOUT", self.header_read_timeout),
            ("TURNSTILE_PG_STATEMENT_TIMEOUT", self.pg_statement_timeout),
            ("TURNSTILE_PG_LOCK_TIMEOUT", self.pg_lock_timeout),
        ] {
            if value.is_zero() {
                return Err(InvalidSetting::duration(name, value, "must be above 0"));
            }
        }
        if self.outcome_deadline.is_zero() || self.outcome_deadline >= crate::app::REQUEST_TIMEOUT {
            return Err(InvalidSetting::duration(
                "TURNSTILE_OUTCOME_DEADLINE",
                self.outcome_deadline,
                "must be above 0 and below the 15s request deadline",
            ));
        }
        if self.max_pending_claims < 0 {
            return Err(InvalidSetting::new(
                "TURNSTILE_MAX_PENDING_CLAIMS",
                self.max_pending_claims,
                "must be at least 0",
            ));
        }
        self.callers.validate()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    /// The default of the setting in field `id`, as a duration.
    fn default_duration(id: &str) -> Duration {
        let command = Settings::command();
        let arg = command.get_arguments().find(|arg| arg.get_id() == id).unwrap();
        duration(arg.get_default_values()[0].to_str().unwrap()).unwrap()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Settings::command().debug_assert();
    }

    #[test]
    fn every_setting_has_a_variable_and_a_default() {
        // Unset, a read replica is not used: there is no default replica;
        // unset, tickets are signed with a key drawn at start-up.
        let breaches = turnstile_runtime::settings::convention_breaches(
            &Settings::command(),
            &[
                &["TURNSTILE_DATABASE_READ_URL", "TURNSTILE_TICKET_KEYS"][..],
                &RedisTlsSettings::WITHOUT_DEFAULT,
                &TlsSettings::WITHOUT_DEFAULT,
            ]
            .concat(),
        );
        assert!(breaches.is_empty(), "{breaches:?}");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let mut settings = Settings::try_parse_from([
            "claim-api",
            "--database-url",
            "postgres://turnstile:hunter2@db:5432/turnstile",
            "--database-read-url",
            "postgres://reader:hunter2@replica:5432/turnstile?sslpassword=hunter2",
            "--redis-url",
            "rediss://:hunter2@cache:6380",
            "--ticket-keys",
            "k1=hunter2-hunter2-hunter2",
            "--redis-tls-cert",
            "/etc/turnstile/redis.pem",
            "--redis-tls-key",
            "/secrets/hunter2.key",
            "--tls-cert",
            "/etc/turnstile/api.pem",
            "--tls-key",
            "/secrets/hunter2-api.key",
        ])
        .unwrap();
        settings
            .kafka
            .read_properties([("TURNSTILE_KAFKA_SASL_PASSWORD".to_owned(), "hunter2".to_owned())])
            .unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db:5432"), "where it connects still shows: {shown}");
    }

    #[test]
    fn defaults_are_the_tuned_constants() {
        assert_eq!(default_duration("admission_slo"), crate::DEFAULT_ADMISSION_SLO);
        assert_eq!(
            default_duration("producer_linger"),
            turnstile_bus::ProducerTuning::default().linger
        );
    }

    #[test]
    fn rules_between_settings_name_the_variable() {
        let mut settings = Settings::try_parse_from(["claim-api", "--key-refresh", "2s"]).unwrap();
        settings.accept_batches = 4;
        settings.pg_write_pool = 8;
        assert!(settings.validate().is_ok(), "{:?}", settings.validate());
        settings.callers.key_refresh = Duration::from_secs(6);
        let error = settings.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "TURNSTILE_KEY_REFRESH=6s is invalid: must be above 0 and at most 5s"
        );
        settings.callers.key_refresh = Duration::from_secs(2);
        settings.kafka.partitions = -1;
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "TURNSTILE_PARTITIONS=-1 is invalid: must be at least 1"
        );
    }
}
