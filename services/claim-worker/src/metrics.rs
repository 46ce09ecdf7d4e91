//! The worker's Prometheus instruments.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use turnstile_bus::{KafkaHealth, TopicKeeper};
use turnstile_claim::RejectReason;

use crate::announce::DeadLetterCause;

/// Instruments for the claim pipeline's consuming side.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    pub(crate) batches: IntCounter,
    pub(crate) batch_size: Histogram,
    pub(crate) decided: IntCounterVec,
    pub(crate) decide_latency: Histogram,
    pub(crate) message_age: Histogram,
    pub(crate) settle_seconds: Histogram,
    pub(crate) settle_blocked_seconds: Histogram,
    pub(crate) fence_rejections: IntCounter,
    pub(crate) dead_lettered: IntCounterVec,
    pub(crate) fence_repairs: IntCounter,
    pub(crate) announce_retries: IntCounter,
    pub(crate) dependency_failures: IntCounterVec,
    pub(crate) rebalances: IntCounter,
    pub(crate) partition_lag: IntGaugeVec,
    pub(crate) oversold: IntGauge,
    pub(crate) swept: IntCounter,
    pub(crate) decided_without_kafka: IntCounter,
    pub(crate) announce_backlog: IntGauge,
    pub(crate) announce_oldest_seconds: Gauge,
    pub(crate) kafka_up: IntGauge,
    pub(crate) topics_recreated: IntCounterVec,
}

impl WorkerMetrics {
    /// Creates the instruments and registers them.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            batches: IntCounter::new("turnstile_worker_batches_total", "Batches of claim events processed.")?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("turnstile_worker_batch_size", "Claim events per batch.")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
            )?,
            decided: IntCounterVec::new(
                Opts::new("turnstile_claims_decided_total", "Claims decided, by outcome."),
                &["outcome"],
            )?,
            decide_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "turnstile_claim_decide_latency_seconds",
                    "Time from the API accepting a claim to the worker committing its decision.",
                )
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
            )?,
            settle_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "turnstile_worker_settle_seconds",
                    "Time from a decided batch's hand-over to its offset being stored: Kafka acknowledging its \
                     ClaimDecided and dead-letter messages, in batch order.",
                )
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
            )?,
            settle_blocked_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "turnstile_worker_settle_blocked_seconds",
                    "Time the consume loop waited to hand a decided batch over, because too many batches were \
                     still waiting for Kafka's acknowledgements.",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10)?),
            )?,
            message_age: Histogram::with_opts(
                HistogramOpts::new(
                    "turnstile_worker_message_age_seconds",
                    "Age of a claim event when the worker takes it from Kafka: from the producer's timestamp to now.",
                )
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            )?,
            fence_rejections: IntCounter::new(
                "turnstile_fence_rejections_total",
                "Batches the database refused because their fencing token was stale.",
            )?,
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    "turnstile_dead_lettered_total",
                    "Messages sent to the dead-letter topic, by cause: undecodable or invalid events, events that \
                     name no claim of their resource (orphan), batches that failed the same way too often (poison).",
                ),
                &["cause"],
            )?,
            fence_repairs: IntCounter::new(
                "turnstile_fence_repairs_total",
                "Times the lock's token counter was raised above the database's fence after a stale-token refusal.",
            )?,
            announce_retries: IntCounter::new(
                "turnstile_announce_retries_total",
                "ClaimDecided or dead-letter messages sent again because Kafka did not acknowledge them.",
            )?,
            dependency_failures: IntCounterVec::new(
                Opts::new(
                    "turnstile_worker_dependency_failures_total",
                    "Batches abandoned (and retried later) because a dependency failed.",
                ),
                &["dependency"],
            )?,
            swept: IntCounter::new(
                "turnstile_claims_swept_total",
                "Claims found pending too long and re-decided from the database.",
            )?,
            decided_without_kafka: IntCounter::new(
                "turnstile_claims_decided_without_kafka_total",
                "Claims the sweeper decided from the database while this worker's Kafka clients reached no broker.",
            )?,
            announce_backlog: IntGauge::new(
                "turnstile_announce_backlog",
                "Decisions committed whose ClaimDecided Kafka has not acknowledged yet (the outbox), as this \
                 worker's relay last counted them.",
            )?,
            announce_oldest_seconds: Gauge::new(
                "turnstile_announce_oldest_seconds",
                "Age of the oldest announcement owed in the outbox (0 when none is owed).",
            )?,
            kafka_up: KafkaHealth::gauge()?,
            topics_recreated: TopicKeeper::counter()?,
            rebalances: IntCounter::new(
                "turnstile_kafka_rebalances_total",
                "Consumer group rebalances (assignments and revocations) seen by this worker.",
            )?,
            partition_lag: IntGaugeVec::new(
                Opts::new(
                    "turnstile_kafka_partition_lag",
                    "Messages behind the end of each partition this worker is assigned, from librdkafka statistics.",
                ),
                &["topic", "partition"],
            )?,
            oversold: IntGauge::new(
                "turnstile_oversold_units",
                "Units granted beyond their resource's total, recounted from the claims table. Must stay 0.",
            )?,
        };
        // Every label value exists from the start, so a rate is 0 rather
        // than absent until the first event.
        m.decided.with_label_values(&["granted"]);
        for reason in RejectReason::ALL {
            m.decided.with_label_values(&[reason.as_str()]);
        }
        for cause in DeadLetterCause::ALL {
            m.dead_lettered.with_label_values(&[cause.as_str()]);
        }
        for dependency in ["lock", "postgres", "kafka", "fence"] {
            m.dependency_failures.with_label_values(&[dependency]);
        }
        registry.register(Box::new(m.batches.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.decided.clone()))?;
        registry.register(Box::new(m.decide_latency.clone()))?;
        registry.register(Box::new(m.message_age.clone()))?;
        registry.register(Box::new(m.settle_seconds.clone()))?;
        registry.register(Box::new(m.settle_blocked_seconds.clone()))?;
        registry.register(Box::new(m.fence_rejections.clone()))?;
        registry.register(Box::new(m.dead_lettered.clone()))?;
        registry.register(Box::new(m.fence_repairs.clone()))?;
        registry.register(Box::new(m.announce_retries.clone()))?;
        registry.register(Box::new(m.dependency_failures.clone()))?;
        registry.register(Box::new(m.rebalances.clone()))?;
        registry.register(Box::new(m.partition_lag.clone()))?;
        registry.register(Box::new(m.oversold.clone()))?;
        registry.register(Box::new(m.swept.clone()))?;
        registry.register(Box::new(m.decided_without_kafka.clone()))?;
        registry.register(Box::new(m.announce_backlog.clone()))?;
        registry.register(Box::new(m.announce_oldest_seconds.clone()))?;
        registry.register(Box::new(m.kafka_up.clone()))?;
        registry.register(Box::new(m.topics_recreated.clone()))?;
        turnstile_telemetry::register_process_start_time(registry)?;
        Ok(m)
    }
}
