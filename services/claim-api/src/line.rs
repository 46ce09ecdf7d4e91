//! The line: the claims sent away with a ticket and not let in yet, in the
//! order of their first attempts, and how long each should stay away.
//!
//! Nobody stands in this line: a refused shopper is told to come back
//! after `Retry-After` seconds, and the line only counts them, by the
//! 100 ms of their first attempt. A shopper's position is the number
//! counted before their first attempt, and the wait is that position
//! divided by how many claims the API let in per second lately: the time
//! until the ones ahead are through, at the pace the pipeline really takes
//! them. Counted tickets leave the line when their holder is let in, or
//! lapse when they have not come back within one and a half times their
//! wait (the client's jitter reaches 1.5×) plus a second.
//!
//! Pure: the caller passes the time, as Unix milliseconds.

use std::collections::VecDeque;

/// The line counts first attempts in slices of this many milliseconds.
pub const BUCKET_MS: u64 = 100;

/// The longest wait a `Retry-After` asks for.
pub const MAX_RETRY_AFTER_SECS: u64 = 30;

/// The admission rate is measured over this many buckets (one second).
const RATE_BUCKETS: usize = 10;

/// The rate assumed while none is measured, or a lower one: a wait computed
/// from it is at most [`MAX_RETRY_AFTER_SECS`] for a line of 3 000.
const FLOOR_RATE: f64 = 100.0;

/// Where a refused claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Tickets counted before this one's first attempt.
    pub ahead: u64,
    /// The `Retry-After` to send: the wait for those ahead, whole seconds,
    /// from 1 to [`MAX_RETRY_AFTER_SECS`].
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// The first millisecond of the slice.
    at: u64,
    waiting: u64,
    /// When the slice's tickets are forgotten unless let in before.
    lapses_at: u64,
}

/// Admissions per bucket over the last second.
#[derive(Debug, Clone)]
struct RateMeter {
    /// (bucket start, admissions), oldest first.
    buckets: VecDeque<(u64, u64)>,
}

impl RateMeter {
    fn admitted(&mut self, now_ms: u64) {
        let at = now_ms - now_ms % BUCKET_MS;
        match self.buckets.back_mut() {
            Some((last, n)) if *last == at => *n += 1,
            _ => self.buckets.push_back((at, 1)),
        }
        self.forget(now_ms);
    }

    fn forget(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(RATE_BUCKETS as u64 * BUCKET_MS);
        while self.buckets.front().is_some_and(|(at, _)| *at < horizon) {
            self.buckets.pop_front();
        }
    }

    /// Admissions per second over the buckets seen in the last second (a
    /// burst that began 200 ms ago is measured over those 200 ms), never
    /// below [`FLOOR_RATE`].
    fn per_sec(&mut self, now_ms: u64) -> f64 {
        self.forget(now_ms);
        let Some((oldest, _)) = self.buckets.front() else {
            return FLOOR_RATE;
        };
        let span_ms = (now_ms - oldest).max(BUCKET_MS);
        let count: u64 = self.buckets.iter().map(|(_, n)| n).sum();
        (count as f64 * 1000.0 / span_ms as f64).max(FLOOR_RATE)
    }
}

/// The tickets out, and the pace they are let in at.
#[derive(Debug, Clone)]
pub struct Line {
    /// By first attempt, oldest first; no two share `at`.
    buckets: VecDeque<Bucket>,
    waiting: u64,
    rate: RateMeter,
    /// When lapsed slices were last looked for: at most once a slice, so a
    /// refusal costs O(1) under a crowd.
    lapse_checked: u64,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    /// An empty line.
    pub fn new() -> Self {
        Self {
            buckets: VecDeque::new(),
            waiting: 0,
            rate: RateMeter {
                buckets: VecDeque::new(),
            },
            lapse_checked: 0,
        }
    }

    /// Tickets counted now.
    pub fn waiting(&self) -> u64 {
        self.waiting
    }

    /// A claim first attempted at `first_attempt_ms` is refused at `now_ms`:
    /// counted if it is not yet (a newcomer, or a `ticketed` claim whose
    /// slice lapsed or that another replica issued), and given its place.
    pub fn refuse(&mut self, first_attempt_ms: u64, ticketed: bool, now_ms: u64) -> Place {
        self.lapse(now_ms);
        let at = first_attempt_ms - first_attempt_ms % BUCKET_MS;
        // Newcomers join at the back: search from there.
        let index = self.buckets.iter().rposition(|b| b.at <= at);
        let ahead_end = match index {
            Some(i) if self.buckets[i].at == at => {
                if !ticketed {
                    self.buckets[i].waiting += 1;
                    self.waiting += 1;
                }
                i
            }
            Some(i) => {
                self.insert(i + 1, at, now_ms);
                i + 1
            }
            None => {
                self.insert(0, at, now_ms);
                0
            }
        };
        let ahead: u64 = if ahead_end == self.buckets.len() - 1 {
            self.waiting - self.buckets[ahead_end].waiting
        } else {
            self.buckets.iter().take(ahead_end).map(|b| b.waiting).sum()
        };
        let rate = self.rate.per_sec(now_ms);
        let wait = ((ahead + 1) as f64 / rate).ceil() as u64;
        let retry_after_secs = wait.clamp(1, MAX_RETRY_AFTER_SECS);
        // Back within 1.5 times the wait, and a second for the network.
        let lapses_at = now_ms + retry_after_secs * 1500 + 1000;
        let bucket = &mut self.buckets[ahead_end];
        bucket.lapses_at = bucket.lapses_at.max(lapses_at);
        Place {
            ahead,
            retry_after_secs,
        }
    }

    fn insert(&mut self, index: usize, at: u64, now_ms: u64) {
        self.buckets.insert(
            index,
            Bucket {
                at,
                waiting: 1,
                lapses_at: now_ms,
            },
        );
        self.waiting += 1;
    }

    /// A claim is let in at `now_ms`; `ticket` is the first attempt its
    /// ticket vouched for, which leaves the line.
    pub fn admitted(&mut self, ticket: Option<u64>, now_ms: u64) {
        self.rate.admitted(now_ms);
        if let Some(first_attempt_ms) = ticket {
            let at = first_attempt_ms - first_attempt_ms % BUCKET_MS;
            if let Some(bucket) = self.buckets.iter_mut().find(|b| b.at == at)
                && bucket.waiting > 0
            {
                bucket.waiting -= 1;
                self.waiting -= 1;
            }
        }
        self.lapse(now_ms);
    }

    /// Forgets the slices whose holders did not come back in time, and
    /// empty ones at the front.
    fn lapse(&mut self, now_ms: u64) {
        if now_ms < self.lapse_checked + BUCKET_MS {
            return;
        }
        self.lapse_checked = now_ms;
        let mut lapsed = 0;
        self.buckets.retain(|b| {
            let keep = b.waiting > 0 && b.lapses_at > now_ms;
            if !keep {
                lapsed += b.waiting;
            }
            keep
        });
        self.waiting -= lapsed;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn newcomers_join_at_the_back_and_wait_for_those_ahead() {
        let mut line = Line::new();
        // Let in 2 000 over the last second: 2 000/s.
        for i in 0..2_000 {
            line.admitted(None, T0 + i / 2);
        }
        let now = T0 + 1_000;
        let first = line.refuse(now, false, now);
        assert_eq!(first.ahead, 0);
        assert_eq!(first.retry_after_secs, 1);
        for _ in 0..4_999 {
            line.refuse(now, false, now);
        }
        let last = line.refuse(now + 150, false, now + 150);
        assert_eq!(last.ahead, 5_000);
        assert_eq!(last.retry_after_secs, 3, "5 001 at about 2 000/s");
        assert_eq!(line.waiting(), 5_001);
    }

    #[test]
    fn a_ticket_holder_keeps_its_place_and_leaves_when_let_in() {
        let mut line = Line::new();
        for i in 0..100 {
            line.refuse(T0 + i * 10, false, T0 + i * 10);
        }
        // The holder of the very first ticket comes back: nobody is ahead.
        let place = line.refuse(T0, true, T0 + 1_000);
        assert_eq!(place.ahead, 0);
        assert_eq!(line.waiting(), 100, "counted once");
        line.admitted(Some(T0), T0 + 1_100);
        assert_eq!(line.waiting(), 99);
        let place = line.refuse(T0 + 990, true, T0 + 1_200);
        assert_eq!(place.ahead, 89, "ten per slice, one let in");
    }

    #[test]
    fn tickets_not_brought_back_in_time_lapse() {
        let mut line = Line::new();
        let place = line.refuse(T0, false, T0);
        assert_eq!(place.retry_after_secs, 1);
        assert_eq!(
            line.refuse(T0 + 2_400, false, T0 + 2_400).ahead,
            1,
            "still counted at 2.4 s"
        );
        assert_eq!(
            line.refuse(T0 + 2_600, false, T0 + 2_600).ahead,
            1,
            "the second's slice is counted"
        );
        let later = T0 + 2_600 + 2_600;
        assert_eq!(line.refuse(later, false, later).ahead, 0, "both lapsed");
    }

    #[test]
    fn the_wait_is_bounded() {
        let mut line = Line::new();
        for _ in 0..100_000 {
            line.refuse(T0, false, T0);
        }
        assert_eq!(
            line.refuse(T0 + 150, false, T0 + 150).retry_after_secs,
            MAX_RETRY_AFTER_SECS
        );
    }

    proptest! {
        /// Whatever happens, the count is the sum of the slices, slices
        /// stay ordered, and a place is never ahead of itself.
        #[test]
        fn the_count_stays_consistent(
            steps in proptest::collection::vec((0u64..5_000, 0u64..3_000, any::<bool>(), any::<bool>()), 1..300),
        ) {
            let mut line = Line::new();
            let mut now = T0;
            for (advance, back, admit, ticketed) in steps {
                now += advance;
                let first = now - back;
                if admit {
                    line.admitted(Some(first), now);
                } else {
                    let place = line.refuse(first, ticketed, now);
                    prop_assert!(place.ahead < line.waiting());
                    prop_assert!((1..=MAX_RETRY_AFTER_SECS).contains(&place.retry_after_secs));
                }
                prop_assert_eq!(line.waiting, line.buckets.iter().map(|b| b.waiting).sum::<u64>());
                prop_assert!(line.buckets.iter().zip(line.buckets.iter().skip(1)).all(|(a, b)| a.at < b.at));
            }
        }
    }
}
