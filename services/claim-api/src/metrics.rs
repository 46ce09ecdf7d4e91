//! The API's Prometheus instruments. Labels are bounded: route templates,
//! status classes and fixed causes, never ids.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Instruments for the producing side of the claim pipeline.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    pub(crate) http_requests: IntCounterVec,
    pub(crate) http_duration: HistogramVec,
    pub(crate) accepted: IntCounter,
    pub(crate) replays: IntCounter,
    pub(crate) unpublished: IntCounter,
    pub(crate) throttled: IntCounterVec,
    pub(crate) produce_duration: Histogram,
    pub(crate) accept_batch_size: Histogram,
    pub(crate) consumer_lag: IntGauge,
    pub(crate) pending_claims: IntGauge,
    pub(crate) circuit_open: IntGaugeVec,
    pub(crate) admission_limit: IntGauge,
    pub(crate) admission_in_flight: IntGauge,
    pub(crate) admission_queued: IntGauge,
    pub(crate) admission_line: IntGauge,
    pub(crate) tickets: IntCounterVec,
    pub(crate) readiness_checks: IntCounter,
    pub(crate) decision_waiters: IntGauge,
    pub(crate) auth_refusals: IntCounterVec,
    pub(crate) replica_fallbacks: IntCounterVec,
    pub(crate) kafka_up: IntGauge,
    pub(crate) topics_recreated: IntCounterVec,
    pub(crate) door_answers: IntCounterVec,
    pub(crate) door_known: IntGaugeVec,
}

impl ApiMetrics {
    /// Creates the instruments and registers them.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let (door_answers, door_known) = crate::door::Door::instruments()?;
        let m = Self {
            http_requests: IntCounterVec::new(
                Opts::new(
                    "turnstile_http_requests_total",
                    "HTTP requests by route template, method and status class.",
                ),
                &["route", "method", "status_class"],
            )?,
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "turnstile_http_request_duration_seconds",
                    "HTTP request latency by route template.",
                )
                .buckets(latency.clone()),
                &["route", "method"],
            )?,
            accepted: IntCounter::new(
                "turnstile_claims_accepted_total",
                "Claims accepted (202): recorded in Postgres and handed to Kafka.",
            )?,
            unpublished: IntCounter::new(
                "turnstile_claims_unpublished_total",
                "Accepted claims whose ClaimRequested Kafka did not take; the worker's sweeper decides them.",
            )?,
            replays: IntCounter::new(
                "turnstile_idempotent_replays_total",
                "Requests answered from an earlier request with the same Idempotency-Key.",
            )?,
            auth_refusals: IntCounterVec::new(
                Opts::new(
                    "turnstile_auth_refusals_total",
                    "Requests to /v1 refused before their handler, by reason: missing, malformed or unknown key \
                     (401), tenant_mismatch (403), rate_key (429).",
                ),
                &["reason"],
            )?,
            replica_fallbacks: IntCounterVec::new(
                Opts::new(
                    "turnstile_replica_fallbacks_total",
                    "Reads the read replica could not answer and the primary did, by reason: missing (the row \
                     had not replicated yet), unavailable.",
                ),
                &["reason"],
            )?,
            throttled: IntCounterVec::new(
                Opts::new("turnstile_claims_throttled_total", "Claims refused with 429, by cause."),
                &["cause"],
            )?,
            produce_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "turnstile_kafka_produce_duration_seconds",
                    "Time for Kafka to acknowledge a ClaimRequested.",
                )
                .buckets(latency),
            )?,
            accept_batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "turnstile_accept_batch_size",
                    "Claims recorded per admission transaction (group commit).",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            consumer_lag: IntGauge::new(
                "turnstile_kafka_consumer_lag",
                "Claims published but not yet committed by the worker group, summed over partitions.",
            )?,
            pending_claims: IntGauge::new(
                "turnstile_pending_claims",
                "Claims recorded and not yet decided, as last counted (up to TURNSTILE_MAX_PENDING_CLAIMS + 1); -1 while unknown.",
            )?,
            circuit_open: IntGaugeVec::new(
                Opts::new(
                    "turnstile_circuit_open",
                    "1 while the circuit breaker of a dependency is open.",
                ),
                &["dependency"],
            )?,
            admission_limit: IntGauge::new(
                "turnstile_admission_limit",
                "Claims admission lets in at once now (the adaptive concurrency limit).",
            )?,
            readiness_checks: IntCounter::new(
                "turnstile_readiness_checks_total",
                "Checks of the dependencies made for /readyz (at most one a second).",
            )?,
            decision_waiters: IntGauge::new(
                "turnstile_decision_waiters",
                "Requests waiting for their claim's decision (Prefer: wait).",
            )?,
            admission_in_flight: IntGauge::new(
                "turnstile_admission_in_flight",
                "Claims holding an admission slot now (being read, parsed or recorded).",
            )?,
            admission_queued: IntGauge::new(
                "turnstile_admission_queued",
                "Claims waiting in the admission queue for a slot, oldest first attempt first.",
            )?,
            admission_line: IntGauge::new(
                "turnstile_admission_line",
                "Claims sent away with a ticket and not let in yet (nor lapsed): the line ahead of a newcomer.",
            )?,
            tickets: IntCounterVec::new(
                Opts::new(
                    "turnstile_tickets_total",
                    "Turnstile-Ticket headers issued with a 429, presented and honoured (the claim kept its first \
                     attempt's place), or presented and ignored (forged, expired or another tenant's or key's).",
                ),
                &["outcome"],
            )?,
            kafka_up: turnstile_bus::KafkaHealth::gauge()?,
            topics_recreated: turnstile_bus::TopicKeeper::counter()?,
            door_answers,
            door_known,
        };
        m.pending_claims.set(-1);
        // Every cause exists from the start: a 429 rate reads 0, not absent.
        for cause in crate::admission::ShedCause::ALL {
            m.throttled.with_label_values(&[cause.as_str()]);
        }
        m.throttled.with_label_values(&["rate_user"]);
        for outcome in crate::admission::TicketOutcome::ALL {
            m.tickets.with_label_values(&[outcome.as_str()]);
        }
        for reason in [
            "missing",
            "malformed",
            "unknown",
            "tenant_mismatch",
            "certificate_tenant",
            "rate_key",
        ] {
            m.auth_refusals.with_label_values(&[reason]);
        }
        m.circuit_open.with_label_values(&["postgres"]);
        registry.register(Box::new(m.http_requests.clone()))?;
        registry.register(Box::new(m.http_duration.clone()))?;
        registry.register(Box::new(m.accepted.clone()))?;
        registry.register(Box::new(m.replays.clone()))?;
        registry.register(Box::new(m.unpublished.clone()))?;
        registry.register(Box::new(m.throttled.clone()))?;
        registry.register(Box::new(m.replica_fallbacks.clone()))?;
        registry.register(Box::new(m.produce_duration.clone()))?;
        registry.register(Box::new(m.accept_batch_size.clone()))?;
        registry.register(Box::new(m.consumer_lag.clone()))?;
        registry.register(Box::new(m.pending_claims.clone()))?;
        registry.register(Box::new(m.circuit_open.clone()))?;
        registry.register(Box::new(m.admission_limit.clone()))?;
        registry.register(Box::new(m.admission_in_flight.clone()))?;
        registry.register(Box::new(m.admission_queued.clone()))?;
        registry.register(Box::new(m.admission_line.clone()))?;
        registry.register(Box::new(m.tickets.clone()))?;
        registry.register(Box::new(m.readiness_checks.clone()))?;
        registry.register(Box::new(m.decision_waiters.clone()))?;
        registry.register(Box::new(m.auth_refusals.clone()))?;
        registry.register(Box::new(m.kafka_up.clone()))?;
        registry.register(Box::new(m.topics_recreated.clone()))?;
        registry.register(Box::new(m.door_answers.clone()))?;
        registry.register(Box::new(m.door_known.clone()))?;
        turnstile_telemetry::register_process_start_time(registry)?;
        Ok(m)
    }
}
