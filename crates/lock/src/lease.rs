//! Pure lease arithmetic: validity, clock drift, renewal cadence, quorum and
//! jittered waiting. No I/O and no clock reads: callers pass the times in, so
//! every rule here is unit- and property-tested.

use std::time::Duration;

/// The fraction of a ttl assumed lost to clock drift between client and
/// server (Redlock's drift factor).
pub const CLOCK_DRIFT_FACTOR: f64 = 0.01;

/// A fixed allowance added to the drift for timer granularity.
pub const CLOCK_DRIFT_FLOOR: Duration = Duration::from_millis(2);

/// How much of a lease's ttl the holder must not count on: clocks on the
/// client and the server may run at slightly different rates.
pub fn clock_drift(ttl: Duration) -> Duration {
    ttl.mul_f64(CLOCK_DRIFT_FACTOR) + CLOCK_DRIFT_FLOOR
}

/// How long a lease granted with `ttl` may still be relied on, given that
/// `elapsed` passed between sending the request and receiving the grant.
///
/// Returns `None` when nothing is left: the grant arrived too late to use.
/// The server started counting the ttl somewhere inside `elapsed`; assuming
/// the earliest moment (the send) is the safe side.
pub fn validity(ttl: Duration, elapsed: Duration) -> Option<Duration> {
    ttl.checked_sub(elapsed)
        .and_then(|left| left.checked_sub(clock_drift(ttl)))
        .filter(|left| !left.is_zero())
}

/// How often a watchdog renews a lease: three chances before it expires.
pub fn renew_interval(ttl: Duration) -> Duration {
    ttl / 3
}

/// The number of nodes out of `nodes` that must agree for a Redlock grant.
pub const fn quorum(nodes: usize) -> usize {
    nodes / 2 + 1
}

/// Bounds for the delay between two attempts to take a busy lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollBackoff {
    /// The ceiling of the first delay.
    pub base: Duration,
    /// The ceiling that exponential growth stops at.
    pub cap: Duration,
}

impl Default for PollBackoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(250),
        }
    }
}

impl PollBackoff {
    /// Validates the bounds: a zero base would spin, and a cap below the base
    /// would make the exponent meaningless.
    pub fn try_new(base: Duration, cap: Duration) -> Result<Self, &'static str> {
        if base.is_zero() {
            return Err("poll backoff base must be greater than zero");
        }
        if cap < base {
            return Err("poll backoff cap must not be below its base");
        }
        Ok(Self { base, cap })
    }

    /// The delay before attempt number `attempt` (0-based), with full jitter:
    /// uniformly drawn from `[0, min(cap, base * 2^attempt, hint)]`, where
    /// `unit` is the uniform draw in `[0, 1)` and `hint` is how long the lock
    /// is known to stay held (its remaining ttl), if known.
    ///
    /// Full jitter (rather than equal or no jitter) spreads waiters that were
    /// refused together, so they do not come back together.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>, unit: f64) -> Duration {
        let exp = self
            .base
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.cap);
        let mut ceiling = exp.min(self.cap);
        if let Some(hint) = hint {
            // The lock expires by then at the latest; waiting past it is waste.
            ceiling = ceiling.min(hint + Duration::from_millis(1));
        }
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn drift_follows_the_redlock_formula() {
        assert_eq!(clock_drift(Duration::from_secs(10)), Duration::from_millis(102));
    }

    #[test]
    fn late_grant_has_no_validity() {
        let ttl = Duration::from_millis(100);
        assert_eq!(validity(ttl, Duration::from_millis(97)), None);
        assert_eq!(validity(ttl, Duration::from_millis(200)), None);
        assert_eq!(validity(ttl, Duration::ZERO), Some(Duration::from_millis(97)));
    }

    #[test]
    fn quorum_is_a_strict_majority() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
    }

    #[test]
    fn backoff_rejects_bad_bounds() {
        assert!(PollBackoff::try_new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(PollBackoff::try_new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }

    proptest! {
        #[test]
        fn validity_never_exceeds_ttl_minus_drift(ttl_ms in 1u64..600_000, elapsed_ms in 0u64..600_000) {
            let ttl = Duration::from_millis(ttl_ms);
            if let Some(v) = validity(ttl, Duration::from_millis(elapsed_ms)) {
                prop_assert!(v + clock_drift(ttl) + Duration::from_millis(elapsed_ms) <= ttl);
            }
        }

        #[test]
        fn any_two_quorums_overlap(nodes in 1usize..50) {
            // Two disjoint quorums would let two clients hold the lock at once.
            prop_assert!(2 * quorum(nodes) > nodes);
        }

        #[test]
        fn backoff_stays_within_bounds(attempt in 0u32..100, unit in 0.0f64..1.0, hint_ms in proptest::option::of(0u64..10_000)) {
            let backoff = PollBackoff::default();
            let hint = hint_ms.map(Duration::from_millis);
            let d = backoff.delay(attempt, hint, unit);
            prop_assert!(d <= backoff.cap);
            if let Some(h) = hint {
                prop_assert!(d <= h + Duration::from_millis(1));
            }
        }
    }
}
