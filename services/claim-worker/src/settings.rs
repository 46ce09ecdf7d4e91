//! The worker's settings: each one a flag and an environment variable, read
//! once at start-up. `claim-worker --help` lists them with their defaults.

use std::{net::SocketAddr, time::Duration};

use turnstile_bus::KafkaSettings;
use turnstile_runtime::{
    secret::ConnectionUrl,
    settings::{CacheSettings, DatabaseSettings, InvalidSetting, RedisTlsSettings, duration, show_duration},
};

/// Which lock store guards the resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LockBackendKind {
    /// One Redis.
    Redis,
    /// A Redis Cluster, each resource on the master owning its slot.
    #[value(name = "redis-cluster")]
    RedisCluster,
    /// Redlock over several Redis masters.
    Redlock,
    /// A lease table in the claims database.
    Postgres,
    /// Ephemeral sequential znodes in ZooKeeper.
    #[value(name = "zookeeper")]
    ZooKeeper,
}

/// The shortest lease: below it, renewing every third of the ttl is more
/// traffic to the lock store than work.
const MIN_LOCK_TTL: Duration = Duration::from_millis(100);

/// Everything the worker needs to know. `main` parses it with
/// `turnstile_runtime::settings::parse`; tests build it directly.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "claim-worker")]
pub struct Settings {
    /// Where /metrics and /healthz listen.
    #[arg(long, env = "TURNSTILE_METRICS_ADDR", default_value = "127.0.0.1:9101")]
    pub metrics_addr: SocketAddr,

    /// Where the claims database is.
    #[command(flatten)]
    pub database: DatabaseSettings,

    /// Database connections.
    #[arg(long, env = "TURNSTILE_PG_POOL", default_value_t = 8)]
    pub pg_pool: u32,

    /// Where the stock cache is.
    #[command(flatten)]
    pub cache: CacheSettings,

    /// TLS for every rediss:// URL: the cache's and the lock's.
    #[command(flatten)]
    pub redis_tls: RedisTlsSettings,

    /// The cluster, the producer, the topics' names and layout, and any
    /// librdkafka property.
    #[command(flatten)]
    pub kafka: KafkaSettings,

    /// The consumer group: workers in one group share the partitions.
    #[arg(long, env = "TURNSTILE_GROUP_ID", default_value = "claim-workers")]
    pub group_id: String,

    /// How long the group waits for a silent worker before moving its
    /// partitions to the others.
    #[arg(long, env = "TURNSTILE_SESSION_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub session_timeout: Duration,

    /// librdkafka's fetch.wait.max.ms: how long the broker may hold a fetch
    /// while it has nothing new.
    #[arg(long, env = "TURNSTILE_FETCH_WAIT", default_value = "10ms", value_parser = duration)]
    pub fetch_wait: Duration,

    /// The most messages decided in one batch.
    #[arg(long, env = "TURNSTILE_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,

    /// How long a batch waits to fill after its first message. 0 takes what
    /// is already buffered: under load, messages gather while the previous
    /// batch is decided, so batches grow by themselves and no claim waits
    /// for a timer.
    #[arg(long, env = "TURNSTILE_BATCH_LINGER", default_value = "0s", value_parser = duration)]
    pub batch_linger: Duration,

    /// The lock store.
    #[arg(long, env = "TURNSTILE_LOCK_BACKEND", value_enum, default_value_t = LockBackendKind::Redis)]
    pub lock_backend: LockBackendKind,

    /// The lock's Redis, with the redis backend [default: TURNSTILE_REDIS_URL]
    #[arg(long, env = "TURNSTILE_LOCK_REDIS_URL", hide_env_values = true)]
    pub lock_redis_url: Option<ConnectionUrl>,

    /// Seed nodes of the Redis Cluster, comma-separated, with the
    /// redis-cluster backend: one that answers is enough to learn the rest.
    #[arg(
        long,
        env = "TURNSTILE_REDIS_CLUSTER_URLS",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003",
        hide_env_values = true
    )]
    pub redis_cluster_urls: Vec<ConnectionUrl>,

    /// The independent Redis masters, comma-separated, with the redlock
    /// backend.
    #[arg(
        long,
        env = "TURNSTILE_REDLOCK_URLS",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6391,redis://127.0.0.1:6392,redis://127.0.0.1:6393",
        hide_env_values = true
    )]
    pub redlock_urls: Vec<ConnectionUrl>,

    /// The ZooKeeper ensemble, host:port[,host:port...], with the zookeeper
    /// backend.
    #[arg(long, env = "TURNSTILE_ZOOKEEPER_URL", default_value = "127.0.0.1:2181")]
    pub zookeeper_url: String,

    /// With the zookeeper backend, a dead holder's lease passes on after
    /// this; the lock ttl may not exceed it.
    #[arg(long, env = "TURNSTILE_ZOOKEEPER_SESSION_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub zookeeper_session_timeout: Duration,

    /// A lease's time to live, at least 100ms: how long a resource stays
    /// locked when its holder dies without releasing it.
    #[arg(long, env = "TURNSTILE_LOCK_TTL", default_value = "5s", value_parser = duration)]
    pub lock_ttl: Duration,

    /// How long to wait for a contended lease before the batch is retried.
    #[arg(long, env = "TURNSTILE_LOCK_WAIT", default_value = "5s", value_parser = duration)]
    pub lock_wait: Duration,

    /// A claim pending this long is decided from the database: its message
    /// was lost or skipped.
    #[arg(long, env = "TURNSTILE_SWEEP_AFTER", default_value = "10s", value_parser = duration)]
    pub sweep_after: Duration,

    /// The sweep window while this worker's Kafka clients reach no broker:
    /// no event is coming, so claims are decided from the database soon
    /// after they are accepted. The sweeper then also looks this often.
    #[arg(long, env = "TURNSTILE_SWEEP_AFTER_WITHOUT_KAFKA", default_value = "1s", value_parser = duration)]
    pub sweep_after_without_kafka: Duration,

    /// How often the sweeper looks for such claims.
    #[arg(long, env = "TURNSTILE_SWEEP_INTERVAL", default_value = "2s", value_parser = duration)]
    pub sweep_interval: Duration,

    /// How often the oversold audit recounts (turnstile_oversold_units).
    #[arg(long, env = "TURNSTILE_AUDIT_INTERVAL", default_value = "15s", value_parser = duration)]
    pub audit_interval: Duration,
}

impl Settings {
    /// The lock's Redis: [`Settings::lock_redis_url`] when set, otherwise
    /// the cache's.
    pub fn lock_redis_url(&self) -> &ConnectionUrl {
        self.lock_redis_url.as_ref().unwrap_or(&self.cache.url)
    }

    /// Checks the settings that depend on each other or have a floor;
    /// parsing checked each value alone.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (name, value) in [
            ("TURNSTILE_PG_POOL", self.pg_pool as usize),
            ("TURNSTILE_BATCH_SIZE", self.batch_size),
        ] {
            if value == 0 {
                return Err(InvalidSetting::new(name, value, "must be at least 1"));
            }
        }
        if let Err((name, value, problem)) = self.kafka.check() {
            return Err(InvalidSetting::new(name, value, problem));
        }
        if self.lock_ttl < MIN_LOCK_TTL {
            return Err(InvalidSetting::duration(
                "TURNSTILE_LOCK_TTL",
                self.lock_ttl,
                format!("must be at least {}", show_duration(MIN_LOCK_TTL)),
            ));
        }
        if self.lock_backend == LockBackendKind::ZooKeeper && self.lock_ttl > self.zookeeper_session_timeout {
            return Err(InvalidSetting::duration(
                "TURNSTILE_LOCK_TTL",
                self.lock_ttl,
                format!(
                    "must not exceed TURNSTILE_ZOOKEEPER_SESSION_TIMEOUT ({}): a ZooKeeper lease cannot outlive its session",
                    show_duration(self.zookeeper_session_timeout)
                ),
            ));
        }
        if self.lock_backend == LockBackendKind::Redlock && !well_formed_list(&self.redlock_urls) {
            return Err(InvalidSetting::new(
                "TURNSTILE_REDLOCK_URLS",
                shown_list(&self.redlock_urls),
                "must list the masters' URLs, comma-separated, none empty",
            ));
        }
        if self.lock_backend == LockBackendKind::RedisCluster && !well_formed_list(&self.redis_cluster_urls) {
            return Err(InvalidSetting::new(
                "TURNSTILE_REDIS_CLUSTER_URLS",
                shown_list(&self.redis_cluster_urls),
                "must list seed nodes' URLs, comma-separated, none empty",
            ));
        }
        for (name, value) in [
            ("TURNSTILE_SWEEP_INTERVAL", self.sweep_interval),
            ("TURNSTILE_SWEEP_AFTER_WITHOUT_KAFKA", self.sweep_after_without_kafka),
            ("TURNSTILE_AUDIT_INTERVAL", self.audit_interval),
        ] {
            if value.is_zero() {
                return Err(InvalidSetting::duration(name, value, "must be above 0"));
            }
        }
        Ok(())
    }
}

/// A list of URLs with at least one entry and no empty one.
fn well_formed_list(urls: &[ConnectionUrl]) -> bool {
    !urls.is_empty() && urls.iter().all(|url| !url.expose().trim().is_empty())
}

/// A list of URLs as a message may show it: without credentials.
fn shown_list(urls: &[ConnectionUrl]) -> String {
    urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    fn exposed(urls: &[ConnectionUrl]) -> Vec<&str> {
        urls.iter().map(ConnectionUrl::expose).collect()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Settings::command().debug_assert();
    }

    #[test]
    fn every_setting_has_a_variable_and_a_default() {
        // The lock's Redis defaults to the cache's, which clap cannot say.
        let breaches = turnstile_runtime::settings::convention_breaches(
            &Settings::command(),
            &[&["TURNSTILE_LOCK_REDIS_URL"][..], &RedisTlsSettings::WITHOUT_DEFAULT].concat(),
        );
        assert!(breaches.is_empty(), "{breaches:?}");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let mut settings = Settings::try_parse_from([
            "claim-worker",
            "--database-url",
            "postgres://turnstile:hunter2@db:5432/turnstile",
            "--redis-url",
            "rediss://:hunter2@cache:6380",
            "--lock-redis-url",
            "rediss://locks:hunter2@locks:6380",
            "--redlock-urls",
            "redis://:hunter2@a:1,redis://:hunter2@b:2",
            "--redis-cluster-urls",
            "redis://:hunter2@c1:7001",
            "--redis-tls-cert",
            "/etc/turnstile/redis.pem",
            "--redis-tls-key",
            "/secrets/hunter2.key",
        ])
        .unwrap();
        settings
            .kafka
            .read_properties([("TURNSTILE_KAFKA_SASL_PASSWORD".to_owned(), "hunter2".to_owned())])
            .unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("locks:6380"), "where it connects still shows: {shown}");
    }

    #[test]
    fn defaults_are_the_tuned_constants() {
        let command = Settings::command();
        let fetch_wait = command
            .get_arguments()
            .find(|arg| arg.get_id() == "fetch_wait")
            .unwrap();
        assert_eq!(
            duration(fetch_wait.get_default_values()[0].to_str().unwrap()).unwrap(),
            turnstile_bus::ConsumerTuning::default().fetch_wait
        );
    }

    #[test]
    fn lists_and_backends_parse() {
        let settings = Settings::try_parse_from([
            "claim-worker",
            "--lock-backend",
            "zookeeper",
            "--redlock-urls",
            "redis://a:1,redis://b:2",
            "--redis-url",
            "redis://cache:6379",
        ])
        .unwrap();
        assert_eq!(settings.lock_backend, LockBackendKind::ZooKeeper);
        assert_eq!(exposed(&settings.redlock_urls), ["redis://a:1", "redis://b:2"]);
        assert_eq!(settings.lock_redis_url().expose(), "redis://cache:6379");
        let cluster = Settings::try_parse_from([
            "claim-worker",
            "--lock-backend",
            "redis-cluster",
            "--redis-cluster-urls",
            "redis://c1:7001,redis://c2:7002",
        ])
        .unwrap();
        assert_eq!(cluster.lock_backend, LockBackendKind::RedisCluster);
        assert_eq!(
            exposed(&cluster.redis_cluster_urls),
            ["redis://c1:7001", "redis://c2:7002"]
        );
        assert!(cluster.validate().is_ok());
    }

    #[test]
    fn a_cluster_needs_seed_nodes() {
        let mut settings = Settings::try_parse_from(["claim-worker", "--lock-backend", "redis-cluster"]).unwrap();
        settings.redis_cluster_urls = vec!["redis://a:1".into(), " ".into()];
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "TURNSTILE_REDIS_CLUSTER_URLS=redis://a:1,<not a url> is invalid: must list seed nodes' URLs, comma-separated, none empty"
        );
    }

    #[test]
    fn a_lease_cannot_outlive_its_zookeeper_session() {
        let mut settings = Settings::try_parse_from(["claim-worker"]).unwrap();
        settings.lock_backend = LockBackendKind::ZooKeeper;
        settings.zookeeper_session_timeout = Duration::from_secs(6);
        settings.lock_ttl = Duration::from_secs(6);
        assert!(settings.validate().is_ok(), "{:?}", settings.validate());
        settings.lock_ttl = Duration::from_secs(7);
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "TURNSTILE_LOCK_TTL=7s is invalid: must not exceed TURNSTILE_ZOOKEEPER_SESSION_TIMEOUT (6s): \
             a ZooKeeper lease cannot outlive its session"
        );
        settings.lock_ttl = Duration::from_millis(50);
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "TURNSTILE_LOCK_TTL=50ms is invalid: must be at least 100ms"
        );
    }
}
