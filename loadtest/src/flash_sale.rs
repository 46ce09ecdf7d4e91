//! `loadtest flash-sale`: a flash sale through the HTTP API, measured
//! open-loop, then audited against Postgres.
//!
//! Requests are scheduled at a fixed rate and each latency is measured from
//! its *scheduled* send time, so a stall in the system shows up as latency
//! rather than as a politely slower client (no coordinated omission).
//! Requests go over a fixed set of keep-alive connections opened before the
//! clock starts ([`crate::connections`]); a request that waits for a free
//! one is late, and the wait counts. After
//! the offered load ends, every accepted claim is followed to its decision,
//! and the invariants are checked in the database: nothing oversold, no user
//! granted twice, fences increasing in commit order, nothing left undecided.
//!
//! Two modes, one scenario:
//! - `pipeline` (default): `claim-api` answers `202` and a worker decides
//!   later. Accept latency is the HTTP answer; decide latency is the
//!   server's, from the API's acceptance (`accepted_at`) to the worker's
//!   commit (`decided_at`).
//! - `sql-for-update`: `sql-baseline` decides inside the request and answers
//!   `200` with the decision, so decide latency *is* the accept latency.
//!
//! In both modes `decide_from_send` is the end-to-end figure, from the
//! request's scheduled send time to the commit of its decision: the number
//! to compare across modes. Client and Postgres share this machine's clock.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hyper::{
    StatusCode,
    header::{HeaderName, HeaderValue},
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::{sync::Semaphore, task::JoinSet};
use uuid::Uuid;

use crate::{
    connections::Connections,
    latency::Latencies,
    timeline::{Answer, SecondStats, Timeline},
};

/// How the claims are processed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// claim-api → Kafka → claim-worker (lock + fence) → Postgres.
    #[default]
    Pipeline,
    /// sql-baseline: `SELECT ... FOR UPDATE` and the decision inside the request.
    SqlForUpdate,
}

impl Mode {
    /// The name used on the command line, in reports and element ids.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pipeline => "pipeline",
            Self::SqlForUpdate => "sql-for-update",
        }
    }
}

/// The sale itself: shared by `flash-sale` and `compare`.
#[derive(Debug, Clone, Args)]
pub struct SaleParams {
    /// Postgres, for the audit.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/turnstile"
    )]
    pub database_url: String,
    /// Coupons on sale (claims are spread over them at random).
    #[arg(long, default_value_t = 1)]
    pub coupons: usize,
    /// Units per coupon.
    #[arg(long, default_value_t = 1000)]
    pub stock: i64,
    /// Distinct users; a user may come back, and the limit of one per user holds.
    #[arg(long, default_value_t = 20_000)]
    pub users: u64,
    /// Offered load, claims per second.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// How long the load is offered, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Requests in flight at most, counting those waiting for a connection
    /// (beyond that the client counts them as dropped).
    #[arg(long, default_value_t = 2048)]
    pub max_in_flight: usize,
    /// Keep-alive connections to the API, opened before the clock starts; a
    /// request waits for a free one, and the wait counts in its latency.
    /// The default is twice what claim-api admits at once.
    #[arg(long, default_value = "512")]
    pub connections: NonZeroUsize,
    /// How long to wait for every accepted claim to be decided, in seconds.
    #[arg(long, default_value_t = 120)]
    pub decide_timeout: u64,
    /// Names the run's coupons (`FLASH-<run id>-<n>`) and idempotency keys
    /// (default: eight random hex digits).
    #[arg(long, value_parser = parse_run_id)]
    pub run_id: Option<String>,
}

fn parse_run_id(raw: &str) -> Result<String, String> {
    if (1..=16).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(raw.to_owned())
    } else {
        Err("1 to 16 ASCII letters and digits".to_owned())
    }
}

/// The code of coupon `n` in a run named `run_id`.
pub fn coupon_code(run_id: &str, n: usize) -> String {
    format!("FLASH-{run_id}-{n}")
}

/// Arguments of `loadtest flash-sale`.
#[derive(Debug, Clone, Args)]
pub struct FlashSaleArgs {
    /// The claim API (claim-api, or sql-baseline with `--mode sql-for-update`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// How the service at `--api` processes claims.
    #[arg(long, value_enum, default_value_t = Mode::Pipeline)]
    pub mode: Mode,
    #[command(flatten)]
    pub sale: SaleParams,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report (charts as inline SVG).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

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
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub transport_errors: u64,
    pub dropped: u64,
    pub undecided: u64,
    pub oversold: i64,
    pub double_claims: i64,
    pub fence_regressions: i64,
    pub remaining_mismatches: i64,
    /// Claims recorded under keys that were answered 429 or 5xx, which
    /// promise that nothing was recorded. Must be 0.
    pub refused_keys_taken: i64,
    pub claims_per_sec: f64,
    pub accept_p50_ms: f64,
    pub accept_p99_ms: f64,
    pub decide_p50_ms: f64,
    pub decide_p99_ms: f64,
    pub decide_from_send_p50_ms: f64,
    pub decide_from_send_p99_ms: f64,
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
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    throttled: AtomicU64,
    errors_4xx: AtomicU64,
    errors_5xx: AtomicU64,
    transport: AtomicU64,
    dropped: AtomicU64,
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
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One accepted claim, as the client saw it.
#[derive(Debug, Clone, Copy)]
struct AcceptedClaim {
    id: Uuid,
    /// Scheduled send time, from the start of the load.
    sent: Duration,
    /// From the scheduled send time to the answer.
    accept_latency: Duration,
}

/// The claim request's body.
#[derive(Serialize)]
struct ClaimBody<'a> {
    coupon: &'a str,
    user_id: &'a str,
}

/// The part of a claim's answer the load test reads.
#[derive(Deserialize)]
struct ClaimAnswer {
    claim_id: Uuid,
}

/// What the sending phase collected, behind one lock (held for a push).
#[derive(Debug, Default)]
struct Collected {
    accept: Latencies,
    accepted: Vec<AcceptedClaim>,
    /// The request numbers answered 429 or 5xx (the key is `{run_id}-{n}`).
    refused: Vec<u64>,
    timeline: Timeline,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding it; if something did, the data is still counts.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the sale and the audit.
pub async fn run(args: &FlashSaleArgs) -> Result<FlashSaleReport> {
    let sale = &args.sale;
    if sale.coupons == 0 || sale.users == 0 || sale.rate <= 0.0 || sale.duration == 0 {
        bail!("--coupons, --users, --rate and --duration must be greater than zero");
    }
    // Opened first: a wrong --api fails before anything is created.
    let connections = Connections::open(&args.api, sale.connections)
        .await
        .with_context(|| format!("is the {} service running at {}?", args.mode.as_str(), args.api))?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&sale.database_url)
        .await
        .context("connecting to postgres for the audit")?;
    let run_id = sale
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:08X}", rand::random::<u32>()));
    let codes: Arc<Vec<String>> = Arc::new((0..sale.coupons).map(|i| coupon_code(&run_id, i)).collect());
    for code in codes.iter() {
        let body = serde_json::to_vec(&serde_json::json!({"code": code, "total": sale.stock, "per_user_limit": 1}))?;
        let answer = connections
            .post_json("/v1/coupons", &[], body)
            .await
            .with_context(|| format!("creating coupon {code}"))?;
        if answer.status != StatusCode::CREATED {
            bail!("creating coupon {code}: {}", answer.status);
        }
    }

    let total = (sale.rate * sale.duration as f64).round() as u64;
    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{spinner} offering claims [{bar:40}] {pos}/{len} {per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let counters = Arc::new(Counters::default());
    let collected = Arc::new(Mutex::new(Collected {
        accepted: Vec::with_capacity(total as usize),
        ..Collected::default()
    }));
    let in_flight = Arc::new(Semaphore::new(sale.max_in_flight));
    let interval = Duration::from_secs_f64(1.0 / sale.rate);
    let started = Instant::now();
    let started_wall = SystemTime::now();
    // Finished requests are reaped as the run goes, so the generator's
    // memory stays flat instead of holding every request's task to the end.
    let mut tasks = JoinSet::new();
    let idempotency_key = HeaderName::from_static("idempotency-key");
    for i in 0..total {
        while let Some(finished) = tasks.try_join_next() {
            finished?;
        }
        let sent = interval.mul_f64(i as f64);
        let scheduled = started + sent;
        tokio::time::sleep_until(scheduled.into()).await;
        progress.inc(1);
        lock(&collected).timeline.offered(sent);
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            counters.count(Answer::Dropped);
            lock(&collected)
                .timeline
                .answered(sent, started.elapsed(), Answer::Dropped);
            continue;
        };
        let body = serde_json::to_vec(&ClaimBody {
            coupon: &codes[rand::random_range(0..codes.len())],
            user_id: &format!("user-{}", rand::random_range(0..sale.users)),
        })?;
        let key = HeaderValue::try_from(format!("{run_id}-{i}"))?;
        let (counters, collected, connections, idempotency_key) = (
            Arc::clone(&counters),
            Arc::clone(&collected),
            Arc::clone(&connections),
            idempotency_key.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let response = connections
                .post_json("/v1/claims", &[(&idempotency_key, key)], body)
                .await;
            // From the scheduled time: a late send counts against the system.
            let answered = started.elapsed();
            let answer = match &response {
                Ok(r) if matches!(r.status, StatusCode::ACCEPTED | StatusCode::OK) => Answer::Accepted,
                Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS => Answer::Throttled,
                Ok(r) if r.status.is_client_error() => Answer::ClientError,
                Ok(_) => Answer::ServerError,
                Err(_) => Answer::Transport,
            };
            counters.count(answer);
            let claim_id = match (answer, response) {
                (Answer::Accepted, Ok(r)) => serde_json::from_slice::<ClaimAnswer>(&r.body).ok().map(|a| a.claim_id),
                _ => None,
            };
            let accept_latency = answered.saturating_sub(sent);
            let mut collected = lock(&collected);
            collected.timeline.answered(sent, answered, answer);
            if answer == Answer::Accepted {
                collected.accept.record(accept_latency);
            }
            if matches!(answer, Answer::Throttled | Answer::ServerError) {
                collected.refused.push(i);
            }
            if let Some(id) = claim_id {
                collected.accepted.push(AcceptedClaim {
                    id,
                    sent,
                    accept_latency,
                });
            }
        });
    }
    while let Some(finished) = tasks.join_next().await {
        finished?;
    }
    progress.finish_and_clear();
    let Collected {
        accept,
        accepted,
        refused,
        mut timeline,
    } = std::mem::take(&mut *lock(&collected));
    let ids: Vec<Uuid> = accepted.iter().map(|c| c.id).collect();
    let decided_by = Instant::now() + Duration::from_secs(sale.decide_timeout);
    let undecided = wait_for_decisions(&pool, &ids, decided_by).await?;
    let mut report = audit(&pool, &codes, &ids, sale.stock).await?;
    report.refused_keys_taken = refused_keys_taken(&pool, &run_id, &refused).await?;
    let start_epoch = started_wall.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let decisions = decision_times(&pool, &ids).await?;
    let decided = measure_decisions(args.mode, start_epoch, &accepted, &decisions, &mut timeline);
    report.mode = args.mode;
    report.coupons = sale.coupons;
    report.stock_per_coupon = sale.stock;
    report.users = sale.users;
    report.rate = sale.rate;
    report.duration_s = sale.duration;
    report.offered = total;
    report.accepted = counters.accepted.load(Ordering::Relaxed);
    report.throttled_429 = counters.throttled.load(Ordering::Relaxed);
    report.errors_4xx = counters.errors_4xx.load(Ordering::Relaxed);
    report.errors_5xx = counters.errors_5xx.load(Ordering::Relaxed);
    report.transport_errors = counters.transport.load(Ordering::Relaxed);
    report.dropped = counters.dropped.load(Ordering::Relaxed);
    report.undecided = undecided;
    report.accept_p50_ms = accept.quantile_ms(0.5).unwrap_or(0.0);
    report.accept_p99_ms = accept.quantile_ms(0.99).unwrap_or(0.0);
    report.decide_p50_ms = decided.decide.quantile_ms(0.5).unwrap_or(0.0);
    report.decide_p99_ms = decided.decide.quantile_ms(0.99).unwrap_or(0.0);
    report.decide_from_send_p50_ms = decided.from_send.quantile_ms(0.5).unwrap_or(0.0);
    report.decide_from_send_p99_ms = decided.from_send.quantile_ms(0.99).unwrap_or(0.0);
    report.claims_per_sec = decided.per_sec;
    report.timeline = timeline.stats();
    Ok(report)
}

/// How many of the keys answered 429 or 5xx have a claim row. Those answers
/// promise that nothing was recorded: a retry with the key is a new request.
async fn refused_keys_taken(pool: &PgPool, run_id: &str, refused: &[u64]) -> Result<i64> {
    use turnstile_claim::{ClaimId, IdempotencyKey, TenantId};

    let tenant = TenantId::default_tenant();
    let ids = refused
        .iter()
        .map(|n| Ok(ClaimId::for_request(&tenant, &IdempotencyKey::parse(&format!("{run_id}-{n}"))?).as_uuid()))
        .collect::<Result<Vec<Uuid>, turnstile_claim::ParseError>>()?;
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM claims WHERE claim_id = ANY($1)")
            .bind(&ids)
            .fetch_one(pool)
            .await?,
    )
}

/// When a claim was accepted and decided, by Postgres' clock (epoch seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionTime {
    pub accepted_at: f64,
    pub decided_at: f64,
}

async fn decision_times(pool: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, DecisionTime>> {
    let rows: Vec<(Uuid, f64, f64)> = sqlx::query_as(
        "SELECT claim_id, extract(epoch FROM accepted_at)::float8, extract(epoch FROM decided_at)::float8
           FROM claims WHERE claim_id = ANY($1) AND status <> 'pending'",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, accepted_at, decided_at)| {
            (
                id,
                DecisionTime {
                    accepted_at,
                    decided_at,
                },
            )
        })
        .collect())
}

/// Decide latencies and throughput, from the client's record of each
/// accepted claim and Postgres' record of its decision.
#[derive(Debug)]
struct DecideMeasures {
    decide: Latencies,
    from_send: Latencies,
    per_sec: f64,
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
    let (mut first_accepted, mut last_decided, mut count) = (f64::INFINITY, f64::NEG_INFINITY, 0u64);
    for claim in accepted {
        let Some(t) = decisions.get(&claim.id) else {
            continue;
        };
        let (latency, end_to_end) = match mode {
            Mode::Pipeline => (
                secs(t.decided_at - t.accepted_at),
                secs(t.decided_at - start_epoch - claim.sent.as_secs_f64()),
            ),
            // Decided before the answer: the answer's latency is the decision's.
            Mode::SqlForUpdate => (claim.accept_latency, claim.accept_latency),
        };
        decide.record(latency);
        from_send.record(end_to_end);
        timeline.decided(claim.sent, claim.sent + end_to_end);
        first_accepted = first_accepted.min(t.accepted_at);
        last_decided = last_decided.max(t.decided_at);
        count += 1;
    }
    let span = last_decided - first_accepted;
    DecideMeasures {
        decide,
        from_send,
        per_sec: if count > 0 && span > 0.0 {
            count as f64 / span
        } else {
            0.0
        },
    }
}

/// Waits until none of `ids` is pending, or `deadline`; returns how many are.
async fn wait_for_decisions(pool: &PgPool, ids: &[Uuid], deadline: Instant) -> Result<u64> {
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM claims WHERE claim_id = ANY($1) AND status = 'pending'")
                .bind(ids)
                .fetch_one(pool)
                .await?;
        if pending == 0 || Instant::now() >= deadline {
            return Ok(u64::try_from(pending).unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The invariants, from what Postgres holds.
async fn audit(pool: &PgPool, codes: &[String], ids: &[Uuid], stock: i64) -> Result<FlashSaleReport> {
    let mut report = FlashSaleReport::default();
    let (granted, rejected): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'granted'), count(*) FILTER (WHERE status = 'rejected')
           FROM claims WHERE claim_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?;
    report.granted = u64::try_from(granted).unwrap_or(0);
    report.rejected = u64::try_from(rejected).unwrap_or(0);
    report.oversold = sqlx::query_scalar(
        "SELECT coalesce(sum(greatest(g.units - $2, 0)), 0)::bigint FROM (
           SELECT sum(quantity) AS units FROM claims
            WHERE kind = 'coupon' AND resource_id = ANY($1) AND status = 'granted' GROUP BY resource_id) g",
    )
    .bind(codes)
    .bind(stock)
    .fetch_one(pool)
    .await?;
    report.double_claims = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM claims
            WHERE kind = 'coupon' AND resource_id = ANY($1) AND status = 'granted'
            GROUP BY resource_id, user_id HAVING count(*) > 1) d",
    )
    .bind(codes)
    .fetch_one(pool)
    .await?;
    // In commit order per resource, a decision's fence is never below an
    // earlier decision's.
    report.fence_regressions = sqlx::query_scalar(
        "SELECT count(*) FROM (
           SELECT fence, max(fence) OVER (PARTITION BY resource_id ORDER BY decided_at, fence
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
             FROM claims WHERE kind = 'coupon' AND resource_id = ANY($1) AND status <> 'pending') t
          WHERE fence < before",
    )
    .bind(codes)
    .fetch_one(pool)
    .await?;
    report.remaining_mismatches = sqlx::query_scalar(
        "SELECT count(*) FROM resources r
          WHERE r.kind = 'coupon' AND r.id = ANY($1)
            AND r.remaining <> r.total - coalesce((SELECT sum(quantity) FROM claims c
                 WHERE c.kind = r.kind AND c.resource_id = r.id AND c.status = 'granted'), 0)",
    )
    .bind(codes)
    .fetch_one(pool)
    .await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(n: u128, sent_ms: u64, accept_ms: u64) -> AcceptedClaim {
        AcceptedClaim {
            id: Uuid::from_u128(n),
            sent: Duration::from_millis(sent_ms),
            accept_latency: Duration::from_millis(accept_ms),
        }
    }

    #[test]
    fn pipeline_decide_latency_is_the_servers_and_end_to_end_starts_at_the_send() {
        let start = 1_000.0;
        let accepted = [claim(1, 500, 20), claim(2, 1_500, 30), claim(3, 1_600, 40)];
        // Claim 1: accepted by the API at +0.51 s, decided at +0.61 s.
        // Claim 2: accepted at +1.52 s, decided at +2.02 s. Claim 3: undecided.
        let decisions = HashMap::from([
            (
                Uuid::from_u128(1),
                DecisionTime {
                    accepted_at: 1_000.51,
                    decided_at: 1_000.61,
                },
            ),
            (
                Uuid::from_u128(2),
                DecisionTime {
                    accepted_at: 1_001.52,
                    decided_at: 1_002.02,
                },
            ),
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
    fn sql_decide_latency_is_the_answer() {
        let accepted = [claim(1, 0, 7)];
        let decisions = HashMap::from([(
            Uuid::from_u128(1),
            DecisionTime {
                accepted_at: 10.001,
                decided_at: 10.005,
            },
        )]);
        let m = measure_decisions(Mode::SqlForUpdate, 10.0, &accepted, &decisions, &mut Timeline::new());
        assert_eq!(m.decide.quantile_us(0.5), m.from_send.quantile_us(0.5));
        assert!((6.9..=7.1).contains(&m.decide.quantile_ms(0.5).unwrap()));
    }

    #[test]
    fn mode_names_match_the_command_line() {
        for mode in [Mode::Pipeline, Mode::SqlForUpdate] {
            assert_eq!(Mode::from_str(mode.as_str(), false).ok(), Some(mode));
            assert_eq!(serde_json::to_value(mode).unwrap(), mode.as_str());
        }
    }
}
