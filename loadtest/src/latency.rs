//! Latency recording: one HDR histogram per task, merged once at the end, so
//! the hot loop never shares a cache line with another task.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Microsecond latencies from 1 µs to 5 minutes at 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::with_precision(3)
    }

    /// An empty recorder at 2 significant digits (1%): about a tenth of the
    /// memory, for the many per-second histograms of a time series.
    pub fn coarse() -> Self {
        Self::with_precision(2)
    }

    fn with_precision(significant_digits: u8) -> Self {
        match Histogram::new_with_bounds(1, 300_000_000, significant_digits) {
            Ok(h) => Self(h),
            // The bounds are constants that satisfy hdrhistogram's rules.
            Err(e) => unreachable!("invalid histogram bounds: {e}"),
        }
    }

    /// Records one latency, clamped into the histogram's range.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    /// Folds another recorder into this one.
    pub fn merge(&mut self, other: &Self) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The number of recorded values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `quantile` (0.0..=1.0) in milliseconds, or `None`
    /// when nothing was recorded.
    pub fn quantile_ms(&self, quantile: f64) -> Option<f64> {
        (self.count() > 0).then(|| self.quantile_us(quantile) as f64 / 1000.0)
    }

    /// The latency at `quantile` (0.0..=1.0) in microseconds.
    pub fn quantile_us(&self, quantile: f64) -> u64 {
        self.0.value_at_quantile(quantile)
    }

    /// The largest recorded latency in microseconds.
    pub fn max_us(&self) -> u64 {
        self.0.max()
    }
}
