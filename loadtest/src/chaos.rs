//! `loadtest chaos`: a flash sale with a fault injected halfway, then the
//! same invariants as `flash-sale` (nothing oversold, nobody granted twice,
//! fences increasing, nothing left undecided).
//!
//! Each run is self-contained: it starts a private PostgreSQL and a private
//! Redis (so it may kill or restart them without disturbing anything else),
//! its own `claim-api` and `claim-worker` processes (the binaries next to
//! this one, or `--bin-dir`), and its own topics and consumer group on the
//! shared Kafka-protocol broker; the scenarios that kill or edit the broker
//! start a private one (tansu, in memory) instead. Everything listens on
//! 127.0.0.1 and stops by itself.
//!
//! Each scenario is a module of `chaos::scenarios`, documented there, and
//! implements its one trait, `Fault`; the run around it is the same for
//! all: private stores, the services (`chaos::rig`), the sale, the fault,
//! the checks and the report.
//!
//! Every scenario checks the sale's invariants, among them that no key
//! answered 429 or 503 has a claim (those answers promise nothing was
//! recorded; a 504 outcome-unknown promises nothing either way).
//!
//! Each run mints an admin key and a claim key for tenant `default` in its
//! private PostgreSQL once claim-api has migrated it; the sale, the
//! dup-keys clients and the poison events all act in that tenant.
//!
//! Whether a refused key was taken is judged on every answer the key got,
//! not only its last ([`crate::refusals`]).
//!
//! The harness supervises the services as `scripts/lib/supervise.sh` does
//! in the stack: one that exits on its own (a crash such as a SIGSEGV in
//! librdkafka) is started again within half a second, the same way and on
//! the same ports. The report lists each restart with the exit status and
//! whether the sale resumed (a claim decided within 10 s of the restart,
//! or nothing waiting). A scenario passes only if no service exited, or
//! each exit was restarted and the sale resumed; the summary line says
//! which.

mod probes;
mod rig;
mod scenarios;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, ValueEnum};
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::Value;
use turnstile_claim::{ResourceId, ResourceKey, TenantId};
use turnstile_private_stores::{PrivateBroker, PrivatePostgres, PrivateRedis};

pub use self::rig::Restart;
use self::{
    rig::{RESUME_WITHIN, Rig},
    scenarios::{Fault, Findings, Run},
};
use crate::{
    credentials::Credentials,
    flash_sale::{self, FlashSaleArgs},
    progress::Progress,
};

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    PauseWorker,
    KillWorker,
    KillRedis,
    RestartPostgres,
    RebalanceStorm,
    DupKeys,
    Overload,
    FreezePostgres,
    PublishFailsAfterCommit,
    RedisSnapshotRollback,
    BackendSwitch,
    PoisonDecodable,
    BrokerRestartEmpty,
    TopicDeleted,
    #[value(name = "broker-down-60s")]
    #[serde(rename = "broker-down-60s")]
    BrokerDown60s,
    PgCrashDuringAccept,
    DecidedTopicUnwritable,
    /// Every scenario, one after the other.
    All,
}

impl Scenario {
    const EACH: [Self; 17] = [
        Self::PauseWorker,
        Self::KillWorker,
        Self::KillRedis,
        Self::RestartPostgres,
        Self::RebalanceStorm,
        Self::DupKeys,
        Self::Overload,
        Self::FreezePostgres,
        Self::PublishFailsAfterCommit,
        Self::RedisSnapshotRollback,
        Self::BackendSwitch,
        Self::PoisonDecodable,
        Self::BrokerRestartEmpty,
        Self::TopicDeleted,
        Self::BrokerDown60s,
        Self::PgCrashDuringAccept,
        Self::DecidedTopicUnwritable,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::PauseWorker => "pause-worker",
            Self::KillWorker => "kill-worker",
            Self::KillRedis => "kill-redis",
            Self::RestartPostgres => "restart-postgres",
            Self::RebalanceStorm => "rebalance-storm",
            Self::DupKeys => "dup-keys",
            Self::Overload => "overload",
            Self::FreezePostgres => "freeze-postgres",
            Self::PublishFailsAfterCommit => "publish-fails-after-commit",
            Self::RedisSnapshotRollback => "redis-snapshot-rollback",
            Self::BackendSwitch => "backend-switch",
            Self::PoisonDecodable => "poison-decodable",
            Self::BrokerRestartEmpty => "broker-restart-empty",
            Self::TopicDeleted => "topic-deleted",
            Self::BrokerDown60s => "broker-down-60s",
            Self::PgCrashDuringAccept => "pg-crash-during-accept",
            Self::DecidedTopicUnwritable => "decided-topic-unwritable",
            Self::All => "all",
        }
    }

    /// The scenario's fault, fresh for one run.
    fn fault(self) -> Box<dyn Fault> {
        use scenarios::*;

        match self {
            Self::PauseWorker => Box::new(pause_worker::PauseWorker::default()),
            Self::KillWorker => Box::new(kill_worker::KillWorker),
            Self::KillRedis => Box::new(kill_redis::KillRedis),
            Self::RestartPostgres => Box::new(restart_postgres::RestartPostgres),
            Self::RebalanceStorm => Box::new(rebalance_storm::RebalanceStorm),
            Self::DupKeys => Box::new(dup_keys::DupKeys),
            Self::Overload => Box::new(overload::Overload),
            Self::FreezePostgres => Box::new(freeze_postgres::FreezePostgres),
            Self::PublishFailsAfterCommit => Box::new(publish_fails_after_commit::PublishFailsAfterCommit),
            Self::RedisSnapshotRollback => Box::new(redis_snapshot_rollback::RedisSnapshotRollback),
            Self::BackendSwitch => Box::new(backend_switch::BackendSwitch),
            Self::PoisonDecodable => Box::new(poison_decodable::PoisonDecodable),
            Self::BrokerRestartEmpty => Box::new(broker_restart_empty::BrokerRestartEmpty::default()),
            Self::TopicDeleted => Box::new(topic_deleted::TopicDeleted::default()),
            Self::BrokerDown60s => Box::new(broker_down_60s::BrokerDown60s::default()),
            Self::PgCrashDuringAccept => Box::new(pg_crash_during_accept::PgCrashDuringAccept),
            Self::DecidedTopicUnwritable => Box::new(decided_topic_unwritable::DecidedTopicUnwritable::default()),
            Self::All => unreachable!("`all` is expanded into each scenario before a run"),
        }
    }
}

/// Partitions of each of a run's topics.
const PARTITIONS: i32 = 3;

/// Arguments of `loadtest chaos`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// The fault to inject (`all` runs each in turn).
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Where `claim-api` and `claim-worker` are (default: beside this binary).
    #[arg(long, env = "TURNSTILE_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// The Kafka-protocol broker (shared; each run has its own topics).
    /// The scenarios that kill or edit the broker start one of their own.
    #[arg(long, env = "TURNSTILE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Units of the one hot coupon. By default 85% of the claims offered:
    /// it sells out near the end, so claims flow through the pipeline
    /// across the fault (after a sell-out claim-api answers them at the
    /// door, and a fault's effect on deciding would go unseen) and the
    /// sell-out still comes under load.
    #[arg(long)]
    pub stock: Option<i64>,
    /// Distinct users (each may hold one unit): enough that nearly every
    /// claim is a new user's.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Offered claims per second (`overload` offers 20 times this).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of offered load; the fault lands a quarter of the way in.
    #[arg(long, default_value_t = 12)]
    pub duration: u64,
    /// Where the services' logs go (default: a directory under /tmp).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// One JSON object per scenario, each on its own line.
    #[arg(long)]
    pub json: bool,
}

/// Runs the scenario(s); returns one report per scenario.
pub async fn run(args: &ChaosArgs) -> Result<Vec<ChaosReport>> {
    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All => Scenario::EACH.to_vec(),
        one => vec![one],
    };
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("no directory for this binary")?,
    };
    for bin in ["claim-api", "claim-worker"] {
        if !bin_dir.join(bin).is_file() {
            bail!(
                "{bin} not found in {}: build it (cargo build -p claim-api -p claim-worker) or pass --bin-dir",
                bin_dir.display()
            );
        }
    }
    let mut reports = Vec::with_capacity(scenarios.len());
    let count = scenarios.len();
    for (n, scenario) in scenarios.into_iter().enumerate() {
        let phase = Progress::new(args.json).spinner("starting private Postgres and Redis");
        phase.set_prefix(format!("chaos {}/{count} {}: ", n + 1, scenario.name()));
        let report = run_one(args, &bin_dir, scenario, &phase)
            .await
            .with_context(|| format!("scenario {}", scenario.name()))?;
        phase.finish_and_clear();
        reports.push(report);
    }
    Ok(reports)
}

/// What one scenario did and found.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub scenario: Scenario,
    /// When the fault was injected (RFC 3339, UTC).
    pub fault_injected_at: String,
    /// The same, in seconds after the sale started.
    pub fault_at_s: f64,
    /// What was done, in words.
    pub fault: String,
    /// Scenario-specific checks, each `true` when it held.
    pub checks: serde_json::Map<String, Value>,
    /// Scenario-specific numbers behind the checks.
    pub measured: serde_json::Map<String, Value>,
    /// Services that exited on their own during the run and were started
    /// again (none, when all is well).
    pub restarts: Vec<Restart>,
    /// No service exited, or each that did was started again and the sale
    /// resumed within 10 s.
    pub services_ok: bool,
    /// Whether the invariants, every check and `services_ok` held.
    pub passed: bool,
    /// Writes the database refused for a stale fencing token (zombies
    /// stopped), summed over the workers still running at the end.
    pub fence_rejections: f64,
    /// Claims the sweeper re-decided because their message was skipped.
    pub swept: f64,
    /// The flash sale's own report (counts, latencies, invariants).
    pub sale: Value,
}

impl ChaosReport {
    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let field = |k: &str| self.sale.get(k).cloned().unwrap_or(Value::Null);
        let services = if self.restarts.is_empty() {
            "services=none exited".to_owned()
        } else {
            let each: Vec<String> = self
                .restarts
                .iter()
                .map(|r| {
                    let resumed = match r.first_decision_after_s {
                        _ if !r.resumed => "NOT resumed within 10 s".to_owned(),
                        Some(s) if s <= RESUME_WITHIN.as_secs_f64() => format!("resumed in {s:.1} s"),
                        _ => "nothing was waiting".to_owned(),
                    };
                    format!("{} {} restarted, {resumed}", r.service, r.exit)
                })
                .collect();
            format!(
                "services={} exit(s), {}: [{}]",
                self.restarts.len(),
                if self.services_ok {
                    "each restarted and the sale resumed within 10 s"
                } else {
                    "NOT all recovered"
                },
                each.join("; ")
            )
        };
        format!(
            "{:<26} {:<6} accepted={} granted={} 429={} 5xx={} transport={} oversold={} double={} fence_regr={} undecided={} refused_taken={} fence_rejections={} swept={} checks={} measured={} {services}",
            self.scenario.name(),
            if self.passed { "PASS" } else { "FAIL" },
            field("accepted"),
            field("granted"),
            field("throttled_429"),
            field("errors_5xx"),
            field("transport_errors"),
            field("oversold"),
            field("double_claims"),
            field("fence_regressions"),
            field("undecided"),
            field("refused_keys_taken"),
            self.fence_rejections,
            self.swept,
            Value::Object(self.checks.clone()),
            Value::Object(self.measured.clone()),
        )
    }
}

/// Runs one scenario; `phase` shows which part of it is under way.
async fn run_one(args: &ChaosArgs, bin_dir: &Path, scenario: Scenario, phase: &ProgressBar) -> Result<ChaosReport> {
    let mut fault = scenario.fault();
    let run_id = format!("{:08x}", rand::random::<u32>());
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("turnstile-chaos"))
        .join(format!("{}-{run_id}", scenario.name()));
    std::fs::create_dir_all(&log_dir)?;
    let postgres = PrivatePostgres::start(&log_dir).await?;
    let redis = PrivateRedis::start(&log_dir).await?;
    let broker = if fault.needs_private_broker() {
        Some(PrivateBroker::start(&log_dir).await?)
    } else {
        None
    };
    let brokers = broker
        .as_ref()
        .map_or_else(|| args.brokers.clone(), PrivateBroker::addr);
    let prefix = format!("chaos-{run_id}-");
    let lock_ttl = Duration::from_millis(2_000);
    let session = Duration::from_millis(6_000);
    let mut env = vec![
        ("DATABASE_URL", postgres.url()),
        ("TURNSTILE_REDIS_URL", redis.url()),
        ("TURNSTILE_LOCK_REDIS_URL", redis.url()),
        ("TURNSTILE_KAFKA_BROKERS", brokers.clone()),
        ("TURNSTILE_TOPIC_PREFIX", prefix.clone()),
        ("TURNSTILE_GROUP_ID", format!("chaos-{run_id}")),
        ("TURNSTILE_PARTITIONS", PARTITIONS.to_string()),
        ("TURNSTILE_LOCK_TTL", format!("{}ms", lock_ttl.as_millis())),
        ("TURNSTILE_SESSION_TIMEOUT", format!("{}ms", session.as_millis())),
        ("TURNSTILE_SWEEP_AFTER", "5s".to_owned()),
        ("TURNSTILE_SWEEP_INTERVAL", "1s".to_owned()),
        ("TURNSTILE_AUDIT_INTERVAL", "2s".to_owned()),
        ("TURNSTILE_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info,turnstile_coordinator::subscription=debug".to_owned()),
    ];
    env.extend(fault.env());
    phase.set_message("starting claim-api and two workers");
    let rig = Rig::start(bin_dir, &log_dir, env, fault.worker_env(), 2).await?;
    // claim-api is ready, so it has migrated the database: keys can go in.
    let credentials = {
        let pool = sqlx::PgPool::connect(&postgres.url()).await?;
        let credentials = Credentials::mint(&pool, &TenantId::default_tenant()).await?;
        pool.close().await;
        credentials
    };

    let (rate, duration) = fault.load(args.rate, args.duration);
    let sale = sale_args(
        &rig.api_url,
        &postgres.url(),
        &credentials,
        args,
        rate,
        duration,
        &run_id,
    )?;
    let hot_coupon = ResourceKey::coupon(
        credentials.tenant().clone(),
        ResourceId::parse("coupon", &flash_sale::coupon_code(&run_id, 0))?,
    );
    let started = Instant::now();
    phase.set_message(format!("sale running at {rate:.0} claims/s, fault to come"));
    let sale_task = tokio::spawn(async move { flash_sale::run(&sale).await });
    let mut run = Run {
        args: args.clone(),
        run_id,
        rig,
        postgres,
        redis,
        broker,
        brokers,
        requested_topic: format!("{prefix}claims.requested"),
        decided_topic: format!("{prefix}claims.decided"),
        lock_ttl,
        session,
        credentials,
        hot_coupon,
        rate,
        started,
    };
    fault.lead_in(&mut run).await?;
    let fault_at_s = started.elapsed().as_secs_f64();
    let fault_injected_at = now_rfc3339();
    phase.set_message(format!("injecting the fault at {fault_at_s:.0} s"));
    let mut findings = Findings::default();
    let description = fault.inject(&mut run, &mut findings).await?;
    phase.set_message(format!(
        "fault done ({description}); sale and decisions finishing, then the audit"
    ));
    let sale_report = run.rig.supervise_until(sale_task).await??;
    phase.set_message("checking the scenario's invariants");
    let pool = sqlx::PgPool::connect(&run.postgres.url()).await?;
    fault.check(&run, &pool, &sale_report, &mut findings).await?;
    let Run {
        mut rig,
        postgres,
        redis,
        broker,
        ..
    } = run;
    let restarts = rig.judge_restarts(&pool).await?;
    pool.close().await;
    let Findings { checks, measured } = findings;
    let services_ok = restarts.iter().all(|r| r.resumed);
    let passed = sale_report.invariants_hold()
        && sale_report.undecided == 0
        && checks.values().all(|v| v.as_bool() == Some(true))
        && services_ok;
    let fence_rejections = rig.worker_counter("turnstile_fence_rejections_total").await;
    let swept = rig.worker_counter("turnstile_claims_swept_total").await;
    rig.stop().await;
    redis.stop().await;
    postgres.stop().await;
    if let Some(broker) = broker {
        broker.stop().await;
    }
    Ok(ChaosReport {
        scenario,
        fault_injected_at,
        fault_at_s,
        fault: description,
        checks,
        measured,
        restarts,
        services_ok,
        passed,
        fence_rejections,
        swept,
        sale: serde_json::to_value(&sale_report)?,
    })
}

fn sale_args(
    api: &str,
    database_url: &str,
    credentials: &Credentials,
    args: &ChaosArgs,
    rate: f64,
    duration: u64,
    run_id: &str,
) -> Result<FlashSaleArgs> {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        sale: FlashSaleArgs,
    }
    let argv = [
        "flash-sale".to_owned(),
        "--api".to_owned(),
        api.to_owned(),
        "--database-url".to_owned(),
        database_url.to_owned(),
        "--coupons".to_owned(),
        "1".to_owned(),
        "--stock".to_owned(),
        args.stock.unwrap_or_else(|| default_stock(rate, duration)).to_string(),
        "--users".to_owned(),
        args.users.to_string(),
        "--rate".to_owned(),
        rate.to_string(),
        "--duration".to_owned(),
        duration.to_string(),
        "--run-id".to_owned(),
        run_id.to_owned(),
        "--json".to_owned(),
    ];
    let mut sale = Wrapper::try_parse_from(argv)?.sale;
    sale.sale.keys = credentials.as_args();
    Ok(sale)
}

/// 85% of the claims a sale at `rate` for `duration` seconds offers: see
/// [`ChaosArgs::stock`].
fn default_stock(rate: f64, duration: u64) -> i64 {
    (rate * duration as f64 * 0.85).round() as i64
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
