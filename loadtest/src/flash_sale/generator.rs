//! The open-loop request generator: every claim prepared before the clock
//! starts, sent at its scheduled time through `turnstile-client`, each
//! answer counted, timed and kept for the audit.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use hyper::StatusCode;
use rand::Rng;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use turnstile_claim::{IdempotencyKey, ResourceId, UserId};
use turnstile_client::{
    AttemptEnd, AttemptOutcome, CallOptions, ClaimBatch, Client, NewClaim, Observer, PreparedClaim, RetryPolicy,
};
use uuid::Uuid;

use super::arguments::SaleParams;
use crate::{
    connections::Connections,
    credentials::Credentials,
    generator_cpu::{CpuStopwatch, GeneratorCpu},
    latency::Latencies,
    progress::Progress,
    refusals::{KeyAnswer, Promise, RefusedKey, is_refusal},
    timeline::{Answer, Timeline},
};

/// The sale's answers, counted as they come.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) accepted: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) errors_4xx: AtomicU64,
    pub(super) errors_5xx: AtomicU64,
    pub(super) transport: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) throttled_locally: AtomicU64,
    pub(super) door_answers: AtomicU64,
    pub(super) requests_sent: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) arrivals_refused: AtomicU64,
}

impl Counters {
    fn count(&self, answer: Answer) {
        let counter = match answer {
            Answer::Accepted => &self.accepted,
            Answer::Throttled => &self.throttled,
            Answer::ClientError => &self.errors_4xx,
            Answer::ServerError => &self.errors_5xx,
            Answer::Transport => &self.transport,
            Answer::Dropped => &self.dropped,
            Answer::ThrottledLocally => &self.throttled_locally,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One accepted claim, as the client saw it.
#[derive(Debug, Clone, Copy)]
pub(super) struct AcceptedClaim {
    pub(super) id: Uuid,
    /// The arrival's number: arrivals are scheduled in this order.
    pub(super) arrival: u64,
    /// The arrival's first scheduled send, from the start of the load.
    pub(super) first_sent: Duration,
    /// Scheduled send time of the request that was accepted (a retry's is
    /// when its wait ended), from the start of the load.
    pub(super) sent: Duration,
    /// From the scheduled send time to the answer.
    pub(super) accept_latency: Duration,
    /// Answered at the door: final, and not recorded.
    pub(super) at_the_door: bool,
}

/// Builds the `total` claims of a run: claim `n` has the idempotency key
/// `{run_id}-{n}`, a coupon of `codes` and one of `users` user ids, both
/// drawn from `rng` (or, with `users` `None`, user `n`: each user once).
/// The bodies share one buffer and the keys another, whatever `total` is.
pub(super) fn prepare_requests(
    run_id: &str,
    codes: &[String],
    users: Option<u64>,
    total: u64,
    rng: &mut impl Rng,
) -> Result<Vec<PreparedClaim>> {
    use std::fmt::Write as _;

    let codes = codes
        .iter()
        .map(|code| ResourceId::parse("coupon", code))
        .collect::<Result<Vec<_>, _>>()?;
    let mut batch = ClaimBatch::with_capacity(usize::try_from(total)?);
    let mut text = String::new();
    for n in 0..total {
        text.clear();
        match users {
            Some(users) => write!(text, "user-{}", rng.random_range(0..users))?,
            None => write!(text, "user-{n}")?,
        }
        let user = UserId::parse(&text)?;
        let claim = NewClaim::coupon(codes[rng.random_range(0..codes.len())].clone(), user);
        text.clear();
        write!(text, "{run_id}-{n}")?;
        batch.push(&claim, &IdempotencyKey::parse(&text)?);
    }
    Ok(batch.finish())
}

/// What the sending phase collected, behind one lock (held for a push).
#[derive(Debug, Default)]
pub(super) struct Collected {
    pub(super) accept: Latencies,
    pub(super) accepted: Vec<AcceptedClaim>,
    /// The arrivals answered 429 or 503 at least once, with every answer
    /// their key got: no claim under their keys may have been recorded by
    /// a refused request.
    pub(super) refused: Vec<RefusedKey>,
    /// Answers by HTTP status.
    pub(super) statuses: BTreeMap<u16, u64>,
    pub(super) timeline: Timeline,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding it; if something did, the data is still counts.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the sending phase left for the audit and the report.
#[derive(Debug)]
pub(super) struct Offered {
    /// Arrivals scheduled.
    pub(super) total: u64,
    pub(super) collected: Collected,
    pub(super) counters: Counters,
    /// When the offered load started, by the wall clock.
    pub(super) started_wall: SystemTime,
    /// The generator's own CPU over the sending phase.
    pub(super) generator: GeneratorCpu,
}

/// Offers `requests` at `--rate`, one arrival per scheduled send, through
/// the sale's claim client on `connections`; returns once every arrival
/// has its last answer.
pub(super) async fn offer(
    sale: &SaleParams,
    shown: &Progress,
    connections: Arc<Connections>,
    credentials: &Credentials,
    requests: Vec<PreparedClaim>,
    total: u64,
) -> Result<Offered> {
    let progress = shown.bar(
        total,
        "{spinner} offering claims [{bar:40}] {pos}/{len} {per_sec} {msg}",
    );
    let collected = Mutex::new(Collected {
        accepted: Vec::with_capacity(usize::try_from(total)?),
        ..Collected::default()
    });
    let interval = Duration::from_secs_f64(1.0 / sale.rate);
    let client = claim_client(sale, connections, credentials)?;
    let cpu = CpuStopwatch::start();
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let shared = Arc::new(Shared {
        client,
        counters: Counters::default(),
        collected,
        in_flight: Arc::new(Semaphore::new(sale.max_in_flight)),
        started,
        window: Duration::from_secs(sale.duration),
    });
    // Finished arrivals are reaped as the run goes, so the generator's
    // memory stays flat instead of holding every arrival's task to the end.
    let mut tasks = JoinSet::new();
    for (index, request) in (0u64..).zip(requests) {
        while let Some(finished) = tasks.try_join_next() {
            finished?;
        }
        let scheduled = interval.mul_f64(index as f64);
        tokio::time::sleep_until((started + scheduled).into()).await;
        progress.inc(1);
        let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
            shared.counters.count(Answer::Dropped);
            Counters::add(&shared.counters.arrivals_refused);
            lock(&shared.collected)
                .timeline
                .answered(scheduled, started.elapsed(), Answer::Dropped);
            continue;
        };
        let arrival = Arrival {
            index,
            scheduled,
            request,
        };
        tasks.spawn(arrive(Arc::clone(&shared), arrival, permit));
    }
    while let Some(finished) = tasks.join_next().await {
        finished?;
    }
    let generator = cpu.read();
    progress.finish_and_clear();
    // Every arrival's task has ended, and with it its handle on `shared`.
    let Shared {
        counters, collected, ..
    } = Arc::into_inner(shared).context("an arrival's task outlived the sending phase")?;
    let mut collected = collected.into_inner().unwrap_or_else(PoisonError::into_inner);
    for index in 0..total {
        collected.timeline.offered(interval.mul_f64(index as f64));
    }
    Ok(Offered {
        total,
        collected,
        counters,
        started_wall,
        generator,
    })
}

/// The sale's claim client, on its connections: with `--retry` it comes
/// back after every 429 or 503 until the offered load's window ends (the
/// deadline each call is given), without it a refusal is the answer; with
/// `--throttle` it throttles itself.
fn claim_client(
    sale: &SaleParams,
    connections: Arc<Connections>,
    credentials: &Credentials,
) -> Result<Client<Arc<Connections>>> {
    let policy = if sale.retry {
        RetryPolicy::try_new(u32::MAX, Duration::from_secs(sale.duration))?
    } else {
        RetryPolicy::never()
    };
    let client = Client::new(connections)
        .with_authorization(credentials.claim_authorization().clone())
        .with_retry(policy);
    Ok(match sale.throttle.settings()? {
        Some(settings) => client.with_throttle(settings),
        None => client,
    })
}

/// What every arrival's task shares, behind one `Arc`.
#[derive(Debug)]
struct Shared {
    /// The claim client: its retry policy, and its throttle, which counts
    /// every arrival's requests.
    client: Client<Arc<Connections>>,
    counters: Counters,
    collected: Mutex<Collected>,
    /// One permit per request in flight, counting those waiting for a
    /// connection; a retry needs one like any request.
    in_flight: Arc<Semaphore>,
    started: Instant,
    /// The end of the offered load, from `started`: no retry leaves after it.
    window: Duration,
}

/// One shopper: when they first come, and what they send.
#[derive(Debug)]
struct Arrival {
    index: u64,
    /// The first scheduled send, from the start of the load.
    scheduled: Duration,
    request: PreparedClaim,
}

/// How a request ended, from its HTTP status or the lack of one.
fn classify(status: Option<StatusCode>) -> Answer {
    match status {
        Some(StatusCode::ACCEPTED | StatusCode::OK) => Answer::Accepted,
        Some(StatusCode::TOO_MANY_REQUESTS) => Answer::Throttled,
        Some(s) if s.is_client_error() => Answer::ClientError,
        Some(_) => Answer::ServerError,
        None => Answer::Transport,
    }
}

/// Whether a 429's problem body refuses the caller's own rate (its key's or
/// its user's bucket) rather than shedding load.
fn is_rate_limited(body: &[u8]) -> bool {
    const TYPE: &[u8] = b"/problems/rate-limited";
    body.windows(TYPE.len()).any(|w| w == TYPE)
}

/// The client's attempts for one arrival, as they happen: counted, put on
/// the timeline, and kept for the refusal audit. It also holds the
/// arrival's in-flight permit while an attempt is under way.
#[derive(Debug)]
struct ArrivalLog<'a> {
    shared: &'a Shared,
    /// The first scheduled send, from the start of the load.
    scheduled: Duration,
    /// Held while an attempt is in flight; a retry takes a new one.
    permit: Option<OwnedSemaphorePermit>,
    /// Every answer under the key, kept if one was a refusal.
    answers: Vec<KeyAnswer>,
    refused: bool,
    /// How the last attempt ended: its answer, its scheduled send and its
    /// latency from then.
    last: Option<(Answer, Duration, Duration)>,
    /// Whether the last answer came from the door.
    at_the_door: bool,
}

impl ArrivalLog<'_> {
    fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.shared.started)
    }
}

impl Observer for ArrivalLog<'_> {
    fn before_attempt(&mut self, _attempt: u32, due: Instant) -> bool {
        if self.permit.is_some() {
            return true;
        }
        let Ok(permit) = Arc::clone(&self.shared.in_flight).try_acquire_owned() else {
            // Never sent: the arrival's last answer stays the 429 or 503.
            self.shared.counters.count(Answer::Dropped);
            let (sent, now) = (self.since_start(due), self.shared.started.elapsed());
            lock(&self.shared.collected)
                .timeline
                .answered(sent, now, Answer::Dropped);
            self.last = Some((Answer::Dropped, sent, Duration::ZERO));
            return false;
        };
        self.permit = Some(permit);
        true
    }

    fn after_attempt(&mut self, end: &AttemptEnd<'_>) {
        // Waiting to come back is not being in flight.
        self.permit = None;
        // Latency runs from the arrival's schedule, then from the end of
        // each retry's wait: a late send counts against the system.
        let sent = if end.attempt == 1 {
            self.scheduled
        } else {
            self.since_start(end.due)
        };
        let answered = self.since_start(end.ended);
        let counters = &self.shared.counters;
        let (status, body) = match end.outcome {
            AttemptOutcome::Throttled { .. } => {
                counters.count(Answer::ThrottledLocally);
                let mut collected = lock(&self.shared.collected);
                collected.timeline.answered(sent, answered, Answer::ThrottledLocally);
                self.last = Some((Answer::ThrottledLocally, sent, Duration::ZERO));
                return;
            }
            AttemptOutcome::Failed(_) => (None, None),
            AttemptOutcome::Answered(response) => {
                self.at_the_door =
                    response.status == StatusCode::OK && !response.headers.contains_key(hyper::header::LOCATION);
                (Some(response.status), Some(&response.body))
            }
        };
        Counters::add(&counters.requests_sent);
        if end.attempt > 1 {
            Counters::add(&counters.retries);
        }
        let answer = classify(status);
        counters.count(answer);
        if answer == Answer::Throttled && body.is_some_and(|b| is_rate_limited(b)) {
            Counters::add(&counters.rate_limited);
        }
        // A 429 or 503 promises this request recorded nothing; a 504
        // (outcome unknown) or a 408 promises nothing either way.
        self.refused |= status.is_some_and(is_refusal);
        self.answers.push(KeyAnswer {
            sent,
            answered,
            promise: Promise::of(status),
        });
        let accept_latency = answered.saturating_sub(sent);
        let mut collected = lock(&self.shared.collected);
        collected.timeline.answered(sent, answered, answer);
        if answer == Answer::Accepted {
            collected.accept.record(accept_latency);
        }
        if let Some(status) = status {
            *collected.statuses.entry(status.as_u16()).or_default() += 1;
        }
        self.last = Some((answer, sent, accept_latency));
    }
}

/// Sends an arrival's claim through the client, holding `permit` while
/// its first attempt is in flight; with `--retry` the client sends it again
/// after a 429 or 503 for as long as the window is open and a permit is
/// free.
async fn arrive(shared: Arc<Shared>, arrival: Arrival, permit: OwnedSemaphorePermit) {
    let Arrival {
        index,
        scheduled,
        request,
    } = arrival;
    let mut log = ArrivalLog {
        shared: &shared,
        scheduled,
        permit: Some(permit),
        answers: Vec::new(),
        refused: false,
        last: None,
        at_the_door: false,
    };
    let deadline = CallOptions::until(shared.started + shared.window);
    let claimed = shared.client.claim_with(&request, deadline, &mut log).await;
    let ArrivalLog {
        answers,
        refused,
        last,
        at_the_door,
        ..
    } = log;
    match (claimed, last) {
        (Ok(answer), Some((_, sent, accept_latency))) => {
            if at_the_door {
                Counters::add(&shared.counters.door_answers);
            }
            lock(&shared.collected).accepted.push(AcceptedClaim {
                id: answer.claim.claim_id.as_uuid(),
                arrival: index,
                first_sent: scheduled,
                sent,
                accept_latency,
                at_the_door,
            });
        }
        // Accepted with a body that names no claim: nothing to follow.
        (Err(_), Some((Answer::Accepted, ..))) => {}
        _ => Counters::add(&shared.counters.arrivals_refused),
    }
    if refused {
        lock(&shared.collected).refused.push(RefusedKey {
            arrival: index,
            answers,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash_sale::coupon_code;

    #[test]
    fn each_user_once_gives_every_arrival_a_user_of_its_own() {
        let codes = vec![coupon_code("R2", 0)];
        let requests = prepare_requests("R2", &codes, None, 500, &mut rand::rng()).unwrap();
        for (n, request) in requests.iter().enumerate() {
            let body: serde_json::Value = serde_json::from_slice(request.body()).unwrap();
            assert_eq!(body["user_id"], format!("user-{n}"));
        }
    }

    #[test]
    fn requests_are_prepared_with_their_keys_and_a_coupon_and_user_each() {
        let codes = vec![coupon_code("R1", 0), coupon_code("R1", 1)];
        let requests = prepare_requests("R1", &codes, Some(7), 1_000, &mut rand::rng()).unwrap();
        assert_eq!(requests.len(), 1_000);
        let mut coupons = std::collections::HashSet::new();
        for (n, request) in requests.iter().enumerate() {
            assert_eq!(request.idempotency_key(), format!("R1-{n}"));
            let body: serde_json::Value = serde_json::from_slice(request.body()).unwrap();
            let coupon = body["coupon"].as_str().unwrap();
            assert!(codes.iter().any(|c| c == coupon), "{body}");
            let user: u64 = body["user_id"]
                .as_str()
                .unwrap()
                .strip_prefix("user-")
                .unwrap()
                .parse()
                .unwrap();
            assert!(user < 7, "{body}");
            assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
            coupons.insert(coupon.to_owned());
        }
        assert_eq!(coupons.len(), 2, "both coupons drawn");
    }

    #[test]
    fn rate_limits_are_told_from_load_shedding_by_the_problem_type() {
        let problem = |kind: &str| format!(r#"{{"type":"{kind}","title":"t","status":429}}"#).into_bytes();
        assert!(is_rate_limited(&problem("/problems/rate-limited")));
        assert!(is_rate_limited(&problem(
            "https://turnstile.example/problems/rate-limited"
        )));
        assert!(!is_rate_limited(&problem("/problems/overloaded")));
        assert!(!is_rate_limited(b""));
    }
}
