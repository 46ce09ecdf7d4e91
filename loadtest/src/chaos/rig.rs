//! The services of one chaos run: claim-api and its workers as processes
//! started, supervised, restarted and read (their metric counters) here.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::{
    process::{Child, Command},
    time::sleep,
};
use turnstile_private_stores::free_port;

/// The services of one run and how to reach them.
///
/// The rig is also their supervisor: whenever it waits ([`Rig::idle`],
/// [`Rig::supervise_until`]) it looks every 250 ms for a service that
/// exited without being told to (a crash: a C library's SIGSEGV, a panic)
/// and starts it again the same way, on the same ports, at most once per
/// half second per service. Each restart is recorded ([`Restart`]); a
/// scenario passes only if every one was followed by a decision within
/// [`RESUME_WITHIN`].
pub(super) struct Rig {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    env: Vec<(&'static str, String)>,
    /// Added to the workers' environment only (a worker's failpoint).
    worker_env: Vec<(&'static str, String)>,
    api: Service,
    pub(super) api_url: String,
    /// claim-api's operator listener (`/metrics`, `/readyz`).
    api_operator_url: String,
    pub(super) workers: Vec<Service>,
    next_worker: usize,
    pub(super) restarts: Vec<Restart>,
}

pub(super) struct Service {
    pub(super) name: String,
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
pub(super) const RESUME_WITHIN: Duration = Duration::from_secs(10);

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
    pub(super) fn signal(&self, signal: &str) -> Result<()> {
        turnstile_private_stores::signal(self.child.id().context("process already gone")?, signal)
    }

    /// SIGTERM and wait (the services drain and leave their group).
    pub(super) async fn stop(mut self) {
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

pub(super) fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Rig {
    pub(super) async fn start(
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

    pub(super) async fn add_worker(&mut self) -> Result<()> {
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
    pub(super) async fn replace_workers(
        &mut self,
        count: usize,
        set: &[(&'static str, String)],
        unset: &[&str],
    ) -> Result<()> {
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
    pub(super) async fn idle(&mut self, period: Duration) {
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
    pub(super) async fn supervise_until<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = sleep(SUPERVISE_EVERY) => self.supervise(),
            }
        }
    }

    /// Sums a counter of the API.
    pub(super) async fn api_counter(&self, name: &str) -> f64 {
        counter(&format!("{}/metrics", self.api_operator_url), name).await
    }

    /// Sums, over the API's samples of `name` whose labels include every
    /// `label="value"` of `labels`.
    pub(super) async fn api_counter_where(&self, name: &str, labels: &[&str]) -> f64 {
        counter_where(&format!("{}/metrics", self.api_operator_url), name, labels).await
    }

    /// Waits until some worker logs a line containing `needle`; returns
    /// that worker's index. The services write their logs to files, so
    /// this polls them.
    pub(super) async fn wait_for_log(&self, needle: &str, within: Duration) -> Result<usize> {
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
    pub(super) async fn wait_for_log_of(&self, i: usize, needle: &str, within: Duration) -> Result<()> {
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
    pub(super) async fn worker_counter(&self, name: &str) -> f64 {
        let mut total = 0.0;
        for url in self.workers.iter().filter_map(|w| w.metrics.as_deref()) {
            total += counter(url, name).await;
        }
        total
    }

    /// Judges each restart by the decisions in `pool` (see [`Restart`]),
    /// and returns them.
    pub(super) async fn judge_restarts(&mut self, pool: &sqlx::PgPool) -> Result<Vec<Restart>> {
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

    pub(super) async fn stop(self) {
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
