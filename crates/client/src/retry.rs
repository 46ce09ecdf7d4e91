//! When to come back after a refusal: what `Retry-After` asks, with jitter,
//! within a bound on attempts and a deadline.
//!
//! The API refuses with `429` (shedding load, or the caller's own rate) or
//! `503` (a dependency failing), both promising that the request recorded
//! nothing and both with `Retry-After` in seconds. A client that comes back
//! exactly when asked comes back with everyone refused in the same instant,
//! so the wait is `Retry-After` times a factor drawn from `[0.5, 1.5)`: on
//! average what the server asked, spread over a second for a one-second
//! ask.
//!
//! Pure: the clock's readings and the random draws are passed in.

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use http::HeaderValue;

use crate::Error;

/// How often, and for how long, a refused request is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: NonZeroU32,
    total: Duration,
    max_retry_after: Duration,
}

impl RetryPolicy {
    /// The wait when a refusal names none, or names it in a form other than
    /// whole seconds (an HTTP date included).
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
    /// The longest `Retry-After` honoured by default.
    pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

    /// Up to `max_attempts` requests in all (the first included), none
    /// starting `total` or later after the first.
    pub fn try_new(max_attempts: u32, total: Duration) -> Result<Self, Error> {
        let max_attempts =
            NonZeroU32::new(max_attempts).ok_or(Error::InvalidSetting("a retry policy needs at least one attempt"))?;
        Ok(Self {
            max_attempts,
            total,
            max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER,
        })
    }

    /// One attempt: a refusal is the answer.
    pub const fn never() -> Self {
        Self {
            max_attempts: NonZeroU32::MIN,
            total: Duration::ZERO,
            max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER,
        }
    }

    /// The same policy honouring `Retry-After` up to `max` (a server asking
    /// for more is asked to wait `max`).
    pub const fn with_max_retry_after(self, max: Duration) -> Self {
        Self {
            max_retry_after: max,
            ..self
        }
    }

    /// The most requests sent for one call.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts.get()
    }

    /// How long after the first attempt a retry may still start.
    pub const fn total(&self) -> Duration {
        self.total
    }

    /// What a `Retry-After` header asks: whole seconds, at most the
    /// policy's maximum; [`Self::DEFAULT_RETRY_AFTER`] when it is absent or
    /// not a number of seconds.
    pub fn retry_after(&self, header: Option<&HeaderValue>) -> Duration {
        header
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Self::DEFAULT_RETRY_AFTER, Duration::from_secs)
            .min(self.max_retry_after)
    }

    /// The wait before coming back: `retry_after` times a factor in
    /// `[0.5, 1.5)` drawn from `unit`, itself in `[0, 1)` (clamped).
    pub fn wait(retry_after: Duration, unit: f64) -> Duration {
        // Short of 1.5 by more than a nanosecond's rounding at the longest wait.
        let unit = if unit.is_nan() { 0.0 } else { unit };
        retry_after.mul_f64(0.5 + unit.clamp(0.0, 0.999_999))
    }

    /// When attempt `attempt + 1` is sent, after attempt `attempt` was
    /// refused at `answered` with `retry_after`: `None` when no attempt is
    /// left, or when the wait ends at or after `deadline`.
    pub fn next_attempt(
        &self,
        attempt: u32,
        answered: Instant,
        retry_after: Duration,
        unit: f64,
        deadline: Instant,
    ) -> Option<Instant> {
        if attempt >= self.max_attempts.get() {
            return None;
        }
        answered
            .checked_add(Self::wait(retry_after, unit))
            .filter(|at| *at < deadline)
    }
}

impl Default for RetryPolicy {
    /// Five attempts within 30 seconds.
    fn default() -> Self {
        Self {
            max_attempts: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            total: Duration::from_secs(30),
            max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_bounded_and_defaults_to_one() {
        let policy = RetryPolicy::default();
        let header = |v: &'static str| HeaderValue::from_static(v);
        let secs = |h: Option<&HeaderValue>| policy.retry_after(h).as_secs();
        assert_eq!(secs(None), 1);
        assert_eq!(secs(Some(&header("3"))), 3);
        assert_eq!(secs(Some(&header(" 4 "))), 4);
        assert_eq!(secs(Some(&header("0"))), 0);
        assert_eq!(secs(Some(&header("120"))), 10);
        for unparsable in ["soon", "-1", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT", ""] {
            assert_eq!(secs(Some(&header(unparsable))), 1, "{unparsable:?}");
        }
        let short = policy.with_max_retry_after(Duration::from_secs(2));
        assert_eq!(short.retry_after(Some(&header("5"))), Duration::from_secs(2));
    }

    #[test]
    fn the_wait_is_jittered_between_half_and_one_and_a_half_times() {
        let two = Duration::from_secs(2);
        assert_eq!(RetryPolicy::wait(two, 0.0), Duration::from_secs(1));
        assert_eq!(RetryPolicy::wait(two, 0.5), Duration::from_secs(2));
        assert!(RetryPolicy::wait(two, 1.0) < Duration::from_secs(3));
        assert_eq!(RetryPolicy::wait(two, -4.0), Duration::from_secs(1));
        assert_eq!(RetryPolicy::wait(two, f64::NAN), Duration::from_secs(1));
    }

    #[test]
    fn attempts_and_the_deadline_bound_the_retries() {
        let policy = RetryPolicy::try_new(3, Duration::from_secs(30)).unwrap();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let one = Duration::from_secs(1);
        assert_eq!(policy.next_attempt(1, start, one, 0.5, deadline), Some(start + one));
        assert!(policy.next_attempt(2, start, one, 0.5, deadline).is_some());
        assert_eq!(
            policy.next_attempt(3, start, one, 0.5, deadline),
            None,
            "three attempts made"
        );
        // A wait that ends at the deadline is too late.
        let late = start + Duration::from_secs(9);
        assert_eq!(policy.next_attempt(1, late, one, 0.5, deadline), None);
        assert!(policy.next_attempt(1, late, one, 0.0, deadline).is_some());
        assert_eq!(RetryPolicy::never().next_attempt(1, start, one, 0.5, deadline), None);
        assert!(RetryPolicy::try_new(0, Duration::from_secs(1)).is_err());
    }

    proptest! {
        #[test]
        fn every_wait_is_within_the_jitter(secs in 0u64..=10, unit in any::<f64>()) {
            let asked = Duration::from_secs(secs);
            let wait = RetryPolicy::wait(asked, unit);
            prop_assert!(wait >= asked / 2);
            prop_assert!(wait <= asked.mul_f64(1.5));
            if secs > 0 {
                prop_assert!(wait < asked.mul_f64(1.5));
            }
        }

        #[test]
        fn a_retry_is_never_due_at_or_after_the_deadline(
            attempt in 1u32..10,
            answered_ms in 0u64..20_000,
            secs in 0u64..=10,
            unit in 0.0..1.0f64,
            deadline_ms in 0u64..20_000,
        ) {
            let policy = RetryPolicy::try_new(5, Duration::from_secs(30)).unwrap();
            let start = Instant::now();
            let deadline = start + Duration::from_millis(deadline_ms);
            let answered = start + Duration::from_millis(answered_ms);
            match policy.next_attempt(attempt, answered, Duration::from_secs(secs), unit, deadline) {
                Some(at) => {
                    prop_assert!(at < deadline);
                    prop_assert!(at >= answered);
                    prop_assert!(attempt < 5);
                }
                None => prop_assert!(
                    attempt >= 5 || answered + RetryPolicy::wait(Duration::from_secs(secs), unit) >= deadline
                ),
            }
        }
    }
}
