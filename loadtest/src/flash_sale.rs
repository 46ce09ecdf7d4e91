//! `loadtest flash-sale`: a flash sale through the HTTP API, measured
//! open-loop, then audited against Postgres.
//!
//! Requests are scheduled at a fixed rate and each latency is measured from
//! its *scheduled* send time, so a stall in the system shows up as latency
//! rather than as a politely slower client (no coordinated omission). After
//! the offered load ends, every accepted claim is followed to its decision,
//! and the invariants are checked in the database: nothing oversold, no user
//! granted twice, fences increasing in commit order, nothing left undecided.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{Mutex, Semaphore};
use uuid::Uuid;

use crate::latency::Latencies;

/// Arguments of `loadtest flash-sale`.
#[derive(Debug, Clone, Args)]
pub struct FlashSaleArgs {
    /// The claim API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
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
    /// Requests in flight at most (beyond that the client counts them as dropped).
    #[arg(long, default_value_t = 2048)]
    pub max_in_flight: usize,
    /// How long to wait for every accepted claim to be decided, in seconds.
    #[arg(long, default_value_t = 120)]
    pub decide_timeout: u64,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

/// What a flash sale measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlashSaleReport {
    pub coupons: usize,
    pub stock_per_coupon: i64,
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
    pub claims_per_sec: f64,
    pub accept_p50_ms: f64,
    pub accept_p99_ms: f64,
    pub decide_p50_ms: f64,
    pub decide_p99_ms: f64,
}

impl FlashSaleReport {
    /// Whether every invariant held.
    pub fn invariants_hold(&self) -> bool {
        self.undecided == 0
            && self.oversold == 0
            && self.double_claims == 0
            && self.fence_regressions == 0
            && self.remaining_mismatches == 0
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

/// Runs the sale and the audit.
pub async fn run(args: &FlashSaleArgs) -> Result<FlashSaleReport> {
    if args.coupons == 0 || args.users == 0 || args.rate <= 0.0 || args.duration == 0 {
        bail!("--coupons, --users, --rate and --duration must be greater than zero");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .timeout(Duration::from_secs(30))
        .build()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&args.database_url)
        .await
        .context("connecting to postgres for the audit")?;
    let run_id = format!("{:08X}", rand::random::<u32>());
    let codes: Arc<Vec<String>> = Arc::new((0..args.coupons).map(|i| format!("FLASH-{run_id}-{i}")).collect());
    for code in codes.iter() {
        let response = http
            .post(format!("{}/v1/coupons", args.api))
            .json(&serde_json::json!({"code": code, "total": args.stock, "per_user_limit": 1}))
            .send()
            .await
            .context("creating coupons (is claim-api running?)")?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!("creating coupon {code}: {}", response.status());
        }
    }

    let total = (args.rate * args.duration as f64).round() as u64;
    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{spinner} offering claims [{bar:40}] {pos}/{len} {per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let counters = Arc::new(Counters::default());
    let accept_latency = Arc::new(Mutex::new(Latencies::new()));
    let accepted_ids = Arc::new(Mutex::new(Vec::<Uuid>::with_capacity(total as usize)));
    let in_flight = Arc::new(Semaphore::new(args.max_in_flight));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        progress.inc(1);
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let code = codes[rand::random_range(0..codes.len())].clone();
        let user = format!("user-{}", rand::random_range(0..args.users));
        let key = format!("{run_id}-{i}");
        let (http, api) = (http.clone(), args.api.clone());
        let (counters, accept_latency, accepted_ids) = (
            Arc::clone(&counters),
            Arc::clone(&accept_latency),
            Arc::clone(&accepted_ids),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let response = http
                .post(format!("{api}/v1/claims"))
                .header("idempotency-key", key)
                .json(&serde_json::json!({"coupon": code, "user_id": user}))
                .send()
                .await;
            // From the scheduled time: a late send counts against the system.
            let latency = scheduled.elapsed();
            match response {
                Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                    accept_latency.lock().await.record(latency);
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    if let Ok(body) = r.json::<serde_json::Value>().await
                        && let Some(id) = body["claim_id"].as_str().and_then(|s| Uuid::parse_str(s).ok())
                    {
                        accepted_ids.lock().await.push(id);
                    }
                }
                Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    counters.throttled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) if r.status().is_client_error() => {
                    counters.errors_4xx.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    counters.errors_5xx.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    counters.transport.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    progress.finish_and_clear();
    let ids = accepted_ids.lock().await.clone();
    let decided_by = Instant::now() + Duration::from_secs(args.decide_timeout);
    let undecided = wait_for_decisions(&pool, &ids, decided_by).await?;
    let mut report = audit(&pool, &codes, &ids, args.stock).await?;
    let accept = accept_latency.lock().await;
    report.coupons = args.coupons;
    report.stock_per_coupon = args.stock;
    report.offered = total;
    report.accepted = counters.accepted.load(Ordering::Relaxed);
    report.throttled_429 = counters.throttled.load(Ordering::Relaxed);
    report.errors_4xx = counters.errors_4xx.load(Ordering::Relaxed);
    report.errors_5xx = counters.errors_5xx.load(Ordering::Relaxed);
    report.transport_errors = counters.transport.load(Ordering::Relaxed);
    report.dropped = counters.dropped.load(Ordering::Relaxed);
    report.undecided = undecided;
    report.accept_p50_ms = accept.quantile_us(0.5) as f64 / 1000.0;
    report.accept_p99_ms = accept.quantile_us(0.99) as f64 / 1000.0;
    Ok(report)
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

/// The invariants and decide latencies, from what Postgres holds.
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
    let (p50, p99, span_s, decided): (Option<f64>, Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
                extract(epoch FROM max(decided_at) - min(accepted_at))::float8, count(*)
           FROM (SELECT decided_at, accepted_at, extract(epoch FROM decided_at - accepted_at) * 1000 AS ms
                   FROM claims WHERE claim_id = ANY($1) AND status <> 'pending') d",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?;
    report.decide_p50_ms = p50.unwrap_or(0.0);
    report.decide_p99_ms = p99.unwrap_or(0.0);
    report.claims_per_sec = match span_s {
        Some(s) if s > 0.0 => decided as f64 / s,
        _ => 0.0,
    };
    Ok(report)
}
