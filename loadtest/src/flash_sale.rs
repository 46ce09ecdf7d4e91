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

mod arguments;
mod audit;
mod generator;
mod report;

use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hyper::{StatusCode, header::AUTHORIZATION};
use sqlx::PgPool;
use uuid::Uuid;

pub use self::{
    arguments::{FlashSaleArgs, Mode, SaleParams, ThrottleArgs},
    report::{DecisionTime, FlashSaleReport},
};
use crate::{connections::Connections, credentials::Credentials, progress::Progress};

/// The code of coupon `n` in a run named `run_id`.
pub fn coupon_code(run_id: &str, n: usize) -> String {
    format!("FLASH-{run_id}-{n}")
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

/// Creates the coupons, offers the load, follows every accepted claim to
/// its decision, audits the sale and reports it.
async fn run_as(args: &FlashSaleArgs, credentials: &Credentials, pool: &PgPool) -> Result<FlashSaleReport> {
    let sale = &args.sale;
    // Opened before the coupons: a wrong --api fails before anything is created.
    let connections = Connections::open(&args.api, sale.connections, args.cacert.as_deref())
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
    let requests = generator::prepare_requests(&run_id, &codes, users, total, &mut rand::rng())?;
    let shown = Progress::new(args.json);
    let offered = generator::offer(sale, &shown, connections, credentials, requests, total).await?;
    let ids: Vec<Uuid> = offered.collected.accepted.iter().map(|c| c.id).collect();
    let decided_by = Instant::now() + Duration::from_secs(sale.decide_timeout);
    let waiting = shown.bar(
        ids.len() as u64,
        "{spinner} waiting for decisions [{bar:40}] {pos}/{len} decided ({elapsed})",
    );
    let undecided = audit::wait_for_decisions(pool, &ids, decided_by, &waiting).await?;
    waiting.finish_and_clear();
    let auditing = shown.spinner("auditing the sale in Postgres");
    let tenant = credentials.tenant();
    let mut report = audit::audit(pool, tenant, &codes, &ids).await?;
    let start_epoch = offered
        .started_wall
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    report.refused_keys_taken =
        audit::refused_keys_taken(pool, tenant, &run_id, start_epoch, &offered.collected.refused).await?;
    let decisions = audit::decision_times(pool, &ids).await?;
    report.record_sale(args, offered, start_epoch, undecided, &decisions);
    auditing.finish_and_clear();
    Ok(report)
}
