//! Client-side adaptive throttling, as Google's SRE book describes it
//! ("Handling Overload"): a client that sees its requests refused drops a
//! share of its next requests itself, before they cost the server anything.
//!
//! Over a sliding window the client counts `requests` (every request the
//! application asked to send, those dropped here included) and `accepts`
//! (requests the server took on). A request sent is counted when its
//! answer comes, with its accept if it is one, so the two grow together: a
//! burst of requests still in flight is not mistaken for refusals (counted
//! when sent, the first hundreds of a flash sale would be dropped before
//! the server had said anything). Each new request is dropped locally with
//! probability
//!
//! ```text
//! max(0, (requests - K * accepts) / (requests + 1))
//! ```
//!
//! While the server accepts everything the probability is 0 (for `K >= 1`).
//! Once it refuses, the client sends about `K` times what the server
//! accepts, so the server still sees enough traffic to notice when it can
//! take more. A smaller `K` throttles harder; the book's default is 2.
//!
//! What counts as an accept is the caller's decision; [`crate::Client`]
//! counts every HTTP answer but a `429` or `503` (see
//! [`crate::counts_as_accept`]).
//!
//! This is a pure core: time and randomness are passed in, so the tests
//! drive it with made-up instants and draws.

use std::time::{Duration, Instant};

use crate::Error;

/// How many buckets the window is cut into: the window slides one bucket
/// (a 64th of it) at a time.
const BUCKETS: usize = 64;

/// The window and `K` of [`AdaptiveThrottle`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleSettings {
    window: Duration,
    k: f64,
}

impl ThrottleSettings {
    /// The SRE book's window: two minutes.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(120);
    /// The SRE book's multiplier.
    pub const DEFAULT_K: f64 = 2.0;
    /// The shortest window: a millisecond per bucket.
    const MIN_WINDOW: Duration = Duration::from_millis(BUCKETS as u64);
    /// The longest window.
    const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

    /// Settings with a window from 64 ms to a day and a finite `k` of at
    /// least 1 (below 1 the client would drop requests from a server that
    /// accepts them all).
    pub fn try_new(window: Duration, k: f64) -> Result<Self, Error> {
        if !(Self::MIN_WINDOW..=Self::MAX_WINDOW).contains(&window) {
            return Err(Error::InvalidSetting(
                "the throttle window must be from 64 ms to one day",
            ));
        }
        if !(k.is_finite() && k >= 1.0) {
            return Err(Error::InvalidSetting(
                "the throttle's k must be a finite number of at least 1",
            ));
        }
        Ok(Self { window, k })
    }

    /// The window the counts cover.
    pub const fn window(&self) -> Duration {
        self.window
    }

    /// The multiplier of accepts.
    pub const fn k(&self) -> f64 {
        self.k
    }
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            window: Self::DEFAULT_WINDOW,
            k: Self::DEFAULT_K,
        }
    }
}

/// The drop probability for `requests` and `accepts` counted over the
/// window: `max(0, (requests - k * accepts) / (requests + 1))`, always in
/// `[0, 1)`.
pub fn rejection_probability(requests: u64, accepts: u64, k: f64) -> f64 {
    let (requests, accepts) = (requests as f64, accepts as f64);
    ((requests - k * accepts) / (requests + 1.0)).max(0.0)
}

/// The counts over the current window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Requests the application asked to send, dropped ones included.
    pub requests: u64,
    /// Requests the server took on.
    pub accepts: u64,
}

/// A request dropped by [`AdaptiveThrottle::admit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropped {
    /// The probability it was dropped with.
    pub probability: f64,
}

/// Requests and accepts over a sliding window, and the local drop decision
/// they make. The window is [`BUCKETS`] buckets of `window / 64`; it covers
/// the current bucket and the 63 before it, so between 63/64 of the window
/// and the whole window of history.
#[derive(Debug, Clone)]
pub struct AdaptiveThrottle {
    settings: ThrottleSettings,
    width: Duration,
    /// The start of bucket number 0: the first instant seen.
    origin: Option<Instant>,
    /// The number (since `origin`) of the newest bucket.
    head: u64,
    buckets: [WindowCounts; BUCKETS],
    /// The sums over `buckets`.
    total: WindowCounts,
}

impl AdaptiveThrottle {
    /// An empty window: nothing is dropped until something is refused.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            width: settings.window / BUCKETS as u32,
            origin: None,
            head: 0,
            buckets: [WindowCounts::default(); BUCKETS],
            total: WindowCounts::default(),
        }
    }

    /// The settings.
    pub const fn settings(&self) -> ThrottleSettings {
        self.settings
    }

    /// Decides whether to send a request at `now`, given `unit`, a draw
    /// uniform in `[0, 1)`: dropped when `unit` is below the current
    /// probability. A dropped request is counted now, as the SRE book asks
    /// (dropping keeps the ratio of requests to accepts high while the
    /// server refuses); one sent is counted by [`answered`](Self::answered).
    pub fn admit(&mut self, now: Instant, unit: f64) -> Result<(), Dropped> {
        let probability = self.rejection_probability(now);
        if unit < probability {
            let bucket = self.bucket(now);
            self.buckets[bucket].requests += 1;
            self.total.requests += 1;
            Err(Dropped { probability })
        } else {
            Ok(())
        }
    }

    /// Counts a request sent and answered at `now`, and whether the server
    /// took it on (`accepted`). A request that failed without an answer is
    /// answered here as not accepted.
    pub fn answered(&mut self, now: Instant, accepted: bool) {
        let bucket = self.bucket(now);
        self.buckets[bucket].requests += 1;
        self.total.requests += 1;
        if accepted {
            self.buckets[bucket].accepts += 1;
            self.total.accepts += 1;
        }
    }

    /// The probability a request sent at `now` is dropped.
    pub fn rejection_probability(&mut self, now: Instant) -> f64 {
        let counts = self.counts(now);
        rejection_probability(counts.requests, counts.accepts, self.settings.k)
    }

    /// The counts over the window that ends at `now`.
    pub fn counts(&mut self, now: Instant) -> WindowCounts {
        self.advance(now);
        self.total
    }

    /// The index of `now`'s bucket, once the window has moved to it.
    fn bucket(&mut self, now: Instant) -> usize {
        self.advance(now);
        (self.head % BUCKETS as u64) as usize
    }

    /// Moves the window so that its newest bucket holds `now`, emptying the
    /// buckets it leaves behind. An instant before the newest bucket (a
    /// clock read late by a concurrent caller) counts in the newest bucket.
    fn advance(&mut self, now: Instant) {
        let origin = *self.origin.get_or_insert(now);
        let elapsed = now.saturating_duration_since(origin).as_nanos();
        let number = u64::try_from(elapsed / self.width.as_nanos().max(1)).unwrap_or(u64::MAX);
        if number <= self.head {
            return;
        }
        if number - self.head >= BUCKETS as u64 {
            self.buckets = [WindowCounts::default(); BUCKETS];
            self.total = WindowCounts::default();
        } else {
            for gone in self.head + 1..=number {
                let bucket = &mut self.buckets[(gone % BUCKETS as u64) as usize];
                self.total.requests -= bucket.requests;
                self.total.accepts -= bucket.accepts;
                *bucket = WindowCounts::default();
            }
        }
        self.head = number;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn throttle(window_ms: u64, k: f64) -> AdaptiveThrottle {
        AdaptiveThrottle::new(ThrottleSettings::try_new(Duration::from_millis(window_ms), k).unwrap())
    }

    #[test]
    fn settings_are_checked() {
        assert!(ThrottleSettings::try_new(Duration::from_secs(120), 2.0).is_ok());
        assert!(ThrottleSettings::try_new(Duration::from_millis(63), 2.0).is_err());
        assert!(ThrottleSettings::try_new(Duration::from_secs(90_000), 2.0).is_err());
        for k in [0.0, 0.99, -1.0, f64::NAN, f64::INFINITY] {
            assert!(ThrottleSettings::try_new(Duration::from_secs(1), k).is_err(), "{k}");
        }
        assert_eq!(ThrottleSettings::default().k(), 2.0);
        assert_eq!(ThrottleSettings::default().window(), Duration::from_secs(120));
    }

    #[test]
    fn the_probability_is_the_books_formula() {
        assert_eq!(rejection_probability(0, 0, 2.0), 0.0);
        assert_eq!(rejection_probability(100, 100, 2.0), 0.0);
        assert_eq!(rejection_probability(100, 50, 2.0), 0.0);
        // 100 requests, 10 accepted: (100 - 20) / 101.
        assert!((rejection_probability(100, 10, 2.0) - 80.0 / 101.0).abs() < 1e-12);
        assert!((rejection_probability(100, 0, 1.0) - 100.0 / 101.0).abs() < 1e-12);
    }

    #[test]
    fn a_server_that_refuses_everything_is_spared_most_requests() {
        let mut t = throttle(120_000, 2.0);
        let start = Instant::now();
        let mut sent = 0;
        for n in 0..10_000u64 {
            // Evenly spread draws: the share dropped is the probability.
            let unit = (n % 100) as f64 / 100.0;
            let at = start + Duration::from_millis(n);
            if t.admit(at, unit).is_ok() {
                sent += 1;
                t.answered(at, false);
            }
        }
        assert!(sent < 200, "{sent} of 10 000 sent to a server that accepts nothing");
        assert!(t.rejection_probability(start + Duration::from_secs(10)) > 0.99);
    }

    #[test]
    fn the_window_forgets() {
        let mut t = throttle(64_000, 2.0);
        let start = Instant::now();
        for n in 0..100 {
            let at = start + Duration::from_millis(n);
            if t.admit(at, 0.99).is_ok() {
                t.answered(at, false);
            }
        }
        assert!(t.rejection_probability(start + Duration::from_secs(1)) > 0.9);
        // Still inside the window: 63 buckets of a second later.
        assert_eq!(t.counts(start + Duration::from_secs(63)).requests, 100);
        // The bucket of the first second has left the window.
        assert_eq!(t.counts(start + Duration::from_secs(64)), WindowCounts::default());
        assert_eq!(t.rejection_probability(start + Duration::from_secs(64)), 0.0);
    }

    #[test]
    fn an_instant_read_late_counts_in_the_newest_bucket() {
        let mut t = throttle(64_000, 2.0);
        let start = Instant::now();
        assert!(t.admit(start + Duration::from_secs(10), 0.5).is_ok());
        t.answered(start + Duration::from_secs(9), true);
        let counts = t.counts(start + Duration::from_secs(10));
        assert_eq!((counts.requests, counts.accepts), (1, 1));
        assert_eq!(t.counts(start + Duration::from_secs(74)), WindowCounts::default());
    }

    #[test]
    fn a_burst_before_any_answer_is_not_dropped() {
        let mut t = throttle(120_000, 2.0);
        let start = Instant::now();
        for n in 0..10_000u64 {
            assert!(
                t.admit(start + Duration::from_micros(n), 0.0).is_ok(),
                "request {n} dropped"
            );
        }
    }

    /// One step of a run: time moves on, then a request is asked for and,
    /// if sent, answered at once, accepted or not.
    #[derive(Debug, Clone)]
    struct Step {
        after_ms: u64,
        unit: f64,
        accepted: bool,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = (0u64..3_000, 0.0..1.0f64, any::<bool>()).prop_map(|(after_ms, unit, accepted)| Step {
            after_ms,
            unit,
            accepted,
        });
        proptest::collection::vec(step, 0..300)
    }

    proptest! {
        /// The buckets count what a list of every event, filtered to the
        /// window's buckets, counts; each drop decision is the formula's.
        #[test]
        fn counts_and_decisions_match_a_list_of_every_event(
            steps in steps(),
            window_s in 1u64..200,
            k in 1.0..4.0f64,
        ) {
            let settings = ThrottleSettings::try_new(Duration::from_secs(window_s), k).unwrap();
            let width = settings.window() / BUCKETS as u32;
            let mut t = AdaptiveThrottle::new(settings);
            let start = Instant::now();
            // The window's buckets count from the first instant it sees.
            prop_assert_eq!(t.counts(start), WindowCounts::default());
            let mut at = Duration::ZERO;
            // (bucket number, is an accept): a request is (b, false), its
            // accept a second event (b, true).
            let mut events: Vec<(u64, bool)> = Vec::new();
            let bucket_of = |at: Duration| (at.as_nanos() / width.as_nanos()) as u64;
            for step in steps {
                at += Duration::from_millis(step.after_ms);
                let now = bucket_of(at);
                let in_window = |b: &u64| *b + BUCKETS as u64 > now;
                let requests = events.iter().filter(|(b, a)| in_window(b) && !a).count() as u64;
                let accepts = events.iter().filter(|(b, a)| in_window(b) && *a).count() as u64;
                let expected = rejection_probability(requests, accepts, k);
                prop_assert!((0.0..1.0).contains(&expected));
                let decision = t.admit(start + at, step.unit);
                prop_assert_eq!(decision.is_err(), step.unit < expected);
                events.push((now, false));
                let accepted = decision.is_ok() && step.accepted;
                if decision.is_ok() {
                    t.answered(start + at, step.accepted);
                }
                if accepted {
                    events.push((now, true));
                }
                let counts = t.counts(start + at);
                prop_assert_eq!(counts.requests, requests + 1);
                prop_assert_eq!(counts.accepts, accepts + u64::from(accepted));
            }
        }

        /// Nothing is dropped while every request is accepted.
        #[test]
        fn a_server_that_accepts_everything_loses_nothing(
            gaps in proptest::collection::vec(0u64..5_000, 1..300),
            units in proptest::collection::vec(0.0..1.0f64, 300),
            k in 1.0..10.0f64,
        ) {
            let mut t = AdaptiveThrottle::new(ThrottleSettings::try_new(Duration::from_secs(120), k).unwrap());
            let mut now = Instant::now();
            for (gap, unit) in gaps.into_iter().zip(units) {
                now += Duration::from_millis(gap);
                prop_assert!(t.admit(now, unit).is_ok());
                t.answered(now, true);
            }
        }

        /// A refusal never makes dropping less likely, and an accept never more.
        #[test]
        fn refusals_raise_and_accepts_lower_the_probability(
            requests in 0u64..1_000_000,
            accepts in 0u64..1_000_000,
            k in 1.0..10.0f64,
        ) {
            let p = rejection_probability(requests, accepts, k);
            prop_assert!((0.0..1.0).contains(&p));
            prop_assert!(rejection_probability(requests + 1, accepts, k) >= p);
            prop_assert!(rejection_probability(requests, accepts + 1, k) <= p);
        }
    }
}
