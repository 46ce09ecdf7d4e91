//! The worker's Prometheus instruments of its own: decisions, the sweep,
//! the outbox, the topics; the consume loop's, the group's and Kafka's
//! health are `turnstile-coordinator`'s (`CoordinatorParts::join`), in the
//! same registry.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use turnstile_bus::TopicKeeper;
use turnstile_claim::RejectReason;

/// Instruments for the claim pipeline's consuming side.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    pub(crate) decided: IntCounterVec,
    pub(crate) decide_latency: Histogram,
    pub(crate) oversold: IntGauge,
    pub(crate) swept: IntCounter,
    pub(crate) decided_without_kafka: IntCounter,
    pub(crate) announce_backlog: IntGauge,
    pub(crate) announce_oldest_seconds: Gauge,
    pub(crate) topics_recreated: IntCounterVec,
}

impl WorkerMetrics {
    /// Creates the instruments and registers them.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
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
            topics_recreated: TopicKeeper::counter()?,
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
        registry.register(Box::new(m.decided.clone()))?;
        registry.register(Box::new(m.decide_latency.clone()))?;
        registry.register(Box::new(m.oversold.clone()))?;
        registry.register(Box::new(m.swept.clone()))?;
        registry.register(Box::new(m.decided_without_kafka.clone()))?;
        registry.register(Box::new(m.announce_backlog.clone()))?;
        registry.register(Box::new(m.announce_oldest_seconds.clone()))?;
        registry.register(Box::new(m.topics_recreated.clone()))?;
        turnstile_telemetry::register_process_start_time(registry)?;
        Ok(m)
    }
}
