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
//! - `broker-restart-empty`: SIGKILL the broker and start it again on the
//!   same port without its data (its log was in memory): topics and group
//!   are gone. The services recreate the topics, the workers consume
//!   again (not everything after the return is swept), and everything
//!   accepted before the broker came back is decided within 30 s of its
//!   return.
//! - `topic-deleted`: an admin `DeleteTopics` of the run's
//!   `claims.requested` and `claims.decided` on the live broker: they are
//!   recreated (`turnstile_kafka_topics_recreated_total`) and claims keep
//!   being decided, some of them consumed from Kafka again (not all swept).
//! - `broker-down-60s`: SIGKILL the broker and keep it down 60 s while
//!   claims keep arriving, then start it again (empty). The API keeps
//!   answering `202` (the `503`s of a starved Postgres are counted, no
//!   `500`), the workers decide from the database
//!   (`turnstile_claims_decided_without_kafka_total`, and decisions
//!   committed in the outage's second half), and the backlog is decided
//!   within 30 s of the return.
//! - `pg-crash-during-accept`: `pg_ctl stop -m immediate` while batches
//!   commit, then start again (crash recovery). Every `202` is decided, no
//!   refused key is taken, no `500`; `504 outcome-unknown` answers are
//!   allowed and counted (such a key may or may not have a claim).
//! - `decided-topic-unwritable`: the workers start with the failpoint
//!   `announce-refused` (no `ClaimDecided` can be queued) and are replaced
//!   by normal workers half-way through. Decisions go on meanwhile, owed in
//!   `decision_outbox`; at the end the outbox is empty and every decided
//!   claim's `ClaimDecided` is on the topic (read from its start).
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
use turnstile_private_stores::{PrivateBroker, PrivatePostgres, PrivateRedis, free_port};

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

    /// Whether it kills, restarts or edits the broker: then it runs on a
    /// broker of its own, never the shared one.
    fn needs_private_broker(self) -> bool {
        matches!(
            self,
            Self::BrokerRestartEmpty | Self::TopicDeleted | Self::BrokerDown60s
        )
    }
}

/// Partitions of each of a run's topics.
const PARTITIONS: i32 = 3;

/// How long `broker-down-60s` keeps the broker down.
const OUTAGE: Duration = Duration::from_secs(60);

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

/// The services of one run and how to reach them.
///
/// The rig is also their supervisor: whenever it waits ([`Rig::idle`],
/// [`Rig::supervise_until`]) it looks every 250 ms for a service that
/// exited without being told to (a crash: a C library's SIGSEGV, a panic)
/// and starts it again the same way, on the same ports, at most once per
/// half second per service. Each restart is recorded ([`Restart`]); a
/// scenario passes only if every one was followed by a decision within
/// [`RESUME_WITHIN`].
struct Rig {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    env: Vec<(&'static str, String)>,
    /// Added to the workers' environment only (a worker's failpoint).
    worker_env: Vec<(&'static str, String)>,
    api: Service,
    api_url: String,
    /// claim-api's operator listener (`/metrics`, `/readyz`).
    api_operator_url: String,
    workers: Vec<Service>,
    next_worker: usize,
    restarts: Vec<Restart>,
}

struct Service {
    name: String,
    bin: PathBuf,
    /// Everything it was started with, to start it again the same way.
    env: Vec<(&'static str, String)>,
    child: Child,
    /// Where a worker serves `/metrics`.
    metrics: Option<String>,
    last_start: Instant,
}

/// A sale has resumed after a restart when a claim is decided this soon
/// after it (or nothing was waiting to be decided).
const RESUME_WITHIN: Duration = Duration::from_secs(10);

/// A service that exited on its own, and its restart.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub service: String,
    /// How it ended: `signal 11 (SIGSEGV)`, `exit 1`.
    pub exit: String,
    /// When it was started again, in Unix seconds.
    pub restarted_at_epoch_s: f64,
    /// Why it could not be started again, if it could not.
    pub start_error: Option<String>,
    /// Seconds from the restart to the first decision committed after it.
    pub first_decision_after_s: Option<f64>,
    /// Claims waiting to be decided across the [`RESUME_WITHIN`] after it.
    pub waiting: i64,
    /// A claim was decided within [`RESUME_WITHIN`] of the restart, or no
    /// claim was waiting.
    pub resumed: bool,
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

    /// If the process exited (and was last started at least half a second
    /// ago), starts it again as it was started; returns the restart.
    fn revive(&mut self, log_dir: &Path) -> Option<Restart> {
        if self.last_start.elapsed() < Duration::from_millis(500) {
            return None;
        }
        let status = self.child.try_wait().ok().flatten()?;
        let start_error = match start_process(&self.bin, &self.name, log_dir, &self.env) {
            Ok(child) => {
                self.child = child;
                None
            }
            Err(e) => Some(format!("{e:#}")),
        };
        self.last_start = Instant::now();
        Some(Restart {
            service: self.name.clone(),
            exit: describe_exit(status),
            restarted_at_epoch_s: epoch_now(),
            start_error,
            first_decision_after_s: None,
            waiting: 0,
            resumed: false,
        })
    }
}

/// `exit N`, or `signal N (SIGNAME)` for a process a signal ended (a shell
/// reports that as exit 128 + N: 139 for SIGSEGV).
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;

    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                4 => "SIGILL",
                6 => "SIGABRT",
                7 => "SIGBUS",
                8 => "SIGFPE",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                15 => "SIGTERM",
                _ => "?",
            };
            format!("signal {signal} ({name})")
        }
        _ => status.to_string(),
    }
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Rig {
    async fn start(
        bin_dir: &Path,
        log_dir: &Path,
        env: Vec<(&'static str, String)>,
        worker_env: Vec<(&'static str, String)>,
        workers: usize,
    ) -> Result<Self> {
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
            worker_env,
            api,
            api_url: format!("http://127.0.0.1:{api_port}"),
            api_operator_url: format!("http://127.0.0.1:{operator_port}"),
            workers: Vec::new(),
            next_worker: 1,
            restarts: Vec::new(),
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
        let mut extra = self.worker_env.clone();
        extra.push(("TURNSTILE_METRICS_ADDR", format!("127.0.0.1:{port}")));
        let mut worker = spawn(
            &self.bin_dir.join("claim-worker"),
            &name,
            &self.log_dir,
            &self.env,
            &extra,
        )?;
        worker.metrics = Some(format!("http://127.0.0.1:{port}/metrics"));
        wait_ready(&format!("http://127.0.0.1:{port}/healthz"), &name, &self.log_dir).await?;
        self.workers.push(worker);
        Ok(())
    }

    /// Stops every worker and starts `count` new ones, with `set` added to
    /// the workers' environment and `unset` taken out of it.
    async fn replace_workers(&mut self, count: usize, set: &[(&'static str, String)], unset: &[&str]) -> Result<()> {
        for worker in std::mem::take(&mut self.workers) {
            worker.stop().await;
        }
        self.worker_env.retain(|(k, _)| !unset.contains(k));
        self.worker_env.extend_from_slice(set);
        for _ in 0..count {
            self.add_worker().await?;
        }
        Ok(())
    }

    /// Starts again every service that exited on its own, and records it.
    fn supervise(&mut self) {
        let log_dir = self.log_dir.clone();
        for service in std::iter::once(&mut self.api).chain(self.workers.iter_mut()) {
            if let Some(restart) = service.revive(&log_dir) {
                match &restart.start_error {
                    None => eprintln!("chaos: {} exited ({}); started again", restart.service, restart.exit),
                    Some(e) => eprintln!(
                        "chaos: {} exited ({}); starting it again failed: {e}",
                        restart.service, restart.exit
                    ),
                }
                self.restarts.push(restart);
            }
        }
    }

    /// Waits `period`, supervising the services meanwhile.
    async fn idle(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        loop {
            self.supervise();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            sleep(left.min(SUPERVISE_EVERY)).await;
        }
    }

    /// Waits for `work`, supervising the services meanwhile.
    async fn supervise_until<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = sleep(SUPERVISE_EVERY) => self.supervise(),
            }
        }
    }

    /// Sums a counter of the API.
    async fn api_counter(&self, name: &str) -> f64 {
        counter(&format!("{}/metrics", self.api_operator_url), name).await
    }

    /// Sums, over the API's samples of `name` whose labels include every
    /// `label="value"` of `labels`.
    async fn api_counter_where(&self, name: &str, labels: &[&str]) -> f64 {
        counter_where(&format!("{}/metrics", self.api_operator_url), name, labels).await
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

    /// Judges each restart by the decisions in `pool` (see [`Restart`]),
    /// and returns them.
    async fn judge_restarts(&mut self, pool: &sqlx::PgPool) -> Result<Vec<Restart>> {
        for restart in &mut self.restarts {
            let (first_after, waiting): (Option<f64>, i64) = sqlx::query_as(
                "SELECT (SELECT extract(epoch FROM min(decided_at))::float8 FROM claims
                          WHERE decided_at >= to_timestamp($1)),
                        (SELECT count(*) FROM claims
                          WHERE accepted_at < to_timestamp($1) + make_interval(secs => $2)
                            AND (decided_at IS NULL OR decided_at >= to_timestamp($1)))",
            )
            .bind(restart.restarted_at_epoch_s)
            .bind(RESUME_WITHIN.as_secs_f64())
            .fetch_one(pool)
            .await?;
            restart.first_decision_after_s = first_after.map(|t| t - restart.restarted_at_epoch_s);
            restart.waiting = waiting;
            restart.resumed = restart.start_error.is_none()
                && (waiting == 0
                    || restart
                        .first_decision_after_s
                        .is_some_and(|s| s <= RESUME_WITHIN.as_secs_f64()));
        }
        Ok(self.restarts.clone())
    }

    async fn stop(self) {
        for worker in self.workers {
            worker.stop().await;
        }
        self.api.stop().await;
    }
}

/// How often the rig looks for services that exited.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// A counter read from a Prometheus text endpoint, summed over its labels
/// (0 when the endpoint does not answer).
async fn counter(url: &str, name: &str) -> f64 {
    counter_where(url, name, &[]).await
}

/// Like [`counter`], over the samples whose labels include each of
/// `labels` (written `name="value"`).
async fn counter_where(url: &str, name: &str, labels: &[&str]) -> f64 {
    let Ok(response) = reqwest::get(url).await else {
        return 0.0;
    };
    let Ok(text) = response.text().await else { return 0.0 };
    text.lines()
        .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
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
    let env: Vec<(&'static str, String)> = env.iter().chain(extra).cloned().collect();
    let child = start_process(bin, name, log_dir, &env)?;
    Ok(Service {
        name: name.to_owned(),
        bin: bin.to_path_buf(),
        env,
        child,
        metrics: None,
        last_start: Instant::now(),
    })
}

/// Starts `bin` with `env` (later entries win), its output appended to
/// `NAME.log` in `log_dir` (a restart continues the same log).
fn start_process(bin: &Path, name: &str, log_dir: &Path, env: &[(&'static str, String)]) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(format!("{name}.log")))?;
    let mut command = Command::new(bin);
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    command.spawn().with_context(|| format!("starting {}", bin.display()))
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
    let mut broker = if scenario.needs_private_broker() {
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
    let env = vec![
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
        ("RUST_LOG", "info,claim_worker::subscription=debug".to_owned()),
    ];
    let mut env = env;
    if scenario == Scenario::Overload {
        // No admission queue: the excess is refused at once, which is the
        // shedding this scenario checks (a queue of 1 024 absorbs 20 times
        // the normal rate on this machine, with no 429 at all).
        env.push(("TURNSTILE_ADMISSION_QUEUE", "0".to_owned()));
    }
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
    // Every announcement the workers try fails to queue, until they are
    // replaced by workers without the failpoint.
    let worker_env = if scenario == Scenario::DecidedTopicUnwritable {
        vec![("FAILPOINTS", "announce-refused=return".to_owned())]
    } else {
        Vec::new()
    };
    phase.set_message("starting claim-api and two workers");
    let mut rig = Rig::start(bin_dir, &log_dir, env, worker_env, 2).await?;
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
    // The outage lasts a minute, and claims keep arriving through it.
    let duration = if scenario == Scenario::BrokerDown60s {
        args.duration + OUTAGE.as_secs()
    } else {
        args.duration
    };
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
        rig.idle(Duration::from_secs_f64(args.duration as f64 / 8.0)).await;
        redis.snapshot().await?;
        rig.idle(Duration::from_secs_f64(args.duration as f64 / 8.0)).await;
        None
    } else {
        rig.idle(Duration::from_secs_f64(args.duration as f64 / 4.0)).await;
        None
    };
    let fault_at_s = started.elapsed().as_secs_f64();
    let fault_injected_at = now_rfc3339();
    phase.set_message(format!("injecting the fault at {fault_at_s:.0} s"));
    let mut checks = serde_json::Map::new();
    let mut measured = serde_json::Map::new();
    // When the broker went away and came back (or the topics were
    // deleted), in Unix seconds; when the announcing workers were replaced.
    let mut outage: Option<(f64, f64)> = None;
    let mut replaced_at: Option<f64> = None;
    // The workers' count of swept claims when the broker (or the topics)
    // came back: what the sweeper decided after it is not Kafka's doing.
    let mut swept_at_return = 0.0;
    let requested_topic = format!("{prefix}claims.requested");
    let decided_topic = format!("{prefix}claims.decided");
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
                rig.idle(Duration::from_millis(700)).await;
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
            rig.replace_workers(2, &[("TURNSTILE_LOCK_BACKEND", "postgres".to_owned())], &[])
                .await?;
            "both workers (Redis locks) replaced by two locking in PostgreSQL".to_owned()
        }
        Scenario::PoisonDecodable => {
            let topic = format!("chaos-{run_id}-claims.requested");
            poison(&args.brokers, &topic, &hot_coupon).await?;
            "on the hot coupon's partition: an event with quantity 0 and one for a claim that does not exist".to_owned()
        }
        Scenario::BrokerRestartEmpty => {
            let broker = broker.as_mut().context("no private broker")?;
            broker.kill().await?;
            let down_at = epoch_now();
            rig.idle(Duration::from_secs(1)).await;
            broker.restart().await?;
            outage = Some((down_at, epoch_now()));
            swept_at_return = rig.worker_counter("turnstile_claims_swept_total").await;
            "SIGKILL the broker (in-memory log), started again empty on the same port 1 s later".to_owned()
        }
        Scenario::TopicDeleted => {
            swept_at_return = rig.worker_counter("turnstile_claims_swept_total").await;
            delete_topics(&brokers, &[&requested_topic, &decided_topic]).await?;
            let deleted_at = epoch_now();
            outage = Some((deleted_at, deleted_at));
            // The keepers look every 2 s; a service that died with the
            // deletion would lose its count, so it is read now too.
            rig.idle(Duration::from_secs(5)).await;
            measured.insert(
                "topics_recreated_5s_after".to_owned(),
                json!(topics_recreated(&rig).await),
            );
            format!("DeleteTopics {requested_topic} and {decided_topic} on the live broker")
        }
        Scenario::BrokerDown60s => {
            let broker = broker.as_mut().context("no private broker")?;
            let before = claim_answers(&rig).await;
            broker.kill().await?;
            let down_at = epoch_now();
            rig.idle(OUTAGE).await;
            let during = claim_answers(&rig).await.since(&before);
            // Read before the broker returns: a worker restarted since
            // would have lost its count.
            let without_kafka = rig.worker_counter("turnstile_claims_decided_without_kafka_total").await;
            broker.restart().await?;
            outage = Some((down_at, epoch_now()));
            swept_at_return = rig.worker_counter("turnstile_claims_swept_total").await;
            measured.insert("api_2xx_while_down".to_owned(), json!(during.ok));
            measured.insert("api_429_while_down".to_owned(), json!(during.throttled));
            measured.insert("api_5xx_while_down".to_owned(), json!(during.failed));
            measured.insert("decided_without_kafka".to_owned(), json!(without_kafka));
            checks.insert("decided_without_kafka".to_owned(), json!(without_kafka > 0.0));
            checks.insert("api_accepted_while_down".to_owned(), json!(during.ok > 0.0));
            format!(
                "SIGKILL the broker, kept down {} s while claims arrived, started again (empty)",
                OUTAGE.as_secs()
            )
        }
        Scenario::PgCrashDuringAccept => {
            let took = postgres.crash_and_restart().await?;
            measured.insert("postgres_down_s".to_owned(), json!(took.as_secs_f64()));
            format!(
                "pg_ctl stop -m immediate while batches were committing, started again ({:.1} s down)",
                took.as_secs_f64()
            )
        }
        Scenario::DecidedTopicUnwritable => {
            // Half-way in: announcements have failed for as long again.
            rig.idle(Duration::from_secs_f64(args.duration as f64 / 4.0)).await;
            let pool = sqlx::PgPool::connect(&postgres.url()).await?;
            let owed = outbox_owed(&pool, &decided_topic).await?;
            let decided = decided_between(&pool, 0.0, epoch_now()).await?;
            pool.close().await;
            rig.replace_workers(2, &[], &["FAILPOINTS"]).await?;
            replaced_at = Some(epoch_now());
            measured.insert("owed_when_replaced".to_owned(), json!(owed));
            measured.insert("decided_while_refused".to_owned(), json!(decided));
            checks.insert("announcements_owed_while_refused".to_owned(), json!(owed > 0));
            checks.insert("decided_while_announcements_failed".to_owned(), json!(decided > 0));
            "every ClaimDecided failed to queue (failpoint announce-refused) until both workers were replaced half-way through"
                .to_owned()
        }
        Scenario::All => unreachable!("expanded above"),
    };
    phase.set_message(format!(
        "fault done ({fault}); sale and decisions finishing, then the audit"
    ));
    let sale_report = rig.supervise_until(sale_task).await??;
    phase.set_message("checking the scenario's invariants");
    let pool = sqlx::PgPool::connect(&postgres.url()).await?;
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
        Scenario::BrokerRestartEmpty | Scenario::BrokerDown60s => {
            let (down_at, up_at) = outage.context("the broker's outage was not recorded")?;
            measured.insert("topics_recreated".to_owned(), json!(topics_recreated(&rig).await));
            let while_down = decided_between(&pool, down_at, up_at).await?;
            measured.insert("decided_while_down".to_owned(), json!(while_down));
            if scenario == Scenario::BrokerDown60s {
                // The second half of the outage: nothing Kafka delivered
                // before it went down is still being decided then.
                let late = decided_between(&pool, (down_at + up_at) / 2.0, up_at).await?;
                measured.insert("decided_in_outage_second_half".to_owned(), json!(late));
                measured.insert(
                    "decided_per_s_while_down".to_owned(),
                    json!(while_down as f64 / (up_at - down_at)),
                );
                checks.insert("decided_while_down".to_owned(), json!(late > 0));
                // A 503 while the broker is down is Postgres not answering
                // in time (no pool connection within its timeout, on two
                // cores that librdkafka's reconnecting clients also load),
                // and promises that nothing was recorded (judged with every
                // other refusal by refused_keys_taken); nothing about Kafka
                // answers 503. A 500 would be a bug.
                let status = |code: &str| sale_report.answers_by_status.get(code).copied().unwrap_or(0);
                measured.insert("unavailable_503".to_owned(), json!(status("503")));
                checks.insert("no_500".to_owned(), json!(status("500") == 0));
            }
            let after = decided_between(&pool, up_at, epoch_now()).await?;
            measured.insert("decided_after_return".to_owned(), json!(after));
            checks.insert("decided_after_return".to_owned(), json!(after > 0));
            let through_kafka = decided_through_kafka(&rig, after, swept_at_return, &mut measured).await;
            checks.insert("consumed_again_after_return".to_owned(), json!(through_kafka > 0.0));
            // Everything accepted before the broker returned is decided
            // within 30 s of its return.
            let drained = backlog_drained_after(&pool, up_at).await?;
            measured.insert("backlog_decided_s_after_return".to_owned(), json!(drained));
            checks.insert(
                "backlog_decided_within_30s_of_return".to_owned(),
                json!(drained.is_some_and(|s| s <= 30.0)),
            );
        }
        Scenario::TopicDeleted => {
            let (deleted_at, _) = outage.context("the deletion was not recorded")?;
            let early = measured
                .get("topics_recreated_5s_after")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let recreated = topics_recreated(&rig).await.max(early);
            measured.insert("topics_recreated".to_owned(), json!(recreated));
            // A service that crashed lost its count, and created the
            // topics again when it started: then the topics being back
            // with their layout is what tells.
            let restarted = rig.restarts.iter().any(|r| r.restarted_at_epoch_s >= deleted_at);
            let partitions = topic_partitions(&brokers, &[&requested_topic, &decided_topic])?;
            measured.insert("partitions_after".to_owned(), json!(partitions));
            let back = partitions.iter().all(|&n| n == PARTITIONS);
            checks.insert("topics_back_with_their_layout".to_owned(), json!(back));
            checks.insert(
                "topics_recreated".to_owned(),
                json!(recreated >= 1.0 || (restarted && back)),
            );
            let after = decided_between(&pool, deleted_at, epoch_now()).await?;
            measured.insert("decided_after_deletion".to_owned(), json!(after));
            checks.insert("decided_after_deletion".to_owned(), json!(after > 0));
            let through_kafka = decided_through_kafka(&rig, after, swept_at_return, &mut measured).await;
            checks.insert("consumed_again_after_recreation".to_owned(), json!(through_kafka > 0.0));
        }
        Scenario::PgCrashDuringAccept => {
            let status = |code: &str| sale_report.answers_by_status.get(code).copied().unwrap_or(0);
            measured.insert("outcome_unknown_504".to_owned(), json!(status("504")));
            measured.insert("unavailable_503".to_owned(), json!(status("503")));
            measured.insert("internal_500".to_owned(), json!(status("500")));
            // A 500 may hide a commit: the contract allows 503 (nothing
            // recorded) and 504 (outcome unknown) only.
            checks.insert("no_500".to_owned(), json!(status("500") == 0));
        }
        Scenario::DecidedTopicUnwritable => {
            let replaced_at = replaced_at.context("the replacement was not recorded")?;
            let (drained, owed) = wait_for_outbox(&pool, &decided_topic, Duration::from_secs(30)).await?;
            measured.insert("owed_at_end".to_owned(), json!(owed));
            checks.insert("outbox_drained".to_owned(), json!(drained));
            let decided: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT claim_id FROM claims WHERE status <> 'pending'")
                .fetch_all(&pool)
                .await?;
            let unannounced = unannounced(&brokers, &decided_topic, &run_id, &decided, Duration::from_secs(30)).await?;
            measured.insert("decided".to_owned(), json!(decided.len()));
            measured.insert("decided_unannounced".to_owned(), json!(unannounced));
            checks.insert("every_decision_announced".to_owned(), json!(unannounced == 0));
            let after = decided_between(&pool, replaced_at, epoch_now()).await?;
            measured.insert("decided_after_replacement".to_owned(), json!(after));
        }
        _ => {}
    }
    let restarts = rig.judge_restarts(&pool).await?;
    pool.close().await;
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
        fault,
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

/// The API's answers to claims so far, by status class.
#[derive(Debug, Clone, Copy, Default)]
struct ClaimAnswers {
    ok: f64,
    throttled: f64,
    failed: f64,
}

impl ClaimAnswers {
    /// The answers given since `earlier` (0 when the API restarted since,
    /// which the restarts report shows).
    fn since(&self, earlier: &Self) -> Self {
        Self {
            ok: (self.ok - earlier.ok).max(0.0),
            throttled: (self.throttled - earlier.throttled).max(0.0),
            failed: (self.failed - earlier.failed).max(0.0),
        }
    }
}

/// claim-api's count of answers to `POST /v1/claims`.
async fn claim_answers(rig: &Rig) -> ClaimAnswers {
    const NAME: &str = "turnstile_http_requests_total";
    let of = |class: &'static str| {
        let labels = [r#"method="POST""#, r#"route="/v1/claims""#, class];
        async move { rig.api_counter_where(NAME, &labels).await }
    };
    ClaimAnswers {
        ok: of(r#"status_class="2xx""#).await,
        throttled: rig.api_counter("turnstile_claims_throttled_total").await,
        failed: of(r#"status_class="5xx""#).await,
    }
}

/// Of `decided` claims decided since the broker or its topics came back,
/// those the workers consumed from Kafka rather than swept from the
/// database (`swept_then`: the workers' swept count at that moment). A
/// worker restarted since lost its count, which can only make this larger.
async fn decided_through_kafka(
    rig: &Rig,
    decided: i64,
    swept_then: f64,
    measured: &mut serde_json::Map<String, Value>,
) -> f64 {
    let swept = (rig.worker_counter("turnstile_claims_swept_total").await - swept_then).max(0.0);
    let through_kafka = (decided as f64 - swept).max(0.0);
    measured.insert("swept_since".to_owned(), json!(swept));
    measured.insert("decided_through_kafka_since".to_owned(), json!(through_kafka));
    through_kafka
}

/// Topics the running services found missing and created again.
async fn topics_recreated(rig: &Rig) -> f64 {
    const NAME: &str = "turnstile_kafka_topics_recreated_total";
    rig.api_counter(NAME).await + rig.worker_counter(NAME).await
}

/// An admin `DeleteTopics` of `topics`, as an operator (or a script) would
/// send it; every topic must have been deleted.
async fn delete_topics(brokers: &str, topics: &[&str]) -> Result<()> {
    use rdkafka::{
        admin::{AdminClient, AdminOptions},
        client::DefaultClientContext,
        config::ClientConfig,
    };

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("an admin client for DeleteTopics")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(topics, &options).await? {
        if let Err((topic, code)) = result {
            bail!("DeleteTopics {topic}: {code}");
        }
    }
    Ok(())
}

/// The partitions each of `topics` has on the broker (0: missing). Asked
/// once the topics exist again: a metadata answer about a deleted topic is
/// what crashes librdkafka (see docs/architecture.md).
fn topic_partitions(brokers: &str, topics: &[&str]) -> Result<Vec<i32>> {
    use rdkafka::{config::ClientConfig, consumer::BaseConsumer, consumer::Consumer};

    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    topics
        .iter()
        .map(|topic| {
            let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == *topic && t.error().is_none())
                .map_or(0, |t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
        })
        .collect()
}

/// Claims decided in `[from, to)` (Unix seconds).
async fn decided_between(pool: &sqlx::PgPool, from: f64, to: f64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM claims WHERE decided_at >= to_timestamp($1) AND decided_at < to_timestamp($2)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?)
}

/// Seconds from `at` (Unix seconds) to the last decision of the claims
/// accepted before it (0 when they were all decided before it); `None`
/// while one of them is still pending.
async fn backlog_drained_after(pool: &sqlx::PgPool, at: f64) -> Result<Option<f64>> {
    let (pending, last): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), extract(epoch FROM max(decided_at))::float8
           FROM claims WHERE accepted_at < to_timestamp($1)",
    )
    .bind(at)
    .fetch_one(pool)
    .await?;
    Ok((pending == 0).then(|| last.map_or(0.0, |t| (t - at).max(0.0))))
}

/// Announcements owed to `topic` (rows of `decision_outbox`).
async fn outbox_owed(pool: &sqlx::PgPool, topic: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM decision_outbox WHERE topic = $1")
            .bind(topic)
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until nothing is owed to `topic`, or `within`; returns whether it
/// drained and what is still owed.
async fn wait_for_outbox(pool: &sqlx::PgPool, topic: &str, within: Duration) -> Result<(bool, i64)> {
    let deadline = Instant::now() + within;
    loop {
        let owed = outbox_owed(pool, topic).await?;
        if owed == 0 || Instant::now() > deadline {
            return Ok((owed == 0, owed));
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// How many of `decided` have no `ClaimDecided` on `topic`, read from its
/// start by a group of its own, for at most `within`.
async fn unannounced(
    brokers: &str,
    topic: &str,
    run_id: &str,
    decided: &[uuid::Uuid],
    within: Duration,
) -> Result<usize> {
    use rdkafka::{Message, consumer::Consumer};

    let mut missing: std::collections::HashSet<uuid::Uuid> = decided.iter().copied().collect();
    let kafka = turnstile_bus::KafkaConnection::new(brokers);
    let reader = turnstile_bus::reader_from_start(&kafka, &format!("chaos-{run_id}-announced"))?;
    reader.subscribe(&[topic])?;
    let deadline = tokio::time::Instant::now() + within;
    while !missing.is_empty() {
        let Ok(received) = tokio::time::timeout_at(deadline, reader.recv()).await else {
            break;
        };
        let Ok(message) = received else { continue };
        let claim_id = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
            .and_then(|v| v.get("claim_id")?.as_str()?.parse::<uuid::Uuid>().ok());
        if let Some(id) = claim_id {
            missing.remove(&id);
        }
    }
    Ok(missing.len())
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
