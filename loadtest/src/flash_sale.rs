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
//!
//! Every request is built before the clock starts (body bytes and
//! idempotency key; the `Authorization` value is one for the whole run), so
//! the send loop only waits for each scheduled time and sends: the generator
//! shares the machine with what it measures.
//!
//! The sale acts as one tenant ([`crate::credentials`]): its coupons are
//! created with the tenant's admin key, its claims sent with its claim key,
//! and the audit reads that tenant's resources and claims only.
//!
//! Each scheduled request is one arrival: one shopper, one user id, one
//! idempotency key. Every arrival's claim goes through `turnstile-client`
//! on the generator's own connections, so a sale measures what a caller of
//! that client gets. By default an arrival answered 429 or 503 is counted
//! and gone. With `--retry` it behaves like a person: the client waits what
//! `Retry-After` asks (with jitter) and sends the same request under the
//! same key again, with the ticket the refusal carried, until it is
//! accepted or the offered load's window ends. Then
//! `decide_from_first_attempt` (from the arrival's first scheduled send to
//! its decision) is what the shopper lived through, and
//! `grants_to_earliest_share` says how first-come-first-served the sale
//! was. With `--throttle` the client also throttles itself (Google SRE's
//! adaptive throttling): the requests it drops are never sent, and are
//! counted apart, in `throttled_locally`.

use std::{
    collections::{BTreeMap, HashMap},
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
use hyper::{StatusCode, header::AUTHORIZATION};
use indicatif::ProgressBar;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use turnstile_claim::{
    IdempotencyKey, ResourceId, ResourceKey, TenantId, UserId,
    audit::{AuditScope, InvariantReport},
};
use turnstile_client::{
    AttemptEnd, AttemptOutcome, CallOptions, ClaimBatch, Client, NewClaim, Observer, PreparedClaim, RetryPolicy,
    ThrottleSettings,
};
use turnstile_store as store;
use uuid::Uuid;

use crate::{
    connections::Connections,
    credentials::{Credentials, KeyArgs},
    generator_cpu::CpuStopwatch,
    latency::Latencies,
    progress::Progress,
    refusals::{KeyAnswer, Promise, RefusedKey, is_refusal},
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
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Coupons on sale (claims are spread over them at random).
    #[arg(long, default_value_t = 1)]
    pub coupons: usize,
    /// Units per coupon.
    #[arg(long, default_value_t = 1000)]
    pub stock: i64,
    /// Distinct users; a user may come back, and the limit of one per user holds.
    #[arg(long, default_value_t = 20_000)]
    pub users: u64,
    /// Every arrival is a user of its own (`--users` is ignored): with
    /// `--stock` at least the arrivals, every claim is a grant, the deep-stock
    /// sale that measures the pipeline's own pace.
    #[arg(long)]
    pub each_user_once: bool,
    /// Offered load, claims per second (`compare --sweep` ignores it).
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
    /// Shoppers come back: an arrival answered 429 or 503 waits the
    /// `Retry-After` seconds (1 when absent, at most 10) times a random
    /// factor in [0.5, 1.5), then sends the same request under the same
    /// idempotency key again (with the refusal's `Turnstile-Ticket`), until
    /// it is accepted or `--duration` is over: `turnstile-client`'s retries.
    #[arg(long)]
    pub retry: bool,
    #[command(flatten)]
    pub throttle: ThrottleArgs,
}

/// `turnstile-client`'s adaptive throttling, for a sale's arrivals.
#[derive(Debug, Clone, Args)]
pub struct ThrottleArgs {
    /// The client throttles itself (Google SRE's adaptive throttling): over
    /// a sliding window it drops each request with probability
    /// max(0, (requests - K * accepts) / (requests + 1)), where every answer
    /// but a 429 or 503 is an accept. Dropped requests are never sent and
    /// are counted in `throttled_locally`.
    #[arg(long)]
    pub throttle: bool,
    /// K of `--throttle`: the client sends about K times what the API accepts.
    #[arg(long, default_value_t = ThrottleSettings::DEFAULT_K, value_name = "K", requires = "throttle")]
    pub throttle_k: f64,
    /// The window of `--throttle`, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS", requires = "throttle")]
    pub throttle_window: u64,
}

impl Default for ThrottleArgs {
    fn default() -> Self {
        Self {
            throttle: false,
            throttle_k: ThrottleSettings::DEFAULT_K,
            throttle_window: 120,
        }
    }
}

impl ThrottleArgs {
    /// The throttle's settings, when it is on.
    pub fn settings(&self) -> Result<Option<ThrottleSettings>> {
        if !self.throttle {
            return Ok(None);
        }
        ThrottleSettings::try_new(Duration::from_secs(self.throttle_window), self.throttle_k)
            .map(Some)
            .context("--throttle-k must be at least 1 and --throttle-window from 1 s to a day")
    }
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

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    throttled: AtomicU64,
    rate_limited: AtomicU64,
    errors_4xx: AtomicU64,
    errors_5xx: AtomicU64,
    transport: AtomicU64,
    dropped: AtomicU64,
    throttled_locally: AtomicU64,
    door_answers: AtomicU64,
    requests_sent: AtomicU64,
    retries: AtomicU64,
    arrivals_refused: AtomicU64,
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
struct AcceptedClaim {
    id: Uuid,
    /// The arrival's number: arrivals are scheduled in this order.
    arrival: u64,
    /// The arrival's first scheduled send, from the start of the load.
    first_sent: Duration,
    /// Scheduled send time of the request that was accepted (a retry's is
    /// when its wait ended), from the start of the load.
    sent: Duration,
    /// From the scheduled send time to the answer.
    accept_latency: Duration,
    /// Answered at the door: final, and not recorded.
    at_the_door: bool,
}

/// Builds the `total` claims of a run: claim `n` has the idempotency key
/// `{run_id}-{n}`, a coupon of `codes` and one of `users` user ids, both
/// drawn from `rng` (or, with `users` `None`, user `n`: each user once).
/// The bodies share one buffer and the keys another, whatever `total` is.
fn prepare_requests(
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
struct Collected {
    accept: Latencies,
    accepted: Vec<AcceptedClaim>,
    /// The arrivals answered 429 or 503 at least once, with every answer
    /// their key got: no claim under their keys may have been recorded by
    /// a refused request.
    refused: Vec<RefusedKey>,
    /// Answers by HTTP status.
    statuses: BTreeMap<u16, u64>,
    timeline: Timeline,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding it; if something did, the data is still counts.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the sale and the audit, with the keys `args` names or, when it
/// names none, a pair minted for this run and revoked after it.
pub async fn run(args: &FlashSaleArgs) -> Result<FlashSaleReport> {
    let sale = &args.sale;
    if sale.coupons == 0 || sale.users == 0 || sale.rate <= 0.0 || sale.duration == 0 {
        bail!("--coupons, --users, --rate and --duration must be greater than zero");
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&sale.database_url)
        .await
        .context("connecting to postgres for the audit")?;
    let credentials = Credentials::resolve(&sale.keys, &pool).await?;
    let report = run_as(args, &credentials, &pool).await;
    credentials.revoke_minted(&pool).await;
    report
}

async fn run_as(args: &FlashSaleArgs, credentials: &Credentials, pool: &PgPool) -> Result<FlashSaleReport> {
    let sale = &args.sale;
    // Opened before the coupons: a wrong --api fails before anything is created.
    let connections = Connections::open(&args.api, sale.connections)
        .await
        .with_context(|| format!("is the {} service running at {}?", args.mode.as_str(), args.api))?;
    let run_id = sale
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:08X}", rand::random::<u32>()));
    let codes: Vec<String> = (0..sale.coupons).map(|i| coupon_code(&run_id, i)).collect();
    for code in &codes {
        let body = serde_json::to_vec(&serde_json::json!({"code": code, "total": sale.stock, "per_user_limit": 1}))?;
        let answer = connections
            .post_json(
                "/v1/coupons",
                &[(&AUTHORIZATION, credentials.admin_authorization().clone())],
                body,
            )
            .await
            .with_context(|| format!("creating coupon {code}"))?;
        match answer.status {
            StatusCode::CREATED => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => bail!(
                "creating coupon {code}: {} (does {} read its API keys from --database-url's database?): {}",
                answer.status,
                args.api,
                String::from_utf8_lossy(&answer.body)
            ),
            status => bail!("creating coupon {code}: {status}"),
        }
    }

    let total = (sale.rate * sale.duration as f64).round() as u64;
    let users = (!sale.each_user_once).then_some(sale.users);
    let requests = prepare_requests(&run_id, &codes, users, total, &mut rand::rng())?;
    let shown = Progress::new(args.json);
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
    let Collected {
        accept,
        accepted,
        refused,
        statuses,
        mut timeline,
    } = std::mem::take(&mut *lock(&shared.collected));
    for index in 0..total {
        timeline.offered(interval.mul_f64(index as f64));
    }
    let ids: Vec<Uuid> = accepted.iter().map(|c| c.id).collect();
    let decided_by = Instant::now() + Duration::from_secs(sale.decide_timeout);
    let waiting = shown.bar(
        ids.len() as u64,
        "{spinner} waiting for decisions [{bar:40}] {pos}/{len} decided ({elapsed})",
    );
    let undecided = wait_for_decisions(pool, &ids, decided_by, &waiting).await?;
    waiting.finish_and_clear();
    let auditing = shown.spinner("auditing the sale in Postgres");
    let tenant = credentials.tenant();
    let mut report = audit(pool, tenant, &codes, &ids).await?;
    let start_epoch = started_wall.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    report.refused_keys_taken = refused_keys_taken(pool, tenant, &run_id, start_epoch, &refused).await?;
    report.answers_by_status = statuses.into_iter().map(|(s, n)| (s.to_string(), n)).collect();
    report.started_at_epoch_s = start_epoch;
    let decisions = decision_times(pool, &ids).await?;
    let decided = measure_decisions(args.mode, start_epoch, &accepted, &decisions, &mut timeline);
    let earliest = u64::try_from(sale.stock)
        .unwrap_or(0)
        .saturating_mul(sale.coupons as u64);
    let counters = &shared.counters;
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    report.mode = args.mode;
    report.coupons = sale.coupons;
    report.stock_per_coupon = sale.stock;
    report.users = sale.users;
    report.rate = sale.rate;
    report.duration_s = sale.duration;
    report.offered = total;
    report.accepted = count(&counters.accepted);
    report.throttled_429 = count(&counters.throttled);
    report.rate_limited_429 = count(&counters.rate_limited);
    report.errors_4xx = count(&counters.errors_4xx);
    report.errors_5xx = count(&counters.errors_5xx);
    report.transport_errors = count(&counters.transport);
    report.dropped = count(&counters.dropped);
    report.undecided = undecided;
    report.accept_p50_ms = accept.quantile_ms(0.5).unwrap_or(0.0);
    report.accept_p99_ms = accept.quantile_ms(0.99).unwrap_or(0.0);
    report.decide_p50_ms = decided.decide.quantile_ms(0.5).unwrap_or(0.0);
    report.decide_p99_ms = decided.decide.quantile_ms(0.99).unwrap_or(0.0);
    report.decide_from_send_p50_ms = decided.from_send.quantile_ms(0.5).unwrap_or(0.0);
    report.decide_from_send_p99_ms = decided.from_send.quantile_ms(0.99).unwrap_or(0.0);
    report.claims_per_sec = decided.per_sec;
    report.answered_per_sec = decided.answered_per_sec;
    report.answered = decided.answered;
    report.door_answers = count(&counters.door_answers);
    report.retry = sale.retry;
    report.requests_sent = count(&counters.requests_sent);
    report.retries = count(&counters.retries);
    report.retry_share = if report.requests_sent > 0 {
        report.retries as f64 / report.requests_sent as f64
    } else {
        0.0
    };
    report.throttle = sale.throttle.throttle;
    report.throttle_k = sale.throttle.throttle_k;
    report.throttle_window_s = sale.throttle.throttle_window;
    report.throttled_locally = count(&counters.throttled_locally);
    report.arrivals_refused = count(&counters.arrivals_refused);
    report.decide_from_first_attempt_p50_ms = decided.from_first_attempt.quantile_ms(0.5).unwrap_or(0.0);
    report.decide_from_first_attempt_p99_ms = decided.from_first_attempt.quantile_ms(0.99).unwrap_or(0.0);
    report.grants_to_earliest_share = grants_to_earliest_share(&accepted, &decisions, earliest);
    report.generator_cpu_share = generator.share;
    report.generator_cores = generator.cores;
    report.timeline = timeline.stats();
    auditing.finish_and_clear();
    Ok(report)
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

/// How many of the keys answered 429 or 503 have a claim row that a
/// refused request recorded: the contract of [`crate::refusals`], judged on
/// every answer each key got. `start_epoch` is the load's start in Unix
/// seconds, which puts Postgres' `accepted_at` on the load's clock.
async fn refused_keys_taken(
    pool: &PgPool,
    tenant: &TenantId,
    run_id: &str,
    start_epoch: f64,
    refused: &[RefusedKey],
) -> Result<i64> {
    use turnstile_claim::{ClaimId, IdempotencyKey};

    let mut by_id = HashMap::with_capacity(refused.len());
    for key in refused {
        let idempotency_key = IdempotencyKey::parse(&format!("{run_id}-{}", key.arrival))?;
        by_id.insert(ClaimId::for_request(tenant, &idempotency_key).as_uuid(), key);
    }
    let ids: Vec<Uuid> = by_id.keys().copied().collect();
    let rows: Vec<(Uuid, f64)> =
        sqlx::query_as("SELECT claim_id, extract(epoch FROM accepted_at)::float8 FROM claims WHERE claim_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    let taken = rows
        .into_iter()
        .filter(|(id, accepted_at)| {
            // A row recorded before the load started is on no request's
            // clock: recorded at 0, which no request accounts for.
            let recorded = Duration::try_from_secs_f64(accepted_at - start_epoch).unwrap_or(Duration::ZERO);
            by_id.get(id).is_some_and(|key| key.taken_by_refusal(recorded))
        })
        .count();
    Ok(i64::try_from(taken)?)
}

/// When a claim was accepted and decided, by Postgres' clock (epoch
/// seconds), and whether it was granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionTime {
    pub accepted_at: f64,
    pub decided_at: f64,
    pub granted: bool,
}

async fn decision_times(pool: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, DecisionTime>> {
    let rows: Vec<(Uuid, f64, f64, bool)> = sqlx::query_as(
        "SELECT claim_id, extract(epoch FROM accepted_at)::float8, extract(epoch FROM decided_at)::float8,
                status = 'granted'
           FROM claims WHERE claim_id = ANY($1) AND status <> 'pending'",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, accepted_at, decided_at, granted)| {
            (
                id,
                DecisionTime {
                    accepted_at,
                    decided_at,
                    granted,
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

/// Waits until none of `ids` is pending, or `deadline`; returns how many are.
async fn wait_for_decisions(pool: &PgPool, ids: &[Uuid], deadline: Instant, progress: &ProgressBar) -> Result<u64> {
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM claims WHERE claim_id = ANY($1) AND status = 'pending'")
                .bind(ids)
                .fetch_one(pool)
                .await?;
        progress.set_position((ids.len() as u64).saturating_sub(u64::try_from(pending).unwrap_or(0)));
        if pending == 0 || Instant::now() >= deadline {
            return Ok(u64::try_from(pending).unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The invariants, from what Postgres holds about `tenant`'s coupons `codes`
/// (the same codes in another tenant are other coupons).
async fn audit(pool: &PgPool, tenant: &TenantId, codes: &[String], ids: &[Uuid]) -> Result<FlashSaleReport> {
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
    // Nothing oversold, nobody over the per-user limit, `remaining` equal
    // to stock less grants: the invariants every recount checks.
    let coupons = codes
        .iter()
        .map(|code| Ok(ResourceKey::coupon(tenant.clone(), ResourceId::parse("coupon", code)?)))
        .collect::<Result<Vec<_>>>()?;
    let (_, ledgers) = store::check_invariants(pool, &AuditScope::Resources(coupons)).await?;
    let invariants = InvariantReport::of(&ledgers);
    // Coupons missing from the database mean it is not the API's: an audit
    // of nothing would pass.
    anyhow::ensure!(
        invariants.resources == codes.len() as u64,
        "{} of the sale's {} coupons found in the database: is --database-url the API's?",
        invariants.resources,
        codes.len()
    );
    report.oversold = invariants.oversold_units;
    report.double_claims = invariants.users_over_limit;
    report.remaining_mismatches = invariants.remaining_mismatches;
    // In commit order per resource, a decision's fence is never below an
    // earlier decision's.
    report.fence_regressions = sqlx::query_scalar(
        "SELECT count(*) FROM (
           SELECT fence, max(fence) OVER (PARTITION BY resource_id ORDER BY decided_at, fence
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
             FROM claims
            WHERE tenant_id = $2 AND kind = 'coupon' AND resource_id = ANY($1) AND status <> 'pending') t
          WHERE fence < before",
    )
    .bind(codes)
    .bind(tenant.as_str())
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

    #[test]
    fn mode_names_match_the_command_line() {
        for mode in [Mode::Pipeline, Mode::SqlForUpdate] {
            assert_eq!(Mode::from_str(mode.as_str(), false).ok(), Some(mode));
            assert_eq!(serde_json::to_value(mode).unwrap(), mode.as_str());
        }
    }
}
