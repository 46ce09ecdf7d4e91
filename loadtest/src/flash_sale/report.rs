//! What a sale measured: the report, and the decide latencies and
//! throughput computed from the client's record of each accepted claim
//! and the database's record of its decision.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    arguments::{FlashSaleArgs, Mode},
    generator::{AcceptedClaim, Collected, Offered},
};
use crate::{
    latency::Latencies,
    timeline::{SecondStats, Timeline},
};

/// What a flash sale measured. Fields missing from older saved JSON read
/// as their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FlashSaleReport {
    pub mode: Mode,
    pub coupons: usize,
    pub stock_per_coupon: i64,
    pub users: u64,
    pub rate: f64,
    pub duration_s: u64,
    pub offered: u64,
    pub accepted: u64,
    pub granted: u64,
    pub rejected: u64,
    pub throttled_429: u64,
    /// Of `throttled_429`, the answers refusing a caller's own rate (the
    /// API key's or the user's bucket, `/problems/rate-limited`) rather
    /// than shedding load.
    pub rate_limited_429: u64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub transport_errors: u64,
    pub dropped: u64,
    pub undecided: u64,
    pub oversold: i64,
    pub double_claims: i64,
    pub fence_regressions: i64,
    pub remaining_mismatches: i64,
    /// Keys answered 429 or 503 whose claim was recorded by a request that
    /// promised to record nothing, judged on every answer the key got
    /// ([`crate::refusals`]). Must be 0.
    pub refused_keys_taken: i64,
    /// Every HTTP answer to a claim, by status (`"202"`, `"429"`, `"504"`,
    /// ...); transport errors and dropped requests are not answers.
    pub answers_by_status: BTreeMap<String, u64>,
    /// When the offered load started, in Unix seconds (what the timeline's
    /// seconds count from).
    pub started_at_epoch_s: f64,
    /// Pipeline decisions per second: claims recorded and decided.
    pub claims_per_sec: f64,
    /// Arrivals given a final answer per second, at the door or by the
    /// pipeline, from the first accepted to the last answered.
    pub answered_per_sec: f64,
    /// Arrivals given a final answer, at the door or by the pipeline.
    pub answered: u64,
    /// Claims answered at the door (`200` without `Location`): rejected
    /// from what earlier decisions settled, not recorded. They are in
    /// `accepted` and in the decide latencies (answered in the request).
    pub door_answers: u64,
    pub accept_p50_ms: f64,
    pub accept_p99_ms: f64,
    pub decide_p50_ms: f64,
    pub decide_p99_ms: f64,
    pub decide_from_send_p50_ms: f64,
    pub decide_from_send_p99_ms: f64,
    /// Whether arrivals answered 429 or 503 came back (`--retry`).
    pub retry: bool,
    /// HTTP requests sent, retries included (dropped ones were not sent).
    pub requests_sent: u64,
    /// Of `requests_sent`, those that were an arrival's second or later try.
    pub retries: u64,
    /// `retries / requests_sent`.
    pub retry_share: f64,
    /// Whether the client throttled itself (`--throttle`), with what K and
    /// window (seconds).
    pub throttle: bool,
    pub throttle_k: f64,
    pub throttle_window_s: u64,
    /// Requests the client's adaptive throttling dropped, first attempts
    /// and retries alike: never sent, so in none of `requests_sent`,
    /// `dropped` and `answers_by_status`.
    pub throttled_locally: u64,
    /// Arrivals whose last answer was not 200/202 (429, other 4xx, 5xx,
    /// transport error, or dropped by the client or its throttle).
    pub arrivals_refused: u64,
    /// From an arrival's first scheduled send to its decision's commit: what
    /// the shopper lived through. Equal to `decide_from_send` without retries.
    pub decide_from_first_attempt_p50_ms: f64,
    /// See `decide_from_first_attempt_p50_ms`.
    pub decide_from_first_attempt_p99_ms: f64,
    /// Of the granted claims, the share that came from the first
    /// `stock × coupons` arrivals: 1.0 is first come, first served (less when
    /// an early user came twice, since each user is granted once).
    pub grants_to_earliest_share: f64,
    /// The load generator's CPU time over the sending phase's wall time,
    /// as a share of the machine's CPUs (0..1).
    pub generator_cpu_share: f64,
    /// The same in cores: CPU seconds per wall second.
    pub generator_cores: f64,
    /// The run second by second.
    pub timeline: Vec<SecondStats>,
}

impl FlashSaleReport {
    /// Whether every invariant held.
    pub fn invariants_hold(&self) -> bool {
        self.undecided == 0
            && self.oversold == 0
            && self.double_claims == 0
            && self.fence_regressions == 0
            && self.remaining_mismatches == 0
            && self.refused_keys_taken == 0
    }

    /// Records what the sale measured besides the audit's counts: what was
    /// offered and answered, the latencies (with `decisions`, read from
    /// the database), the generator's CPU and the timeline. `start_epoch`
    /// is the load's start in Unix seconds.
    pub(super) fn record_sale(
        &mut self,
        args: &FlashSaleArgs,
        offered: Offered,
        start_epoch: f64,
        undecided: u64,
        decisions: &HashMap<Uuid, DecisionTime>,
    ) {
        let sale = &args.sale;
        let Offered {
            total,
            collected:
                Collected {
                    accept,
                    accepted,
                    statuses,
                    mut timeline,
                    ..
                },
            counters,
            generator,
            ..
        } = offered;
        self.answers_by_status = statuses.into_iter().map(|(s, n)| (s.to_string(), n)).collect();
        self.started_at_epoch_s = start_epoch;
        let decided = measure_decisions(args.mode, start_epoch, &accepted, decisions, &mut timeline);
        let earliest = u64::try_from(sale.stock)
            .unwrap_or(0)
            .saturating_mul(sale.coupons as u64);
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        self.mode = args.mode;
        self.coupons = sale.coupons;
        self.stock_per_coupon = sale.stock;
        self.users = sale.users;
        self.rate = sale.rate;
        self.duration_s = sale.duration;
        self.offered = total;
        self.accepted = count(&counters.accepted);
        self.throttled_429 = count(&counters.throttled);
        self.rate_limited_429 = count(&counters.rate_limited);
        self.errors_4xx = count(&counters.errors_4xx);
        self.errors_5xx = count(&counters.errors_5xx);
        self.transport_errors = count(&counters.transport);
        self.dropped = count(&counters.dropped);
        self.undecided = undecided;
        self.accept_p50_ms = accept.quantile_ms(0.5).unwrap_or(0.0);
        self.accept_p99_ms = accept.quantile_ms(0.99).unwrap_or(0.0);
        self.decide_p50_ms = decided.decide.quantile_ms(0.5).unwrap_or(0.0);
        self.decide_p99_ms = decided.decide.quantile_ms(0.99).unwrap_or(0.0);
        self.decide_from_send_p50_ms = decided.from_send.quantile_ms(0.5).unwrap_or(0.0);
        self.decide_from_send_p99_ms = decided.from_send.quantile_ms(0.99).unwrap_or(0.0);
        self.claims_per_sec = decided.per_sec;
        self.answered_per_sec = decided.answered_per_sec;
        self.answered = decided.answered;
        self.door_answers = count(&counters.door_answers);
        self.retry = sale.retry;
        self.requests_sent = count(&counters.requests_sent);
        self.retries = count(&counters.retries);
        self.retry_share = if self.requests_sent > 0 {
            self.retries as f64 / self.requests_sent as f64
        } else {
            0.0
        };
        self.throttle = sale.throttle.throttle;
        self.throttle_k = sale.throttle.throttle_k;
        self.throttle_window_s = sale.throttle.throttle_window;
        self.throttled_locally = count(&counters.throttled_locally);
        self.arrivals_refused = count(&counters.arrivals_refused);
        self.decide_from_first_attempt_p50_ms = decided.from_first_attempt.quantile_ms(0.5).unwrap_or(0.0);
        self.decide_from_first_attempt_p99_ms = decided.from_first_attempt.quantile_ms(0.99).unwrap_or(0.0);
        self.grants_to_earliest_share = grants_to_earliest_share(&accepted, decisions, earliest);
        self.generator_cpu_share = generator.share;
        self.generator_cores = generator.cores;
        self.timeline = timeline.stats();
    }

    /// Final answers per second, at the door or by the pipeline (the
    /// decisions alone for reports saved before answers were counted).
    pub fn answered_or_decided_per_sec(&self) -> f64 {
        if self.answered_per_sec > 0.0 {
            self.answered_per_sec
        } else {
            self.claims_per_sec
        }
    }

    /// The share of HTTP requests answered 429 (of those offered, for
    /// reports saved before `requests_sent` was counted).
    pub fn throttled_share(&self) -> f64 {
        let sent = if self.requests_sent > 0 {
            self.requests_sent
        } else {
            self.offered
        };
        if sent == 0 {
            0.0
        } else {
            self.throttled_429 as f64 / sent as f64
        }
    }
}

/// When a claim was accepted and decided, by Postgres' clock (epoch
/// seconds), and whether it was granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionTime {
    pub accepted_at: f64,
    pub decided_at: f64,
    pub granted: bool,
}

/// Decide latencies and throughput, from the client's record of each
/// accepted claim and Postgres' record of its decision.
#[derive(Debug)]
struct DecideMeasures {
    decide: Latencies,
    from_send: Latencies,
    from_first_attempt: Latencies,
    /// Pipeline decisions per second.
    per_sec: f64,
    /// Final answers per second, door answers included.
    answered_per_sec: f64,
    /// Final answers, door answers included.
    answered: u64,
}

fn measure_decisions(
    mode: Mode,
    start_epoch: f64,
    accepted: &[AcceptedClaim],
    decisions: &HashMap<Uuid, DecisionTime>,
    timeline: &mut Timeline,
) -> DecideMeasures {
    let secs = |s: f64| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO);
    let mut decide = Latencies::new();
    let mut from_send = Latencies::new();
    let mut from_first_attempt = Latencies::new();
    let (mut first_accepted, mut last_decided, mut count) = (f64::INFINITY, f64::NEG_INFINITY, 0u64);
    let (mut first_answered, mut last_answered, mut answered) = (f64::INFINITY, f64::NEG_INFINITY, 0u64);
    for claim in accepted {
        if claim.at_the_door {
            // Final in the request: the answer is the decision.
            let lived = (claim.sent + claim.accept_latency).saturating_sub(claim.first_sent);
            decide.record(claim.accept_latency);
            from_send.record(claim.accept_latency);
            from_first_attempt.record(lived);
            timeline.decided(claim.sent, claim.sent + claim.accept_latency);
            let at = start_epoch + (claim.sent + claim.accept_latency).as_secs_f64();
            first_answered = first_answered.min(start_epoch + claim.sent.as_secs_f64());
            last_answered = last_answered.max(at);
            answered += 1;
            continue;
        }
        let Some(t) = decisions.get(&claim.id) else {
            continue;
        };
        let (latency, end_to_end, lived) = match mode {
            Mode::Pipeline => (
                secs(t.decided_at - t.accepted_at),
                secs(t.decided_at - start_epoch - claim.sent.as_secs_f64()),
                secs(t.decided_at - start_epoch - claim.first_sent.as_secs_f64()),
            ),
            // Decided before the answer: the answer's latency is the decision's.
            Mode::SqlForUpdate => (
                claim.accept_latency,
                claim.accept_latency,
                (claim.sent + claim.accept_latency).saturating_sub(claim.first_sent),
            ),
        };
        decide.record(latency);
        from_send.record(end_to_end);
        from_first_attempt.record(lived);
        timeline.decided(claim.sent, claim.sent + end_to_end);
        first_accepted = first_accepted.min(t.accepted_at);
        last_decided = last_decided.max(t.decided_at);
        count += 1;
    }
    let rate = |n: u64, span: f64| if n > 0 && span > 0.0 { n as f64 / span } else { 0.0 };
    let answered_span = last_answered.max(last_decided) - first_answered.min(first_accepted);
    DecideMeasures {
        decide,
        from_send,
        from_first_attempt,
        per_sec: rate(count, last_decided - first_accepted),
        answered_per_sec: rate(count + answered, answered_span),
        answered: count + answered,
    }
}

/// Of the granted claims among `accepted`, the share whose arrival is one of
/// the first `earliest` (0 when nothing was granted). Arrivals are numbered
/// in the order they first came, so a sale that serves first come first
/// with `earliest` units in all scores 1.
fn grants_to_earliest_share(accepted: &[AcceptedClaim], decisions: &HashMap<Uuid, DecisionTime>, earliest: u64) -> f64 {
    let (mut granted, mut to_earliest) = (0u64, 0u64);
    for claim in accepted {
        if decisions.get(&claim.id).is_some_and(|t| t.granted) {
            granted += 1;
            to_earliest += u64::from(claim.arrival < earliest);
        }
    }
    if granted == 0 {
        0.0
    } else {
        to_earliest as f64 / granted as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(n: u128, sent_ms: u64, accept_ms: u64) -> AcceptedClaim {
        AcceptedClaim {
            id: Uuid::from_u128(n),
            arrival: u64::try_from(n).unwrap(),
            first_sent: Duration::from_millis(sent_ms),
            sent: Duration::from_millis(sent_ms),
            accept_latency: Duration::from_millis(accept_ms),
            at_the_door: false,
        }
    }

    /// A claim whose arrival first came at `first_ms` and was accepted on a
    /// retry sent at `sent_ms`.
    fn retried(n: u128, first_ms: u64, sent_ms: u64, accept_ms: u64) -> AcceptedClaim {
        AcceptedClaim {
            first_sent: Duration::from_millis(first_ms),
            ..claim(n, sent_ms, accept_ms)
        }
    }

    fn decision(accepted_at: f64, decided_at: f64, granted: bool) -> DecisionTime {
        DecisionTime {
            accepted_at,
            decided_at,
            granted,
        }
    }

    #[test]
    fn pipeline_decide_latency_is_the_servers_and_end_to_end_starts_at_the_send() {
        let start = 1_000.0;
        let accepted = [claim(1, 500, 20), claim(2, 1_500, 30), claim(3, 1_600, 40)];
        // Claim 1: accepted by the API at +0.51 s, decided at +0.61 s.
        // Claim 2: accepted at +1.52 s, decided at +2.02 s. Claim 3: undecided.
        let decisions = HashMap::from([
            (Uuid::from_u128(1), decision(1_000.51, 1_000.61, false)),
            (Uuid::from_u128(2), decision(1_001.52, 1_002.02, false)),
        ]);
        let mut timeline = Timeline::new();
        let m = measure_decisions(Mode::Pipeline, start, &accepted, &decisions, &mut timeline);
        assert_eq!(m.decide.count(), 2);
        let p100 = m.decide.quantile_ms(1.0).unwrap();
        assert!((499.0..=501.0).contains(&p100), "{p100}");
        let e2e = m.from_send.quantile_ms(1.0).unwrap();
        assert!((519.0..=521.0).contains(&e2e), "{e2e}");
        // Two decisions over 1.51 s from the first acceptance to the last decision.
        assert!((m.per_sec - 2.0 / 1.51).abs() < 1e-6);
        let stats = timeline.stats();
        assert_eq!(stats[0].decided, 1);
        assert_eq!(stats[2].decided, 1);
        assert!(
            stats[1]
                .decided_from_send_p50_ms
                .is_some_and(|ms| (519.0..=521.0).contains(&ms))
        );
    }

    #[test]
    fn door_answers_are_final_answers_but_not_pipeline_decisions() {
        let start = 1_000.0;
        // Claim 1: decided by the pipeline, accepted at +0.51 s, decided at
        // +0.61 s. Claims 2 and 3: answered at the door, sent at +1.0 s and
        // +2.0 s and answered 10 ms later.
        let door = |n, sent_ms| AcceptedClaim {
            at_the_door: true,
            ..claim(n, sent_ms, 10)
        };
        let accepted = [claim(1, 500, 20), door(2, 1_000), door(3, 2_000)];
        let decisions = HashMap::from([(Uuid::from_u128(1), decision(1_000.51, 1_000.61, true))]);
        let m = measure_decisions(Mode::Pipeline, start, &accepted, &decisions, &mut Timeline::new());
        // One pipeline decision; it alone spans nothing but its own 0.1 s.
        assert!((m.per_sec - 1.0 / 0.1).abs() < 1e-6);
        // Three answers from the first acceptance (+0.51 s) to the last
        // answer (+2.01 s).
        assert!((m.answered_per_sec - 3.0 / 1.5).abs() < 1e-6, "{}", m.answered_per_sec);
        assert_eq!(m.from_send.count(), 3);
        let fastest = m.from_send.quantile_ms(0.0).unwrap();
        assert!((9.0..=11.0).contains(&fastest), "{fastest}");
    }

    #[test]
    fn sql_decide_latency_is_the_answer() {
        let accepted = [claim(1, 0, 7)];
        let decisions = HashMap::from([(Uuid::from_u128(1), decision(10.001, 10.005, false))]);
        let m = measure_decisions(Mode::SqlForUpdate, 10.0, &accepted, &decisions, &mut Timeline::new());
        assert_eq!(m.decide.quantile_us(0.5), m.from_send.quantile_us(0.5));
        assert!((6.9..=7.1).contains(&m.decide.quantile_ms(0.5).unwrap()));
    }

    #[test]
    fn without_retries_from_first_attempt_is_from_send() {
        let accepted = [claim(1, 500, 20), claim(2, 900, 30)];
        let decisions = HashMap::from([
            (Uuid::from_u128(1), decision(1_000.51, 1_000.61, true)),
            (Uuid::from_u128(2), decision(1_000.92, 1_001.40, false)),
        ]);
        for mode in [Mode::Pipeline, Mode::SqlForUpdate] {
            let m = measure_decisions(mode, 1_000.0, &accepted, &decisions, &mut Timeline::new());
            for q in [0.5, 0.99, 1.0] {
                assert_eq!(
                    m.from_first_attempt.quantile_us(q),
                    m.from_send.quantile_us(q),
                    "{mode:?}"
                );
            }
        }
    }

    #[test]
    fn from_first_attempt_counts_the_waits_before_the_accepted_retry() {
        // First came at +0.2 s, refused, accepted on a retry sent at +1.7 s,
        // answered 50 ms later; the pipeline decided it at +2.0 s.
        let accepted = [retried(1, 200, 1_700, 50)];
        let decisions = HashMap::from([(Uuid::from_u128(1), decision(1_001.74, 1_002.0, true))]);
        let pipeline = measure_decisions(Mode::Pipeline, 1_000.0, &accepted, &decisions, &mut Timeline::new());
        let from_send = pipeline.from_send.quantile_ms(1.0).unwrap();
        let lived = pipeline.from_first_attempt.quantile_ms(1.0).unwrap();
        assert!((299.0..=301.0).contains(&from_send), "{from_send}");
        assert!((1_798.0..=1_802.0).contains(&lived), "{lived}");
        // Decided in the request: from the first attempt to the final answer.
        let sql = measure_decisions(Mode::SqlForUpdate, 1_000.0, &accepted, &decisions, &mut Timeline::new());
        let lived = sql.from_first_attempt.quantile_ms(1.0).unwrap();
        assert!((1_549.0..=1_551.0).contains(&lived), "{lived}");
        assert!((49.0..=51.0).contains(&sql.from_send.quantile_ms(1.0).unwrap()));
    }

    #[test]
    fn grants_to_earliest_counts_granted_claims_of_early_arrivals() {
        // Arrivals 0..4; stock 2. Granted: 1 (early), 3 (late), 4 (late);
        // 0 rejected; 2 undecided.
        let accepted: Vec<AcceptedClaim> = (0..5).map(|n| claim(n, 0, 1)).collect();
        let decisions = HashMap::from([
            (Uuid::from_u128(0), decision(1.0, 2.0, false)),
            (Uuid::from_u128(1), decision(1.0, 2.0, true)),
            (Uuid::from_u128(3), decision(1.0, 2.0, true)),
            (Uuid::from_u128(4), decision(1.0, 2.0, true)),
        ]);
        let share = grants_to_earliest_share(&accepted, &decisions, 2);
        assert!((share - 1.0 / 3.0).abs() < 1e-12, "{share}");
        assert!((grants_to_earliest_share(&accepted, &decisions, 5) - 1.0).abs() < 1e-12);
        assert_eq!(grants_to_earliest_share(&accepted, &HashMap::new(), 2), 0.0);
    }
}
