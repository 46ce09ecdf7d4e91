//! A flash sale second by second: what was offered, answered and decided in
//! each second of the run, and the latency percentiles of each second, from
//! one small HDR histogram per second.
//!
//! Counts of answers and decisions go to the second they *happened* in
//! (throughput); latencies go to the second their request was *sent* in, so
//! a stall shows up as a climb in the seconds whose requests it delayed.
//! Seconds are counted from the start of the offered load.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::latency::Latencies;

/// How one scheduled request ended, from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 202 (pipeline: accepted, pending) or 200 (decided in the request).
    Accepted,
    /// 429.
    Throttled,
    /// Another 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// No HTTP answer (connect, reset, timeout).
    Transport,
    /// Never sent: the client's in-flight cap was reached.
    Dropped,
    /// Never sent: the client's adaptive throttling dropped it.
    ThrottledLocally,
}

/// One second of a run, as reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondStats {
    /// Seconds since the load started.
    pub second: u32,
    /// Requests scheduled in this second.
    pub offered: u64,
    /// Answers 200/202 received in this second.
    pub accepted: u64,
    /// Claims whose decision was committed in this second.
    pub decided: u64,
    /// 429s received in this second.
    pub throttled_429: u64,
    /// Other failures (4xx, 5xx, transport, dropped by the client or its
    /// throttle) in this second.
    pub errors: u64,
    /// Accept latency of requests sent in this second (none: nothing accepted).
    pub accept_p50_ms: Option<f64>,
    /// See `accept_p50_ms`.
    pub accept_p99_ms: Option<f64>,
    /// Of claims sent in this second and decided: from the scheduled send
    /// to the decision's commit (the end-to-end figure, alike in every mode).
    pub decided_from_send_p50_ms: Option<f64>,
    /// See `decided_from_send_p50_ms`.
    pub decided_from_send_p99_ms: Option<f64>,
}

#[derive(Debug, Clone)]
struct Second {
    offered: u64,
    accepted: u64,
    decided: u64,
    throttled: u64,
    errors: u64,
    accept: Latencies,
    decide: Latencies,
}

impl Default for Second {
    fn default() -> Self {
        Self {
            offered: 0,
            accepted: 0,
            decided: 0,
            throttled: 0,
            errors: 0,
            accept: Latencies::coarse(),
            decide: Latencies::coarse(),
        }
    }
}

/// The run's seconds, filled in as answers and decisions come.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    seconds: Vec<Second>,
}

/// Beyond this many seconds events are folded into the last one: a bound on
/// memory whatever clock skew or stragglers report.
const MAX_SECONDS: usize = 3600;

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Self::default()
    }

    fn at(&mut self, offset: Duration) -> &mut Second {
        let index = usize::try_from(offset.as_secs())
            .unwrap_or(usize::MAX)
            .min(MAX_SECONDS - 1);
        if self.seconds.len() <= index {
            self.seconds.resize_with(index + 1, Second::default);
        }
        &mut self.seconds[index]
    }

    /// A request scheduled `sent` after the start.
    pub fn offered(&mut self, sent: Duration) {
        self.at(sent).offered += 1;
    }

    /// A request scheduled at `sent` was answered (or given up) at
    /// `answered`; an accepted one's latency is the time in between.
    pub fn answered(&mut self, sent: Duration, answered: Duration, answer: Answer) {
        let second = self.at(answered);
        match answer {
            Answer::Accepted => second.accepted += 1,
            Answer::Throttled => second.throttled += 1,
            Answer::ClientError
            | Answer::ServerError
            | Answer::Transport
            | Answer::Dropped
            | Answer::ThrottledLocally => second.errors += 1,
        }
        if answer == Answer::Accepted {
            self.at(sent).accept.record(answered.saturating_sub(sent));
        }
    }

    /// A claim sent at `sent` was decided at `decided`.
    pub fn decided(&mut self, sent: Duration, decided: Duration) {
        self.at(decided).decided += 1;
        self.at(sent).decide.record(decided.saturating_sub(sent));
    }

    /// The per-second summary.
    pub fn stats(&self) -> Vec<SecondStats> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(i, s)| SecondStats {
                second: u32::try_from(i).unwrap_or(u32::MAX),
                offered: s.offered,
                accepted: s.accepted,
                decided: s.decided,
                throttled_429: s.throttled,
                errors: s.errors,
                accept_p50_ms: s.accept.quantile_ms(0.5),
                accept_p99_ms: s.accept.quantile_ms(0.99),
                decided_from_send_p50_ms: s.decide.quantile_ms(0.5),
                decided_from_send_p99_ms: s.decide.quantile_ms(0.99),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_go_where_they_happened_latencies_where_they_were_sent() {
        let mut t = Timeline::new();
        t.offered(ms(900));
        t.answered(ms(900), ms(1_300), Answer::Accepted);
        t.offered(ms(950));
        t.answered(ms(950), ms(960), Answer::Throttled);
        t.decided(ms(1_300), ms(2_500));
        let stats = t.stats();
        assert_eq!(stats.len(), 3);
        assert_eq!((stats[0].offered, stats[0].accepted, stats[0].throttled_429), (2, 0, 1));
        assert_eq!(stats[1].accepted, 1);
        assert_eq!(stats[2].decided, 1);
        // The accept latency belongs to second 0, where the request was sent
        // (per-second histograms keep 2 significant digits: within 1%).
        let p50 = stats[0].accept_p50_ms.unwrap();
        assert!((396.0..=404.0).contains(&p50), "{p50}");
        assert_eq!(stats[1].accept_p50_ms, None);
        let decide = stats[1].decided_from_send_p99_ms.unwrap();
        assert!((1_188.0..=1_212.0).contains(&decide), "{decide}");
    }

    #[test]
    fn far_away_events_are_bounded() {
        let mut t = Timeline::new();
        t.offered(Duration::from_secs(1_000_000));
        assert_eq!(t.stats().len(), MAX_SECONDS);
    }
}
