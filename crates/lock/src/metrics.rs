//! Instruments for lock operations.
//!
//! With the `prometheus` feature, [`LockMetricFamilies`] registers them in
//! the application's own `prometheus::Registry` under a prefix of its
//! choosing, and the `backend` label is resolved once so the hot path
//! touches only pre-resolved atomics. Without the feature every instrument
//! is a no-op and the crate carries no metrics dependency.

#[cfg(feature = "prometheus")]
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Without the `prometheus` feature: instruments that record nothing.
#[cfg(not(feature = "prometheus"))]
mod silent {
    #[derive(Debug, Clone, Default)]
    pub(crate) struct IntCounter;
    impl IntCounter {
        pub(crate) fn inc(&self) {}
    }

    #[derive(Debug, Clone, Default)]
    pub(crate) struct Histogram;
    impl Histogram {
        pub(crate) fn observe(&self, _value: f64) {}
    }
}
#[cfg(not(feature = "prometheus"))]
use silent::{Histogram, IntCounter};

/// The prefix of the metric names unless one is given.
pub const DEFAULT_METRIC_PREFIX: &str = "turnstile_lock";

/// Latency buckets in seconds, from 100 µs (a local Redis round trip) to
/// 10 s (a long wait behind a hot lock).
#[cfg(feature = "prometheus")]
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
/// backend through their `backend` label (feature `prometheus`).
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
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

#[cfg(feature = "prometheus")]
impl LockMetricFamilies {
    /// Creates the families, named `turnstile_lock_*`, and registers them in
    /// `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Self::register_with_prefix(registry, DEFAULT_METRIC_PREFIX)
    }

    /// Creates the families, named `<prefix>_*` (for example
    /// `<prefix>_acquisitions_total`), and registers them in `registry`.
    pub fn register_with_prefix(registry: &Registry, prefix: &str) -> Result<Self, prometheus::Error> {
        let name = |suffix: &str| format!("{prefix}_{suffix}");
        let histogram = |suffix: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name(suffix), help).buckets(LATENCY_BUCKETS.to_vec()),
                &["backend"],
            )
        };
        let families = Self {
            attempt_seconds: histogram(
                "attempt_duration_seconds",
                "Duration of one acquire attempt: one round trip to the lock store.",
            )?,
            wait_seconds: histogram(
                "wait_duration_seconds",
                "Time from asking for a lock to holding it, waits behind other holders included.",
            )?,
            hold_seconds: histogram("hold_duration_seconds", "Time a lease was held, from grant to release.")?,
            acquisitions: IntCounterVec::new(
                Opts::new(
                    name("acquisitions_total"),
                    "Acquire outcomes: acquired, contended (an attempt found the lock held), timeout.",
                ),
                &["backend", "outcome"],
            )?,
            renewals: IntCounterVec::new(
                Opts::new(name("renewals_total"), "Lease renewals by outcome."),
                &["backend", "outcome"],
            )?,
            leases_lost: IntCounterVec::new(
                Opts::new(
                    name("leases_lost_total"),
                    "Leases whose holder was told they were lost before release.",
                ),
                &["backend"],
            )?,
            backend_errors: IntCounterVec::new(
                Opts::new(
                    name("backend_errors_total"),
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
    #[cfg(feature = "prometheus")]
    pub fn unregistered(backend: &str) -> Self {
        match LockMetricFamilies::register(&Registry::new()) {
            Ok(families) => families.for_backend(backend),
            // Registering fixed, valid names in a fresh registry cannot fail.
            Err(e) => unreachable!("lock metric definitions are invalid: {e}"),
        }
    }

    /// Instruments that record nothing (without the `prometheus` feature,
    /// the only kind).
    #[cfg(not(feature = "prometheus"))]
    pub fn unregistered(_backend: &str) -> Self {
        Self {
            attempt_seconds: Histogram,
            wait_seconds: Histogram,
            hold_seconds: Histogram,
            acquired: IntCounter,
            contended: IntCounter,
            timeouts: IntCounter,
            renewals_ok: IntCounter,
            renewals_failed: IntCounter,
            leases_lost: IntCounter,
            backend_errors: IntCounter,
        }
    }
}
