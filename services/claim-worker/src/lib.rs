//! `claim-worker`: the consuming side of the claim pipeline.
//!
//! A member of the `claim-workers` consumer group, built on
//! `turnstile-coordinator`: the coordinator takes each partition's claims
//! in micro-batches (size and linger are configurable), in order, and for
//! every resource in a batch takes the resource's lease from
//! `turnstile-lock` and hands its claims and the fencing token to this
//! crate's [`decide`] step, which:
//!
//! 1. decides the claims whose rows exist and belong to the resource, in one
//!    Postgres transaction that first moves the resource's fence to the
//!    token, which the database refuses if a newer token was already
//!    accepted ([`turnstile_store::decide_fenced`]);
//! 2. updates the Redis cache (only if its fence is older) after the commit.
//!
//! The coordinator then publishes a `ClaimDecided` event per claim through
//! [`announce`], and stores the partition's offset once Kafka acknowledged
//! them or the outbox owes them.
//!
//! A worker that stalled past its lease and its group session (a zombie) has
//! its writes refused by step 1; it counts the rejection, and the claims are
//! decided once, by the partition's rightful owner. Redelivered claims that
//! were already decided are announced again as they stand, never decided
//! twice.
//!
//! This crate is the claim handler and its wiring: [`decide`] (the
//! handler), [`announce`] (`ClaimDecided`, owed in the outbox when Kafka
//! does not take it), [`sweep`] (where the coordinator's sweeper finds the
//! claims Kafka never delivered), [`relay`] (sends what the outbox owes),
//! [`readiness`] (whether announcements move). None of them waits on Kafka
//! to decide: with the broker gone, the sweeper decides from the database
//! and the outbox keeps what is owed.

mod announce;
pub mod cli;
mod decide;
mod metrics;
mod readiness;
mod relay;
pub mod settings;
mod sweep;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, routing::get};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use turnstile_bus::{ConsumerTuning, KafkaHealth, ProducerTuning, STARTUP_TOPIC_CHECK, TopicKeeper};
use turnstile_claim::audit::OversoldLedger;
use turnstile_coordinator::{Coordinator, CoordinatorParts, LeaseTerms, Membership, SweepMetrics, SweepTerms};
use turnstile_lock::{
    LockBackend, LockClient, LockConfig, LockMetricFamilies,
    backend::{
        postgres::PostgresLockBackend,
        redis::{RedisLockBackend, RedisLockConfig},
        redis_cluster::RedisClusterLockBackend,
        redlock::{RedlockBackend, RedlockConfig},
        tls::{self, RedisTls},
        zookeeper::{ZooKeeperConfig, ZooKeeperLockBackend},
    },
};
use turnstile_runtime::secret::ConnectionUrl;
use turnstile_store::{self as store, cache::ResourceCache};
use turnstile_telemetry::PoolGauges;

use announce::ClaimAnnouncer;
use decide::Decider;
pub use metrics::WorkerMetrics;
use relay::Relay;
pub use settings::{LockBackendKind, Settings};
use sweep::StaleClaims;

/// The coordinator as the worker runs it: claims decided by the
/// [`Decider`], announced by the [`ClaimAnnouncer`], swept from the claims
/// table.
type ClaimCoordinator = Coordinator<Decider, ClaimAnnouncer, StaleClaims>;

/// A worker, connected and ready to run.
pub struct Worker {
    settings: Settings,
    coordinator: ClaimCoordinator,
    relay: Relay,
    pool: sqlx::PgPool,
    metrics: WorkerMetrics,
    /// Whether the worker's Kafka clients reach a broker, for `/readyz`.
    health: KafkaHealth,
    registry: Registry,
    pool_gauges: PoolGauges,
    metrics_listener: TcpListener,
}

/// How often the relay looks for owed announcements when it found few.
const RELAY_INTERVAL: Duration = Duration::from_millis(500);

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Connects to every dependency, applies migrations, creates the topics
    /// if needed (or leaves that to the keeper while the broker is down),
    /// joins the group and binds the metrics endpoint.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let metrics = WorkerMetrics::register(&registry)?;
        let pool_gauges = PoolGauges::register(&registry)?;
        let lock_families = LockMetricFamilies::register(&registry)?;

        let pool = store::connect(
            settings.database.url.expose(),
            settings.pg_pool,
            std::time::Duration::from_secs(5),
        )
        .await
        .context("connecting to postgres")?;
        store::migrate(&pool).await.context("applying migrations")?;

        let topics = settings.kafka.topics();
        let kafka = settings.kafka.connection();
        topics
            .ensure_or_defer(&kafka, &settings.kafka.layout(), STARTUP_TOPIC_CHECK)
            .await;

        let redis_tls = settings
            .redis_tls
            .is_set()
            .then(|| RedisTls::from_files(settings.redis_tls.ca.as_deref(), settings.redis_tls.client()))
            .transpose()
            .context("reading the redis tls files")?;
        let backend = connect_lock_backend(&settings, redis_tls.as_ref(), &pool).await?;
        let locks = LockClient::with_metrics(
            Arc::clone(&backend),
            LockConfig::default(),
            lock_families.for_backend(backend.name()),
        );

        let cache_conn = tls::client(settings.cache.url.expose(), redis_tls.as_ref())?
            .get_connection_manager()
            .await
            .context("connecting to the cache redis")?;
        let cache = ResourceCache::new(cache_conn, "turnstile");
        let decider = Decider {
            pool: pool.clone(),
            cache,
            metrics: metrics.clone(),
            decided_topic: topics.decided.clone(),
        };
        let parts = CoordinatorParts::join(decider, &kafka, &membership(&settings, &topics), locks, &registry)?;

        let metrics_listener = TcpListener::bind(settings.metrics_addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {}", settings.metrics_addr))?;
        info!(
            group = %settings.group_id,
            topic = %topics.requested,
            lock_backend = backend.name(),
            metrics = %settings.metrics_addr,
            "claim-worker ready"
        );
        let announcer = ClaimAnnouncer {
            publisher: parts.dead_letters.publisher().clone(),
            topics: topics.clone(),
            health: parts.health.clone(),
            pool: pool.clone(),
        };
        let relay = Relay {
            pool: pool.clone(),
            announcer: announcer.clone(),
            retries: parts.metrics.announce_retries().clone(),
            metrics: metrics.clone(),
            every: RELAY_INTERVAL,
        };
        let keeper = TopicKeeper::new(
            &kafka,
            &[&topics.requested, &topics.decided, &topics.dead_letter],
            settings.kafka.layout(),
            metrics.topics_recreated.clone(),
        )?
        .with_health(parts.health.clone());
        let stale_claims = StaleClaims {
            database_url: settings.database.url.clone(),
            pool: pool.clone(),
            decided_topic: topics.decided.clone(),
            metrics: metrics.clone(),
        };
        let health = parts.health.clone();
        let coordinator = Coordinator::new(parts)
            .with_announcer(announcer)
            .with_sweeper(
                stale_claims,
                SweepTerms {
                    after: settings.sweep_after,
                    after_without_kafka: settings.sweep_after_without_kafka,
                    every: settings.sweep_interval,
                },
                SweepMetrics {
                    swept: metrics.swept.clone(),
                    handled_without_kafka: metrics.decided_without_kafka.clone(),
                },
            )
            .with_topic_keeper(keeper);
        Ok(Self {
            settings,
            coordinator,
            relay,
            pool,
            metrics,
            health,
            registry,
            pool_gauges,
            metrics_listener,
        })
    }

    /// Where `/metrics` listens.
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.metrics_listener.local_addr()
    }

    /// Consumes until `shutdown` fires, then finishes the batch in hand,
    /// waits (a few seconds at most) for Kafka to take what it produced,
    /// commits the offsets so settled and leaves the group.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (registry, pool, pool_gauges) = (self.registry.clone(), self.pool.clone(), self.pool_gauges);
        let readiness = (self.coordinator.settle_clock(), self.metrics.clone(), self.health);
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    pool_gauges.observe("worker", pool.size(), pool.num_idle());
                    std::future::ready(turnstile_telemetry::render_metrics(&registry))
                }),
            )
            .route("/healthz", get(|| std::future::ready("ok")))
            .route(
                "/readyz",
                get(move || std::future::ready(readiness::report(&readiness.0, &readiness.1, &readiness.2))),
            );
        let server_stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(self.metrics_listener, app)
                .with_graceful_shutdown(async move { server_stop.cancelled().await })
                .await
        });
        let audit = tokio::spawn(audit_oversold(
            self.pool.clone(),
            self.metrics.oversold.clone(),
            self.settings.audit_interval,
            shutdown.clone(),
        ));
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        self.coordinator.run_until_stopped(shutdown).await;
        audit.abort();
        let _ = relay.await;
        server.await??;
        Ok(())
    }
}

/// Recounts the invariants from the claims table every `interval`: units
/// granted beyond stock go to `turnstile_oversold_units`, and any violated
/// invariant is logged as an error. Most passes recount only the resources
/// decided since the previous one ([`turnstile_claim::audit`]).
async fn audit_oversold(
    pool: sqlx::PgPool,
    gauge: prometheus::IntGauge,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut ledger = OversoldLedger::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let scope = ledger.next_scope();
        match store::check_invariants(&pool, &scope).await {
            Ok((started, ledgers)) => {
                tracing::debug!(?scope, resources = ledgers.len(), "audit pass");
                for broken in ledgers.iter().filter(|l| !l.holds()) {
                    tracing::error!(
                        tenant = %broken.tenant_id,
                        kind = %broken.kind,
                        resource = %broken.id,
                        oversold = broken.oversold(),
                        users_over_limit = broken.users_over_limit,
                        remaining = broken.remaining,
                        granted_units = broken.granted_units,
                        total = broken.total,
                        "audit: an invariant is broken"
                    );
                }
                ledger.record(&scope, started, &ledgers);
                gauge.set(ledger.total());
            }
            Err(e) => tracing::warn!(error = %e, "audit failed; will retry"),
        }
    }
}

/// The lock backend the settings name, connected (and for Postgres, its
/// table installed).
async fn connect_lock_backend(
    settings: &Settings,
    tls: Option<&RedisTls>,
    pool: &sqlx::PgPool,
) -> anyhow::Result<Arc<dyn LockBackend>> {
    let with_tls = |config: RedisLockConfig| match tls {
        Some(tls) => config.with_tls(tls.clone()),
        None => config,
    };
    Ok(match settings.lock_backend {
        LockBackendKind::Redis => Arc::new(
            RedisLockBackend::connect_with(settings.lock_redis_url().expose(), with_tls(RedisLockConfig::default()))
                .await
                .context("connecting to the lock redis")?,
        ),
        LockBackendKind::RedisCluster => Arc::new(
            RedisClusterLockBackend::connect_with(
                exposed(&settings.redis_cluster_urls),
                with_tls(RedisLockConfig::default()),
            )
            .await
            .context("connecting to the lock's redis cluster")?,
        ),
        LockBackendKind::Redlock => {
            let config = match tls {
                Some(tls) => RedlockConfig::default().with_tls(tls.clone()),
                None => RedlockConfig::default(),
            };
            Arc::new(RedlockBackend::new(exposed(&settings.redlock_urls), config)?)
        }
        LockBackendKind::Postgres => {
            let backend = PostgresLockBackend::new(pool.clone());
            backend.install().await.context("installing the postgres lock table")?;
            Arc::new(backend)
        }
        LockBackendKind::ZooKeeper => {
            let config = ZooKeeperConfig::default().with_session_timeout(settings.zookeeper_session_timeout);
            let backend = ZooKeeperLockBackend::connect(&settings.zookeeper_url, config)
                .await
                .context("connecting to zookeeper")?;
            // The server may negotiate a shorter session than asked for.
            anyhow::ensure!(
                settings.lock_ttl <= backend.session_timeout(),
                "TURNSTILE_LOCK_TTL ({}) exceeds the session timeout ZooKeeper granted ({})",
                turnstile_runtime::settings::show_duration(settings.lock_ttl),
                turnstile_runtime::settings::show_duration(backend.session_timeout())
            );
            Arc::new(backend)
        }
    })
}

/// The URLs themselves, for a client that connects with them.
fn exposed(urls: &[ConnectionUrl]) -> Vec<&str> {
    urls.iter().map(ConnectionUrl::expose).collect()
}

/// Where the worker joins: the claim topics, the lease and the batches
/// its settings name.
fn membership(settings: &Settings, topics: &turnstile_bus::Topics) -> Membership {
    Membership {
        lease: LeaseTerms {
            ttl: settings.lock_ttl,
            wait: settings.lock_wait,
        },
        consumer: ConsumerTuning {
            session_timeout: settings.session_timeout,
            heartbeat_interval: settings.session_timeout / 3,
            fetch_wait: settings.fetch_wait,
        },
        producer: ProducerTuning {
            idempotence: settings.kafka.idempotence,
            ..ProducerTuning::default()
        },
        batch_size: settings.batch_size,
        batch_linger: settings.batch_linger,
        ..Membership::new(&settings.group_id, &topics.requested, &topics.dead_letter)
    }
}
