//! `loadtest chaos`: a flash sale with a fault injected halfway, then the
//! same invariants as `flash-sale` (nothing oversold, nobody granted twice,
//! fences increasing, nothing left undecided).
//!
//! Each run is self-contained: it starts a private PostgreSQL and a private
//! Redis (so it may kill or restart them without disturbing anything else),
//! its own `claim-api` and `claim-worker` processes (the binaries next to
//! this one, or `--bin-dir`), and its own topics and consumer group on the
//! shared Kafka-protocol broker. Everything listens on 127.0.0.1 and stops
//! by itself.
//!
//! Scenarios:
//! - `pause-worker`: SIGSTOP a worker past its lock ttl and its group
//!   session, then SIGCONT: it wakes up a zombie and the fence refuses it.
//! - `kill-worker`: SIGKILL a worker mid-batch and start a new one.
//! - `kill-redis`: SIGKILL the lock (and cache) Redis and restart it empty.
//! - `restart-postgres`: stop PostgreSQL (fast shutdown) and start it again.
//! - `rebalance-storm`: start and stop workers every second while claims flow.
//! - `dup-keys`: many clients resend the same idempotency keys at once, some
//!   with altered bodies: one claim per key, altered copies refused with 422.
//! - `overload`: an offered rate far above capacity: 429s must appear and
//!   nothing breaks.
//! - `freeze-postgres`: SIGSTOP every PostgreSQL process for 8 s, then
//!   SIGCONT: the API answers 503 or waits, nothing accepted is lost.
//! - `publish-fails-after-commit`: claim-api drops the publish of 20 claims
//!   after their commit (a failpoint): they were answered 202, and the
//!   sweeper decides them.
//! - `redis-snapshot-rollback`: the lock Redis is snapshotted early in the
//!   sale, then killed and restarted from that older snapshot: its token
//!   counter is behind the database's fence, and the first refused write
//!   repairs it.
//! - `backend-switch`: the workers are replaced mid-sale by workers locking
//!   in PostgreSQL, whose tokens start far below the Redis tokens the
//!   database accepted.
//! - `poison-decodable`: valid JSON the API would never send (quantity 0),
//!   and a valid event for a claim that does not exist, on the hot
//!   partition: both are dead-lettered at once and nothing stalls.
//!
//! Every scenario checks the sale's invariants, among them that no key
//! answered 429 or 5xx has a claim (those answers promise nothing was
//! recorded).
//!
//! Each run mints an admin key and a claim key for tenant `default` in its
//! private PostgreSQL once claim-api has migrated it; the sale, the
//! dup-keys clients and the poison events all act in that tenant.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, ValueEnum};
use hyper::header::AUTHORIZATION;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    process::{Child, Command},
    time::sleep,
};
use turnstile_claim::{ResourceId, ResourceKey, TenantId};
use turnstile_private_stores::{PrivatePostgres, PrivateRedis, free_port};

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
    /// Every scenario, one after the other.
    All,
}

impl Scenario {
    const EACH: [Self; 12] = [
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
            Self::All => "all",
        }
    }
}

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
    #[arg(long, env = "TURNSTILE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Units of the one hot coupon.
    #[arg(long, default_value_t = 300)]
    pub stock: i64,
    /// Distinct users.
    #[arg(long, default_value_t = 3000)]
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
    /// Whether the invariants and every check held.
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
        format!(
            "{:<26} {:<6} accepted={} granted={} 429={} 5xx={} oversold={} double={} fence_regr={} undecided={} refused_taken={} fence_rejections={} swept={} checks={}",
            self.scenario.name(),
            if self.passed { "PASS" } else { "FAIL" },
            field("accepted"),
            field("granted"),
            field("throttled_429"),
            field("errors_5xx"),
            field("oversold"),
            field("double_claims"),
            field("fence_regressions"),
            field("undecided"),
            field("refused_keys_taken"),
            self.fence_rejections,
            self.swept,
            Value::Object(self.checks.clone()),
        )
    }
}

/// The services of one run and how to reach them.
struct Rig {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    env: Vec<(&'static str, String)>,
    api: Service,
    api_url: String,
    /// claim-api's operator listener (`/metrics`, `/readyz`).
    api_operator_url: String,
    workers: Vec<Service>,
    next_worker: usize,
}

struct Service {
    name: String,
    child: Child,
    /// Where a worker serves `/metrics`.
    metrics: Option<String>,
}

impl Service {
    fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("process already gone")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// SIGTERM and wait (the services drain and leave their group).
    async fn stop(mut self) {
        let _ = self.signal("TERM");
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Rig {
    async fn start(bin_dir: &Path, log_dir: &Path, env: Vec<(&'static str, String)>, workers: usize) -> Result<Self> {
        let api_port = free_port()?;
        let operator_port = free_port()?;
        let api = spawn(
            &bin_dir.join("claim-api"),
            "claim-api",
            log_dir,
            &env,
            &[
                ("TURNSTILE_HTTP_ADDR", format!("127.0.0.1:{api_port}")),
                ("TURNSTILE_METRICS_ADDR", format!("127.0.0.1:{operator_port}")),
            ],
        )?;
        let mut rig = Self {
            bin_dir: bin_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            env,
            api,
            api_url: format!("http://127.0.0.1:{api_port}"),
            api_operator_url: format!("http://127.0.0.1:{operator_port}"),
            workers: Vec::new(),
            next_worker: 1,
        };
        wait_ready(&format!("{}/readyz", rig.api_operator_url), "claim-api", log_dir).await?;
        for _ in 0..workers {
            rig.add_worker().await?;
        }
        Ok(rig)
    }

    async fn add_worker(&mut self) -> Result<()> {
        let port = free_port()?;
        let name = format!("claim-worker-{}", self.next_worker);
        self.next_worker += 1;
        let mut worker = spawn(
            &self.bin_dir.join("claim-worker"),
            &name,
            &self.log_dir,
            &self.env,
            &[("TURNSTILE_METRICS_ADDR", format!("127.0.0.1:{port}"))],
        )?;
        worker.metrics = Some(format!("http://127.0.0.1:{port}/metrics"));
        wait_ready(&format!("http://127.0.0.1:{port}/healthz"), &name, &self.log_dir).await?;
        self.workers.push(worker);
        Ok(())
    }

    /// Stops every worker and starts `count` new ones with `extra` added to
    /// their environment.
    async fn replace_workers(&mut self, count: usize, extra: &[(&'static str, String)]) -> Result<()> {
        for worker in std::mem::take(&mut self.workers) {
            worker.stop().await;
        }
        self.env.extend_from_slice(extra);
        for _ in 0..count {
            self.add_worker().await?;
        }
        Ok(())
    }

    /// Sums a counter of the API.
    async fn api_counter(&self, name: &str) -> f64 {
        counter(&format!("{}/metrics", self.api_operator_url), name).await
    }

    /// Waits until some worker logs a line containing `needle`; returns
    /// that worker's index. The services write their logs to files, so
    /// this polls them.
    async fn wait_for_log(&self, needle: &str, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            for (i, worker) in self.workers.iter().enumerate() {
                let log = self.log_dir.join(format!("{}.log", worker.name));
                if std::fs::read_to_string(&log).is_ok_and(|text| text.contains(needle)) {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no worker logged {needle:?} within {within:?}");
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until worker `i` logs a line containing `needle`.
    async fn wait_for_log_of(&self, i: usize, needle: &str, within: Duration) -> Result<()> {
        let log = self.log_dir.join(format!("{}.log", self.workers[i].name));
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if std::fs::read_to_string(&log).is_ok_and(|text| text.contains(needle)) {
                return Ok(());
            }
            sleep(Duration::from_millis(20)).await;
        }
        bail!("{} did not log {needle:?} within {within:?}", self.workers[i].name)
    }

    /// Sums counters over the running workers (a killed worker's are lost).
    async fn worker_counter(&self, name: &str) -> f64 {
        let mut total = 0.0;
        for url in self.workers.iter().filter_map(|w| w.metrics.as_deref()) {
            total += counter(url, name).await;
        }
        total
    }

    async fn stop(self) {
        for worker in self.workers {
            worker.stop().await;
        }
        self.api.stop().await;
    }
}

/// A counter read from a Prometheus text endpoint, summed over its labels
/// (0 when the endpoint does not answer).
async fn counter(url: &str, name: &str) -> f64 {
    let Ok(response) = reqwest::get(url).await else {
        return 0.0;
    };
    let Ok(text) = response.text().await else { return 0.0 };
    text.lines()
        .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn spawn(
    bin: &Path,
    name: &str,
    log_dir: &Path,
    env: &[(&'static str, String)],
    extra: &[(&'static str, String)],
) -> Result<Service> {
    let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
    let mut command = Command::new(bin);
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let child = command.spawn().with_context(|| format!("starting {}", bin.display()))?;
    Ok(Service {
        name: name.to_owned(),
        child,
        metrics: None,
    })
}

async fn wait_ready(url: &str, name: &str, log_dir: &Path) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(response) = http.get(url).timeout(Duration::from_secs(1)).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{name} not ready after 60 s; see {}",
        log_dir.join(format!("{name}.log")).display()
    )
}

/// Runs one scenario; `phase` shows which part of it is under way.
async fn run_one(args: &ChaosArgs, bin_dir: &Path, scenario: Scenario, phase: &ProgressBar) -> Result<ChaosReport> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("turnstile-chaos"))
        .join(format!("{}-{run_id}", scenario.name()));
    std::fs::create_dir_all(&log_dir)?;
    let mut postgres = PrivatePostgres::start(&log_dir).await?;
    let mut redis = PrivateRedis::start(&log_dir).await?;
    let lock_ttl = Duration::from_millis(2_000);
    let session = Duration::from_millis(6_000);
    let env = vec![
        ("DATABASE_URL", postgres.url()),
        ("TURNSTILE_REDIS_URL", redis.url()),
        ("TURNSTILE_LOCK_REDIS_URL", redis.url()),
        ("TURNSTILE_KAFKA_BROKERS", args.brokers.clone()),
        ("TURNSTILE_TOPIC_PREFIX", format!("chaos-{run_id}-")),
        ("TURNSTILE_GROUP_ID", format!("chaos-{run_id}")),
        ("TURNSTILE_PARTITIONS", "3".to_owned()),
        ("TURNSTILE_LOCK_TTL", format!("{}ms", lock_ttl.as_millis())),
        ("TURNSTILE_SESSION_TIMEOUT", format!("{}ms", session.as_millis())),
        ("TURNSTILE_SWEEP_AFTER", "5s".to_owned()),
        ("TURNSTILE_SWEEP_INTERVAL", "1s".to_owned()),
        ("TURNSTILE_AUDIT_INTERVAL", "2s".to_owned()),
        ("TURNSTILE_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    let mut env = env;
    if scenario == Scenario::PublishFailsAfterCommit {
        // After 50 publishes, claim-api drops the next 20 after their commit.
        env.push((
            "FAILPOINTS",
            format!("publish-after-commit=50*off->{UNPUBLISHED}*return"),
        ));
    }
    if scenario == Scenario::PauseWorker {
        // On its 21st resource batch, the worker on the hot partition holds
        // its lease 3 s between taking the token and writing: the window the
        // stop must land in to make a zombie.
        env.push((
            "FAILPOINTS",
            "hold-lease-before-write=20*off->1*return(3000)".to_owned(),
        ));
    }
    phase.set_message("starting claim-api and two workers");
    let mut rig = Rig::start(bin_dir, &log_dir, env, 2).await?;
    // claim-api is ready, so it has migrated the database: keys can go in.
    let credentials = {
        let pool = sqlx::PgPool::connect(&postgres.url()).await?;
        let credentials = Credentials::mint(&pool, &TenantId::default_tenant()).await?;
        pool.close().await;
        credentials
    };

    let rate = if scenario == Scenario::Overload {
        args.rate * 20.0
    } else {
        args.rate
    };
    let sale = sale_args(&rig.api_url, &postgres.url(), &credentials, args, rate, &run_id)?;
    let hot_coupon = ResourceKey::coupon(
        credentials.tenant().clone(),
        ResourceId::parse("coupon", &flash_sale::coupon_code(&run_id, 0))?,
    );
    let started = Instant::now();
    phase.set_message(format!("sale running at {rate:.0} claims/s, fault to come"));
    let sale_task = tokio::spawn(async move { flash_sale::run(&sale).await });
    // The pause lands inside a held lease (announced in the worker's log);
    // every other fault a quarter of the way in.
    let stalled = if scenario == Scenario::PauseWorker {
        Some(
            rig.wait_for_log("failpoint: holding lease before write", Duration::from_secs(30))
                .await?,
        )
    } else if scenario == Scenario::RedisSnapshotRollback {
        // The older snapshot: once some claims were decided, well before
        // the fault.
        sleep(Duration::from_secs_f64(args.duration as f64 / 8.0)).await;
        redis.snapshot().await?;
        sleep(Duration::from_secs_f64(args.duration as f64 / 8.0)).await;
        None
    } else {
        sleep(Duration::from_secs_f64(args.duration as f64 / 4.0)).await;
        None
    };
    let fault_at_s = started.elapsed().as_secs_f64();
    let fault_injected_at = now_rfc3339();
    phase.set_message(format!("injecting the fault at {fault_at_s:.0} s"));
    let mut checks = serde_json::Map::new();
    let fault = match scenario {
        Scenario::PauseWorker => {
            let zombie = stalled.unwrap_or(0);
            // Past the lease ttl and twice the group session: the other
            // worker owns the partition and has written under a newer
            // token before the zombie wakes up and tries its write.
            let pause = session * 2;
            rig.workers[zombie].signal("STOP")?;
            sleep(pause).await;
            rig.workers[zombie].signal("CONT")?;
            // Its write is refused once it runs: wait for that, not a time.
            let refused = rig
                .wait_for_log_of(
                    zombie,
                    "database refused a stale fencing token",
                    Duration::from_secs(30),
                )
                .await
                .is_ok();
            checks.insert("zombie_write_refused_by_fence".to_owned(), json!(refused));
            format!(
                "SIGSTOP {} while it held a lease, for {:.0} s (lock ttl {:.0} s, group session {:.0} s), then SIGCONT",
                rig.workers[zombie].name,
                pause.as_secs_f64(),
                lock_ttl.as_secs_f64(),
                session.as_secs_f64()
            )
        }
        Scenario::KillWorker => {
            rig.workers[0].signal("KILL")?;
            let killed = rig.workers.remove(0);
            let name = killed.name.clone();
            drop(killed);
            rig.add_worker().await?;
            format!("SIGKILL {name}, started a replacement")
        }
        Scenario::KillRedis => {
            redis.kill().await?;
            sleep(Duration::from_secs(1)).await;
            redis.restart().await?;
            "SIGKILL the lock and cache Redis, restarted it empty 1 s later".to_owned()
        }
        Scenario::RestartPostgres => {
            let took = postgres.restart().await?;
            format!("PostgreSQL fast shutdown and start ({:.1} s down)", took.as_secs_f64())
        }
        Scenario::RebalanceStorm => {
            let mut changes = 0;
            while started.elapsed() < Duration::from_secs(args.duration) {
                rig.add_worker().await?;
                sleep(Duration::from_millis(700)).await;
                if rig.workers.len() > 1 {
                    rig.workers.remove(0).stop().await;
                }
                changes += 2;
            }
            format!("{changes} worker starts and stops while claims flowed")
        }
        Scenario::DupKeys => {
            let dup = dup_keys(&rig.api_url, &postgres.url(), &credentials).await?;
            checks.insert(
                "one_claim_per_key".to_owned(),
                json!(dup.claim_rows == i64::try_from(dup.keys_accepted).unwrap_or(-1)),
            );
            checks.insert(
                "never_two_bodies_per_key".to_owned(),
                json!(dup.both_bodies_accepted == 0),
            );
            checks.insert(
                "only_422_or_429_refusals".to_owned(),
                json!(dup.unexpected_refusals == 0),
            );
            checks.insert("dup_keys_no_5xx".to_owned(), json!(dup.errors_5xx == 0));
            format!(
                "{} keys sent {} times each at once (one copy in five with an altered body): {} keys accepted, {} claim rows",
                dup.keys, dup.copies, dup.keys_accepted, dup.claim_rows
            )
        }
        Scenario::Overload => format!("{rate:.0} claims/s offered, 20x the normal rate"),
        Scenario::FreezePostgres => {
            postgres.freeze(Duration::from_secs(8)).await?;
            "SIGSTOP every PostgreSQL process for 8 s, then SIGCONT".to_owned()
        }
        Scenario::PublishFailsAfterCommit => {
            format!("claim-api dropped the publish of {UNPUBLISHED} claims after their commit (failpoint)")
        }
        Scenario::RedisSnapshotRollback => {
            redis.roll_back().await?;
            "the lock Redis killed and restarted from a snapshot taken earlier in the sale".to_owned()
        }
        Scenario::BackendSwitch => {
            rig.replace_workers(2, &[("TURNSTILE_LOCK_BACKEND", "postgres".to_owned())])
                .await?;
            "both workers (Redis locks) replaced by two locking in PostgreSQL".to_owned()
        }
        Scenario::PoisonDecodable => {
            let topic = format!("chaos-{run_id}-claims.requested");
            poison(&args.brokers, &topic, &hot_coupon).await?;
            "on the hot coupon's partition: an event with quantity 0 and one for a claim that does not exist".to_owned()
        }
        Scenario::All => unreachable!("expanded above"),
    };
    phase.set_message(format!(
        "fault done ({fault}); sale and decisions finishing, then the audit"
    ));
    let sale_report = sale_task.await??;
    phase.set_message("checking the scenario's invariants");
    match scenario {
        Scenario::Overload => {
            // Shed for load, not refused by a key's or a user's own rate.
            checks.insert(
                "shed_with_429".to_owned(),
                json!(sale_report.throttled_429 > sale_report.rate_limited_429),
            );
        }
        Scenario::PublishFailsAfterCommit => {
            let unpublished = rig.api_counter("turnstile_claims_unpublished_total").await;
            checks.insert(
                "unpublished_claims_accepted_and_decided".to_owned(),
                json!(unpublished == f64::from(UNPUBLISHED)),
            );
        }
        Scenario::RedisSnapshotRollback | Scenario::BackendSwitch => {
            let repairs = rig.worker_counter("turnstile_fence_repairs_total").await;
            checks.insert("token_counter_repaired".to_owned(), json!(repairs >= 1.0));
        }
        Scenario::PoisonDecodable => {
            let dead = rig.worker_counter("turnstile_dead_lettered_total").await;
            checks.insert("poison_dead_lettered".to_owned(), json!(dead >= 2.0));
        }
        _ => {}
    }
    let passed = sale_report.invariants_hold()
        && sale_report.undecided == 0
        && checks.values().all(|v| v.as_bool() == Some(true));
    let fence_rejections = rig.worker_counter("turnstile_fence_rejections_total").await;
    let swept = rig.worker_counter("turnstile_claims_swept_total").await;
    rig.stop().await;
    redis.stop().await;
    postgres.stop().await;
    Ok(ChaosReport {
        scenario,
        fault_injected_at,
        fault_at_s,
        fault,
        checks,
        passed,
        fence_rejections,
        swept,
        sale: serde_json::to_value(&sale_report)?,
    })
}

/// Claims whose publish `publish-fails-after-commit` drops.
const UNPUBLISHED: u32 = 20;

/// Puts two decodable poison messages on `topic`, keyed by `resource` (so
/// on its partition): an event with quantity 0, and a valid event naming a
/// claim that does not exist. Written by hand, as a foreign producer would.
async fn poison(brokers: &str, topic: &str, resource: &ResourceKey) -> Result<()> {
    let kafka = turnstile_bus::KafkaConnection::new(brokers);
    let publisher = turnstile_bus::Publisher::connect(&kafka, &turnstile_bus::ProducerTuning::default())?;
    let tenant = resource.tenant.as_str();
    // `tenant/kind:id`, as the API keys its own events.
    let key = resource.to_string();
    for quantity in [0, 1] {
        let event = json!({
            "claim_id": uuid::Uuid::new_v4(),
            "tenant_id": tenant,
            "resource": {"tenant": tenant, "kind": resource.kind.as_str(), "id": resource.id.as_str()},
            "user_id": "poison",
            "quantity": quantity,
            "accepted_at_ms": 1_795_000_000_000_i64,
        });
        publisher
            .send_raw(topic, key.as_bytes(), &serde_json::to_vec(&event)?)
            .await?;
    }
    Ok(())
}

fn sale_args(
    api: &str,
    database_url: &str,
    credentials: &Credentials,
    args: &ChaosArgs,
    rate: f64,
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
        args.stock.to_string(),
        "--users".to_owned(),
        args.users.to_string(),
        "--rate".to_owned(),
        rate.to_string(),
        "--duration".to_owned(),
        args.duration.to_string(),
        "--run-id".to_owned(),
        run_id.to_owned(),
        "--json".to_owned(),
    ];
    let mut sale = Wrapper::try_parse_from(argv)?.sale;
    sale.sale.keys = credentials.as_args();
    Ok(sale)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

struct DupKeys {
    keys: usize,
    copies: usize,
    /// Keys for which two different bodies were both accepted (must be 0).
    both_bodies_accepted: usize,
    /// Refusals other than 422 (altered body) or 429 (shed).
    unexpected_refusals: usize,
    errors_5xx: usize,
    /// Keys that got at least one 2xx, and the claim rows the database has
    /// for the coupon: equal when every key made exactly one claim.
    keys_accepted: usize,
    claim_rows: i64,
}

/// 100 keys, each sent 10 times at once; every fifth copy carries another
/// user (an altered body). Whichever body arrives first wins its key: the
/// copies with the same body get the same claim, the others 422.
async fn dup_keys(api: &str, database_url: &str, credentials: &Credentials) -> Result<DupKeys> {
    const KEYS: usize = 100;
    const COPIES: usize = 10;
    let http = Arc::new(reqwest::Client::new());
    let code = format!("DUP-{:08X}", rand::random::<u32>());
    let created = http
        .post(format!("{api}/v1/coupons"))
        .header(AUTHORIZATION, credentials.admin_authorization().clone())
        .json(&json!({"code": code, "total": KEYS * 2, "per_user_limit": 1}))
        .send()
        .await?;
    if !created.status().is_success() {
        bail!("creating the dup-keys coupon: {}", created.status());
    }
    let mut sends = Vec::with_capacity(KEYS * COPIES);
    for k in 0..KEYS {
        for c in 0..COPIES {
            let altered = c % 5 == 4;
            let user = if altered { format!("x{k}") } else { format!("u{k}") };
            let (http, api, code) = (Arc::clone(&http), api.to_owned(), code.clone());
            let authorization = credentials.claim_authorization().clone();
            sends.push(tokio::spawn(async move {
                let status = http
                    .post(format!("{api}/v1/claims"))
                    .header(AUTHORIZATION, authorization)
                    .header("idempotency-key", format!("dup-{code}-{k}"))
                    .json(&json!({"coupon": code, "user_id": user}))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                (k, altered, status)
            }));
        }
    }
    let mut accepted_bodies = [[false; 2]; KEYS];
    let (mut unexpected_refusals, mut errors_5xx) = (0, 0);
    for send in sends {
        let (k, altered, status) = send.await?;
        match status {
            200..=299 => accepted_bodies[k][usize::from(altered)] = true,
            422 | 429 => {}
            0 | 500.. => errors_5xx += 1,
            _ => unexpected_refusals += 1,
        }
    }
    let pool = sqlx::PgPool::connect(database_url).await?;
    let claim_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM claims WHERE tenant_id = $1 AND kind = 'coupon' AND resource_id = $2")
            .bind(credentials.tenant().as_str())
            .bind(&code)
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    Ok(DupKeys {
        keys: KEYS,
        copies: COPIES,
        both_bodies_accepted: accepted_bodies.iter().filter(|b| b[0] && b[1]).count(),
        unexpected_refusals,
        errors_5xx,
        keys_accepted: accepted_bodies.iter().filter(|b| b[0] || b[1]).count(),
        claim_rows,
    })
}
