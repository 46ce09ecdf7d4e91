//! The coordinator's Prometheus instruments. Their names are the claim
//! worker's, which dashboards and alerts read: `turnstile_worker_*` for the
//! loop, `turnstile_fence_*`, `turnstile_dead_lettered_total` and
//! `turnstile_announce_retries_total`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Dead-letter causes of the coordinator's own: an undecodable or invalid
/// message, and events that failed the same way too often.
pub const OWN_CAUSES: [&str; 2] = ["invalid", "poison"];

/// Dependencies of the coordinator's own: the lock store, Kafka, and the
/// fence (a refusal that repairing did not cure).
pub const OWN_DEPENDENCIES: [&str; 3] = ["lock", "kafka", "fence"];

/// Instruments of the consume loop, the lease and the dead letters.
#[derive(Debug, Clone)]
pub struct CoordinatorMetrics {
    pub(crate) batches: IntCounter,
    pub(crate) batch_size: Histogram,
    pub(crate) message_age: Histogram,
    pub(crate) settle_seconds: Histogram,
    pub(crate) settle_blocked_seconds: Histogram,
    pub(crate) fence_rejections: IntCounter,
    pub(crate) fence_repairs: IntCounter,
    pub(crate) dead_lettered: IntCounterVec,
    pub(crate) announce_retries: IntCounter,
    pub(crate) dependency_failures: IntCounterVec,
}

impl CoordinatorMetrics {
    /// `turnstile_announce_retries_total`, for an announcer's own relay of
    /// what it owes.
    pub fn announce_retries(&self) -> &IntCounter {
        &self.announce_retries
    }

    /// Creates the instruments and registers them, with every cause and
    /// dependency label (the coordinator's and the handler's) at 0.
    pub fn register(registry: &Registry, causes: &[&str], dependencies: &[&str]) -> Result<Self, prometheus::Error> {
        let buckets = |start, factor, count| prometheus::exponential_buckets(start, factor, count);
        let m = Self {
            batches: IntCounter::new("turnstile_worker_batches_total", "Batches of events processed.")?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("turnstile_worker_batch_size", "Events per batch.")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
            )?,
            message_age: Histogram::with_opts(
                HistogramOpts::new(
                    "turnstile_worker_message_age_seconds",
                    "Age of an event when the worker takes it from Kafka: from the producer's timestamp to now.",
                )
                .buckets(buckets(0.0005, 2.0, 16)?),
            )?,
            settle_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "turnstile_worker_settle_seconds",
                    "Time from a handled batch's hand-over to its offset being stored: Kafka acknowledging its \
                     announcements and dead letters, in batch order.",
                )
                .buckets(buckets(0.001, 2.0, 16)?),
            )?,
            settle_blocked_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "turnstile_worker_settle_blocked_seconds",
                    "Time the consume loop waited to hand a handled batch over, because too many batches were \
                     still waiting for Kafka's acknowledgements.",
                )
                .buckets(buckets(0.0001, 4.0, 10)?),
            )?,
            fence_rejections: IntCounter::new(
                "turnstile_fence_rejections_total",
                "Batches the store refused because their fencing token was stale.",
            )?,
            fence_repairs: IntCounter::new(
                "turnstile_fence_repairs_total",
                "Times the lock's token counter was raised above the store's fence after a stale-token refusal.",
            )?,
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    "turnstile_dead_lettered_total",
                    "Messages sent to the dead-letter topic, by cause: undecodable or invalid events (invalid), \
                     events the handler refused (its own causes), batches that failed the same way too often \
                     (poison).",
                ),
                &["cause"],
            )?,
            announce_retries: IntCounter::new(
                "turnstile_announce_retries_total",
                "Announcements or dead letters sent again because Kafka did not acknowledge them.",
            )?,
            dependency_failures: IntCounterVec::new(
                Opts::new(
                    "turnstile_worker_dependency_failures_total",
                    "Batches abandoned (and retried later) because a dependency failed.",
                ),
                &["dependency"],
            )?,
        };
        for cause in OWN_CAUSES.iter().chain(causes) {
            m.dead_lettered.with_label_values(&[cause]);
        }
        for dependency in OWN_DEPENDENCIES.iter().chain(dependencies) {
            m.dependency_failures.with_label_values(&[dependency]);
        }
        registry.register(Box::new(m.batches.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.message_age.clone()))?;
        registry.register(Box::new(m.settle_seconds.clone()))?;
        registry.register(Box::new(m.settle_blocked_seconds.clone()))?;
        registry.register(Box::new(m.fence_rejections.clone()))?;
        registry.register(Box::new(m.fence_repairs.clone()))?;
        registry.register(Box::new(m.dead_lettered.clone()))?;
        registry.register(Box::new(m.announce_retries.clone()))?;
        registry.register(Box::new(m.dependency_failures.clone()))?;
        Ok(m)
    }
}
