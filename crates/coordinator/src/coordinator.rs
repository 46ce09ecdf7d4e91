//! The coordinator assembled: a group member's consume loop, its settler,
//! and optionally its sweeper and the keeper of its topics, run until
//! stopped.

use std::{sync::Arc, time::Duration};

use prometheus::{IntCounter, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::Consumer as _;
use rdkafka::consumer::StreamConsumer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use turnstile_bus::{
    BusError, ConsumerTuning, GroupContext, KafkaConnection, KafkaHealth, ProducerTuning, Publisher,
    TOPIC_CHECK_INTERVAL, TopicKeeper,
};
use turnstile_lock::LockClient;

use crate::{
    PoisonCounter, Waiting,
    consumption::leave,
    dead_letter::DeadLetters,
    handler::Handler,
    lease::{LeaseTerms, Leaseholder},
    metrics::CoordinatorMetrics,
    pipeline::Pipeline,
    settle::{Announcer, SettleClock, Settler, Silent},
    subscription::keep_subscribed,
    sweep::{SweepMetrics, SweepSource, SweepTerms, SweepTurn, Sweeper},
};

/// How many handled batches may wait for Kafka's acknowledgements before
/// consuming pauses. A batch whose messages Kafka does not take waits out
/// the producer's delivery timeout before they are owed, so the queue holds
/// well over that timeout's worth of batches: announcing does not hold up
/// consumption.
const SETTLE_QUEUE: usize = 4096;

/// How long a stopping member waits for Kafka to take what it produced.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every coordinator needs.
pub struct CoordinatorParts<H> {
    /// The handler.
    pub handler: H,
    /// The group's consumer, subscribed to `topic`, its offsets stored by
    /// the coordinator (`enable.auto.offset.store=false`, as
    /// `turnstile_bus::group_consumer` makes it).
    pub consumer: Arc<StreamConsumer<GroupContext>>,
    /// The topic of the events.
    pub topic: String,
    /// The leases.
    pub leaseholder: Leaseholder,
    /// The dead-letter topic.
    pub dead_letters: DeadLetters,
    /// Whether the member's Kafka clients reach a broker.
    pub health: KafkaHealth,
    /// The instruments.
    pub metrics: CoordinatorMetrics,
    /// The most events in one batch.
    pub batch_size: usize,
    /// How long a batch waits to fill after its first event (0: take what
    /// is already buffered).
    pub batch_linger: Duration,
}

/// Where a member joins and on what terms, for [`CoordinatorParts::join`].
#[derive(Debug, Clone)]
pub struct Membership {
    /// The consumer group: its members share the partitions.
    pub group_id: String,
    /// The topic of the events, keyed by resource.
    pub topic: String,
    /// Where events that cannot be handled go.
    pub dead_letter_topic: String,
    /// The lease per resource.
    pub lease: LeaseTerms,
    /// The consumer's tuning.
    pub consumer: ConsumerTuning,
    /// The producer's tuning (announcements and dead letters).
    pub producer: ProducerTuning,
    /// The most events in one batch.
    pub batch_size: usize,
    /// How long a batch waits to fill after its first event.
    pub batch_linger: Duration,
}

impl Membership {
    /// `group_id` on `topic`, dead letters to `dead_letter_topic`; leases
    /// of 5 s waited for up to 5 s, batches of up to 500 events taken as
    /// they are buffered.
    pub fn new(group_id: impl Into<String>, topic: impl Into<String>, dead_letter_topic: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            topic: topic.into(),
            dead_letter_topic: dead_letter_topic.into(),
            lease: LeaseTerms {
                ttl: Duration::from_secs(5),
                wait: Duration::from_secs(5),
            },
            consumer: ConsumerTuning::default(),
            producer: ProducerTuning::default(),
            batch_size: 500,
            batch_linger: Duration::ZERO,
        }
    }
}

/// Why a member could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// An instrument could not be registered (registered twice, say).
    #[error("registering the coordinator's metrics")]
    Metrics(#[from] prometheus::Error),
    /// The consumer or the producer could not be made.
    #[error("connecting to kafka")]
    Kafka(#[from] BusError),
    /// Subscribing to the topic failed.
    #[error("subscribing to the topic")]
    Subscribe(#[from] rdkafka::error::KafkaError),
}

impl<H: Handler> CoordinatorParts<H> {
    /// Joins the group `membership` names on the cluster `kafka`, with
    /// leases from `locks`, and registers the instruments in `registry`:
    /// the coordinator's, `turnstile_kafka_up`,
    /// `turnstile_kafka_rebalances_total` and
    /// `turnstile_kafka_partition_lag`.
    pub fn join(
        handler: H,
        kafka: &KafkaConnection,
        membership: &Membership,
        locks: LockClient,
        registry: &Registry,
    ) -> Result<Self, JoinError> {
        let metrics = CoordinatorMetrics::register(registry, H::REFUSAL_CAUSES, H::DEPENDENCIES)?;
        let up = KafkaHealth::gauge()?;
        let rebalances = IntCounter::new(
            "turnstile_kafka_rebalances_total",
            "Consumer group rebalances (assignments and revocations) seen by this member.",
        )?;
        let partition_lag = IntGaugeVec::new(
            Opts::new(
                "turnstile_kafka_partition_lag",
                "Messages behind the end of each partition this member is assigned, from librdkafka statistics.",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(rebalances.clone()))?;
        registry.register(Box::new(partition_lag.clone()))?;
        let health = KafkaHealth::new(up);
        let context = GroupContext::new(rebalances, partition_lag).with_health(health.clone());
        let consumer = turnstile_bus::group_consumer(kafka, &membership.group_id, &membership.consumer, context)?;
        consumer.subscribe(&[&membership.topic])?;
        let publisher = Publisher::connect(kafka, &membership.producer)?;
        Ok(Self {
            handler,
            consumer: Arc::new(consumer),
            topic: membership.topic.clone(),
            leaseholder: Leaseholder::new(locks, membership.lease, metrics.clone(), membership.topic.clone()),
            dead_letters: DeadLetters::new(publisher, membership.dead_letter_topic.clone(), metrics.clone()),
            health,
            metrics,
            batch_size: membership.batch_size,
            batch_linger: membership.batch_linger,
        })
    }
}

impl<H> std::fmt::Debug for CoordinatorParts<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorParts")
            .field("topic", &self.topic)
            .field("batch_size", &self.batch_size)
            .field("batch_linger", &self.batch_linger)
            .finish_non_exhaustive()
    }
}

/// A group member that handles its partitions' events, resource by
/// resource, under leases and fences. Built from [`CoordinatorParts`], then
/// given an announcer, a sweeper and a topic keeper as the handler needs.
pub struct Coordinator<H: Handler, X = Silent, S = NoSweep> {
    parts: CoordinatorParts<H>,
    announcer: X,
    sweeper: Option<(S, SweepTerms, SweepMetrics)>,
    keeper: Option<TopicKeeper>,
    clock: SettleClock,
    waiting: Waiting,
}

impl<H: Handler, X, S> std::fmt::Debug for Coordinator<H, X, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("parts", &self.parts)
            .field("sweeps", &self.sweeper.is_some())
            .field("keeps_topics", &self.keeper.is_some())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Coordinator<H> {
    /// A coordinator that announces nothing and sweeps nothing.
    pub fn new(parts: CoordinatorParts<H>) -> Self {
        Self {
            parts,
            announcer: Silent,
            sweeper: None,
            keeper: None,
            clock: SettleClock::default(),
            waiting: Waiting::default(),
        }
    }
}

impl<H: Handler, X: Announcer<H::Announcement>, S: SweepSource<H>> Coordinator<H, X, S> {
    /// Publishes what handling produced through `announcer`.
    pub fn with_announcer<Y: Announcer<H::Announcement>>(self, announcer: Y) -> Coordinator<H, Y, S> {
        Coordinator {
            parts: self.parts,
            announcer,
            sweeper: self.sweeper,
            keeper: self.keeper,
            clock: self.clock,
            waiting: self.waiting,
        }
    }

    /// Handles the records `source` finds waiting past `terms`, one member
    /// of the group at a time.
    pub fn with_sweeper<T: SweepSource<H>>(
        self,
        source: T,
        terms: SweepTerms,
        metrics: SweepMetrics,
    ) -> Coordinator<H, X, T> {
        Coordinator {
            parts: self.parts,
            announcer: self.announcer,
            sweeper: Some((source, terms, metrics)),
            keeper: self.keeper,
            clock: self.clock,
            waiting: self.waiting,
        }
    }

    /// Keeps the topics `keeper` names in existence, and the member
    /// subscribed across their loss ([`crate::subscription`]).
    pub fn with_topic_keeper(mut self, keeper: TopicKeeper) -> Self {
        self.keeper = Some(keeper);
        self
    }

    /// Since when the settler has been busy, for a readiness report.
    pub fn settle_clock(&self) -> SettleClock {
        self.clock.clone()
    }

    /// Consumes until `shutdown` fires, then finishes the batch in hand,
    /// waits (a few seconds at most) for Kafka to take what it produced,
    /// commits the offsets so settled and leaves the group.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let Self {
            parts,
            announcer,
            sweeper,
            keeper,
            clock,
            waiting,
        } = self;
        let handler = Arc::new(parts.handler);
        let announcer = Arc::new(announcer);
        let consumer = parts.consumer;
        let sweeper = sweeper.map(|(source, terms, metrics)| {
            tokio::spawn(
                Sweeper {
                    source,
                    handler: Arc::clone(&handler),
                    leaseholder: parts.leaseholder.clone(),
                    health: parts.health.clone(),
                    terms,
                    metrics,
                }
                .run(shutdown.clone()),
            )
        });
        let subscription = keeper.map(|keeper| {
            let resubscribe = tokio::spawn(keep_subscribed(
                keeper.recreations(),
                parts.health.returns(),
                Arc::clone(&consumer),
                waiting.clone(),
                parts.topic.clone(),
                TOPIC_CHECK_INTERVAL,
                shutdown.clone(),
            ));
            let keeper = tokio::spawn(keeper.run(TOPIC_CHECK_INTERVAL, shutdown.clone()));
            (resubscribe, keeper)
        });
        // The settler outlives the loop: it finishes the batches handed to
        // it, unless Kafka keeps refusing past the grace period.
        let (settle, settled) = mpsc::channel(SETTLE_QUEUE);
        let settler_stop = CancellationToken::new();
        let settler = tokio::spawn(
            Settler {
                consumer: Arc::clone(&consumer),
                topic: parts.topic.clone(),
                announcer: Arc::clone(&announcer),
                dead_letters: parts.dead_letters.clone(),
                health: parts.health.clone(),
                metrics: parts.metrics.clone(),
                clock,
            }
            .run(settled, settler_stop.clone()),
        );
        let publisher = parts.dead_letters.publisher().clone();
        // The only sender of handled batches goes with the loop: the
        // settler then ends once it has settled what was handed over.
        Pipeline {
            consumer: Arc::clone(&consumer),
            topic: parts.topic,
            batch_size: parts.batch_size,
            batch_linger: parts.batch_linger,
            handler,
            leaseholder: parts.leaseholder,
            announcer,
            dead_letters: parts.dead_letters,
            settle,
            metrics: parts.metrics,
            waiting,
            poison: PoisonCounter::default(),
        }
        .run(shutdown)
        .await;
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        if let Some((resubscribe, keeper)) = subscription {
            let _ = keeper.await;
            let _ = resubscribe.await;
        }
        let mut settler = settler;
        tokio::select! {
            _ = &mut settler => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                warn!("kafka did not acknowledge everything within the grace period; those batches come again");
                settler_stop.cancel();
                let _ = settler.await;
            }
        }
        leave(&consumer);
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(1))).await;
        if let Ok(Err(e)) = flushed {
            warn!(error = %e, "messages still queued at exit");
        }
    }
}

/// The sweep source of a coordinator without a sweeper.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSweep;

impl<H: Handler> SweepSource<H> for NoSweep {
    type Turn = NoSweep;

    async fn open_turn(&self) -> Result<Self::Turn, crate::sweep::SweepError> {
        Err("no sweeper".into())
    }

    async fn stale(&self, _: Duration, _: usize) -> Result<crate::sweep::Stale<H::Event>, crate::sweep::SweepError> {
        Ok(crate::sweep::Stale {
            events: Vec::new(),
            read: 0,
        })
    }
}

impl SweepTurn for NoSweep {
    async fn run<F: std::future::Future<Output = ()> + Send>(
        &mut self,
        _: F,
    ) -> Result<bool, crate::sweep::SweepError> {
        Ok(false)
    }
}
