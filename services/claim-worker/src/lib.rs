//! `claim-worker`: the consuming side of the claim pipeline.
//!
//! A member of the `claim-workers` consumer group. Each partition is one
//! ordered stream of claims; the worker takes them in micro-batches (size and
//! linger are configurable), and for every resource in a batch:
//!
//! 1. takes the resource's lease from `turnstile-lock` and its fencing token;
//! 2. decides the claims whose rows exist and belong to the resource, in one
//!    Postgres transaction that first moves the resource's fence to the
//!    token, which the database refuses if a newer token was already
//!    accepted ([`turnstile_store::decide_fenced`]);
//! 3. updates the Redis cache (only if its fence is older) and publishes a
//!    `ClaimDecided` event per claim;
//! 4. stores the partition's offset once Kafka acknowledged those events.
//!
//! A worker that stalled past its lease and its group session (a zombie) has
//! its writes refused by step 2; it counts the rejection, and the claims are
//! decided once, by the partition's rightful owner. Redelivered claims that
//! were already decided are announced again as they stand, never decided
//! twice.
//!
//! Modules, in the order a message meets them: [`consume`] (batches,
//! validation), [`decide`] (lease, fenced write, cache), [`announce`]
//! (decisions, dead letters, offsets) and [`pipeline`], the loop that joins
//! them; [`sweep`] decides what Kafka never delivered, [`relay`] sends the
//! announcements owed in the database's outbox, [`readiness`] says
//! whether they move. What is not about claims (grouping by resource, the
//! poison count, the back-off, keeping the group subscribed across topics
//! that vanish) is `turnstile-coordinator`'s. None of them waits on Kafka to decide: with the
//! broker gone, the sweeper decides from the database and the outbox keeps
//! what is owed.

mod announce;
pub mod cli;
mod consume;
mod decide;
mod metrics;
mod pipeline;
mod readiness;
mod relay;
pub mod settings;
mod sweep;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, routing::get};
use prometheus::Registry;
use rdkafka::consumer::Consumer;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use turnstile_bus::{
    ConsumerTuning, GroupContext, KafkaHealth, ProducerTuning, Publisher, STARTUP_TOPIC_CHECK, TOPIC_CHECK_INTERVAL,
    TopicKeeper,
};
use turnstile_claim::audit::OversoldLedger;
use turnstile_lock::{
    LockBackend, LockClient, LockConfig, LockMetricFamilies,
    backend::{
        postgres::PostgresLockBackend,
        redis::RedisLockBackend,
        redis_cluster::RedisClusterLockBackend,
        redlock::{RedlockBackend, RedlockConfig},
        zookeeper::{ZooKeeperConfig, ZooKeeperLockBackend},
    },
};
use turnstile_runtime::secret::ConnectionUrl;
use turnstile_store::{self as store, cache::ResourceCache};
use turnstile_telemetry::PoolGauges;

use announce::{Announcer, Settle};
use decide::Decider;
pub use metrics::WorkerMetrics;
use pipeline::Pipeline;
use readiness::SettleClock;
use relay::Relay;
pub use settings::{LockBackendKind, Settings};
use sweep::Sweeper;

/// A worker, connected and ready to run.
pub struct Worker {
    settings: Settings,
    pipeline: Pipeline,
    sweeper: Sweeper,
    relay: Relay,
    keeper: TopicKeeper,
    settler: (mpsc::Receiver<Settle>, Announcer),
    pool: sqlx::PgPool,
    metrics: WorkerMetrics,
    registry: Registry,
    pool_gauges: PoolGauges,
    metrics_listener: TcpListener,
}

/// How many decided batches may wait for Kafka's acknowledgements before
/// consuming pauses. A batch whose messages Kafka does not take waits out
/// the producer's delivery timeout before they are owed, so the queue holds
/// well over that timeout's worth of batches: announcing does not hold up
/// consumption.
const SETTLE_QUEUE: usize = 4096;

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

        let backend = connect_lock_backend(&settings, &pool).await?;
        let locks = LockClient::with_metrics(
            Arc::clone(&backend),
            LockConfig::default(),
            lock_families.for_backend(backend.name()),
        );

        let cache_conn = redis::Client::open(settings.cache.url.expose())?
            .get_connection_manager()
            .await
            .context("connecting to the cache redis")?;
        let cache = ResourceCache::new(cache_conn, "turnstile");

        let health = KafkaHealth::new(metrics.kafka_up.clone());
        let consumer = join_group(&settings, &kafka, &topics.requested, &metrics, &health)?;
        let publisher = Publisher::connect(
            &kafka,
            &ProducerTuning {
                idempotence: settings.kafka.idempotence,
                ..ProducerTuning::default()
            },
        )?;

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
        let decider = Decider {
            pool: pool.clone(),
            locks,
            cache,
            metrics: metrics.clone(),
            lock_ttl: settings.lock_ttl,
            lock_wait: settings.lock_wait,
            topic: topics.requested.clone(),
            decided_topic: topics.decided.clone(),
        };
        let announcer = Announcer {
            publisher,
            topics: topics.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
        };
        let (settle, settled) = mpsc::channel(SETTLE_QUEUE);
        let sweeper = Sweeper {
            database_url: settings.database.url.clone(),
            decider: decider.clone(),
            health,
            after: settings.sweep_after,
            after_without_kafka: settings.sweep_after_without_kafka,
            every: settings.sweep_interval,
        };
        let relay = Relay {
            pool: pool.clone(),
            announcer: announcer.clone(),
            every: RELAY_INTERVAL,
        };
        let keeper = TopicKeeper::new(
            &kafka,
            &[&topics.requested, &topics.decided, &topics.dead_letter],
            settings.kafka.layout(),
            metrics.topics_recreated.clone(),
        )?
        .with_health(announcer.health.clone());
        let pipeline = Pipeline::new(
            consumer,
            topics.requested.clone(),
            settings.batch_size,
            settings.batch_linger,
            decider,
            announcer.clone(),
            settle,
            metrics.clone(),
        );
        Ok(Self {
            settings,
            pipeline,
            sweeper,
            relay,
            keeper,
            settler: (settled, announcer),
            pool,
            metrics,
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
        let settle_clock = SettleClock::default();
        let readiness = (settle_clock.clone(), self.metrics.clone());
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
                get(move || std::future::ready(readiness::report(&readiness.0, &readiness.1))),
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
        let sweeper = tokio::spawn(self.sweeper.run(shutdown.clone()));
        let broker_returns = self.relay.announcer.health.returns();
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        let resubscribe = tokio::spawn(turnstile_coordinator::subscription::keep_subscribed(
            self.keeper.recreations(),
            broker_returns,
            Arc::clone(&self.pipeline.consumer),
            self.pipeline.waiting.clone(),
            self.pipeline.topic.clone(),
            TOPIC_CHECK_INTERVAL,
            shutdown.clone(),
        ));
        let keeper = tokio::spawn(self.keeper.run(TOPIC_CHECK_INTERVAL, shutdown.clone()));
        // The settler outlives the loop: it finishes the batches handed to
        // it, unless Kafka keeps refusing past the grace period.
        let settler_stop = CancellationToken::new();
        let (settled, announcer) = self.settler;
        let publisher = announcer.publisher.clone();
        let settler = tokio::spawn(announce::settle_in_order(
            settled,
            Arc::clone(&self.pipeline.consumer),
            announcer,
            self.pool.clone(),
            settle_clock,
            settler_stop.clone(),
        ));

        let consumer = Arc::clone(&self.pipeline.consumer);
        // Both senders of settled batches go with the loop and the sweeper:
        // the settler then ends once it has settled what they handed over.
        self.pipeline.run(shutdown).await;
        audit.abort();
        let _ = sweeper.await;
        let _ = relay.await;
        let _ = keeper.await;
        let _ = resubscribe.await;
        let mut settler = settler;
        tokio::select! {
            _ = &mut settler => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                warn!("kafka did not acknowledge everything within the grace period; those batches come again");
                settler_stop.cancel();
                let _ = settler.await;
            }
        }
        turnstile_coordinator::consumption::leave(&consumer);
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(1))).await;
        if let Ok(Err(e)) = flushed {
            warn!(error = %e, "messages still queued at exit");
        }
        server.await??;
        Ok(())
    }
}

/// How long a stopping worker waits for Kafka to take what it produced.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
async fn connect_lock_backend(settings: &Settings, pool: &sqlx::PgPool) -> anyhow::Result<Arc<dyn LockBackend>> {
    Ok(match settings.lock_backend {
        LockBackendKind::Redis => Arc::new(
            RedisLockBackend::connect(settings.lock_redis_url().expose())
                .await
                .context("connecting to the lock redis")?,
        ),
        LockBackendKind::RedisCluster => Arc::new(
            RedisClusterLockBackend::connect(&exposed(&settings.redis_cluster_urls))
                .await
                .context("connecting to the lock's redis cluster")?,
        ),
        LockBackendKind::Redlock => Arc::new(RedlockBackend::new(
            exposed(&settings.redlock_urls),
            RedlockConfig::default(),
        )?),
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

/// The group's consumer, subscribed to `topic`, reporting rebalances, lag
/// and Kafka's health.
fn join_group(
    settings: &Settings,
    kafka: &turnstile_bus::KafkaConnection,
    topic: &str,
    metrics: &WorkerMetrics,
    health: &KafkaHealth,
) -> anyhow::Result<Arc<rdkafka::consumer::StreamConsumer<GroupContext>>> {
    let context =
        GroupContext::new(metrics.rebalances.clone(), metrics.partition_lag.clone()).with_health(health.clone());
    let consumer = turnstile_bus::group_consumer(
        kafka,
        &settings.group_id,
        &ConsumerTuning {
            session_timeout: settings.session_timeout,
            heartbeat_interval: settings.session_timeout / 3,
            fetch_wait: settings.fetch_wait,
        },
        context,
    )?;
    consumer.subscribe(&[topic])?;
    Ok(Arc::new(consumer))
}
