//! Prometheus instruments for lock operations. Services register them in
//! their own [`prometheus::Registry`]; the `backend` label is resolved once
//! here so the hot path touches only pre-resolved atomics.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Latency buckets in seconds, from 100 µs (a local Redis round trip) to
/// 10 s (a long wait behind a hot lock).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The lock instruments for one backend.
#[derive(Debug, Clone)]
pub struct LockMetrics {
    pub(crate) attempt_seconds: Histogram,
    pub(crate) wait_seconds: Histogram,
    pub(crate) hold_seconds: Histogram,
    pub(crate) acquired: IntCounter,
    pub(crate) contended: IntCounter,
    pub(crate) timeouts: IntCounter,
    pub(crate) renewals_ok: IntCounter,
    pub(crate) renewals_failed: IntCounter,
    pub(crate) leases_lost: IntCounter,
    pub(crate) backend_errors: IntCounter,
}

/// The metric families, registered once per registry and shared by every
/// backend through their `backend` label.
#[derive(Debug, Clone)]
pub struct LockMetricFamilies {
    attempt_seconds: HistogramVec,
    wait_seconds: HistogramVec,
    hold_seconds: HistogramVec,
    acquisitions: IntCounterVec,
    renewals: IntCounterVec,
    leases_lost: IntCounterVec,
    backend_errors: IntCounterVec,
}

impl LockMetricFamilies {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["backend"],
            )
        };
        let families = Self {
            attempt_seconds: histogram(
                "turnstile_lock_attempt_duration_seconds",
                "Duration of one acquire attempt: one round trip to the lock store.",
            )?,
            wait_seconds: histogram(
                "turnstile_lock_wait_duration_seconds",
                "Time from asking for a lock to holding it, waits behind other holders included.",
            )?,
            hold_seconds: histogram(
                "turnstile_lock_hold_duration_seconds",
                "Time a lease was held, from grant to release.",
            )?,
            acquisitions: IntCounterVec::new(
                Opts::new(
                    "turnstile_lock_acquisitions_total",
                    "Acquire outcomes: acquired, contended (an attempt found the lock held), timeout.",
                ),
                &["backend", "outcome"],
            )?,
            renewals: IntCounterVec::new(
                Opts::new("turnstile_lock_renewals_total", "Lease renewals by outcome."),
                &["backend", "outcome"],
            )?,
            leases_lost: IntCounterVec::new(
                Opts::new(
                    "turnstile_lock_leases_lost_total",
                    "Leases whose holder was told they were lost before release.",
                ),
                &["backend"],
            )?,
            backend_errors: IntCounterVec::new(
                Opts::new(
                    "turnstile_lock_backend_errors_total",
                    "Lock store calls that failed (unreachable, timed out, no quorum).",
                ),
                &["backend"],
            )?,
        };
        registry.register(Box::new(families.attempt_seconds.clone()))?;
        registry.register(Box::new(families.wait_seconds.clone()))?;
        registry.register(Box::new(families.hold_seconds.clone()))?;
        registry.register(Box::new(families.acquisitions.clone()))?;
        registry.register(Box::new(families.renewals.clone()))?;
        registry.register(Box::new(families.leases_lost.clone()))?;
        registry.register(Box::new(families.backend_errors.clone()))?;
        Ok(families)
    }

    /// The instruments for one backend label.
    pub fn for_backend(&self, backend: &str) -> LockMetrics {
        LockMetrics {
            attempt_seconds: self.attempt_seconds.with_label_values(&[backend]),
            wait_seconds: self.wait_seconds.with_label_values(&[backend]),
            hold_seconds: self.hold_seconds.with_label_values(&[backend]),
            acquired: self.acquisitions.with_label_values(&[backend, "acquired"]),
            contended: self.acquisitions.with_label_values(&[backend, "contended"]),
            timeouts: self.acquisitions.with_label_values(&[backend, "timeout"]),
            renewals_ok: self.renewals.with_label_values(&[backend, "ok"]),
            renewals_failed: self.renewals.with_label_values(&[backend, "failed"]),
            leases_lost: self.leases_lost.with_label_values(&[backend]),
            backend_errors: self.backend_errors.with_label_values(&[backend]),
        }
    }
}

impl LockMetrics {
    /// Instruments registered nowhere: for callers that do not export metrics.
    pub fn unregistered(backend: &str) -> Self {
        match LockMetricFamilies::register(&Registry::new()) {
            Ok(families) => families.for_backend(backend),
            // Registering fixed, valid names in a fresh registry cannot fail.
            Err(e) => unreachable!("lock metric definitions are invalid: {e}"),
        }
    }
}
