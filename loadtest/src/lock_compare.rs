//! `loadtest lock-compare`: every turnstile-lock backend in one process, one
//! after another, with the same clients and duration, in two shapes:
//! uncontended (clients spread over many keys: the store's raw speed) and
//! contended (every client on one key: how waiting and hand-over behave).
//! With `--rounds N` the whole sequence repeats N times, interleaved so a
//! noisy neighbour hits every backend alike, and the table shows each
//! backend's median round by throughput. Prints a table, then the whole
//! comparison (every round) as one JSON line.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::{
    lock_bench::{self, BenchBackend, LockBenchArgs, LockBenchReport, Stores},
    progress::Progress,
};

/// Arguments of `loadtest lock-compare`.
#[derive(Debug, Clone, Args)]
pub struct LockCompareArgs {
    /// Concurrent clients in every run.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Keys in the uncontended shape (the contended shape uses one).
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Seconds per run (each backend runs once per shape).
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Lease ttl in milliseconds (at most the ZooKeeper session timeout, 10 s).
    #[arg(long, default_value_t = 5_000)]
    pub ttl_ms: u64,
    /// How many times to run the whole sequence (medians are reported).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Backends to compare, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "redis,redis-cluster,redlock,zookeeper,postgres"
    )]
    pub backends: Vec<BenchBackend>,
    #[command(flatten)]
    pub stores: Stores,
}

/// One backend in one shape.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedRun {
    /// `uncontended` or `contended`.
    pub shape: &'static str,
    /// Which repetition of the sequence (from 1).
    pub round: usize,
    #[serde(flatten)]
    pub report: LockBenchReport,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct LockCompareReport {
    pub runs: Vec<ComparedRun>,
}

/// Runs every backend in both shapes.
pub async fn run(args: &LockCompareArgs) -> Result<LockCompareReport> {
    if args.rounds == 0 || args.backends.is_empty() {
        anyhow::bail!("--rounds and --backends must not be empty");
    }
    let total = args.rounds * args.backends.len() * 2;
    let mut runs = Vec::with_capacity(total);
    // The table and the JSON go to stdout at the end; stderr shows where
    // the sequence is.
    let progress = Progress::new(false).bar(
        total as u64,
        "{spinner} lock-compare [{bar:30}] run {pos}/{len}: {msg} ({elapsed}, about {eta} left)",
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    for round in 1..=args.rounds {
        for (&backend, (shape, keys)) in args
            .backends
            .iter()
            .flat_map(|b| [(b, ("uncontended", args.keys)), (b, ("contended", 1))])
        {
            let bench = LockBenchArgs {
                backend,
                clients: args.clients,
                keys,
                duration: args.duration,
                ttl_ms: args.ttl_ms,
                connections: 1,
                stores: args.stores.clone(),
                json: true,
            };
            progress.set_message(format!("{} {shape}, round {round}", backend.name()));
            let report = lock_bench::run(&bench).await?;
            progress.inc(1);
            runs.push(ComparedRun { shape, round, report });
            // Let the previous run's background releases settle.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    progress.finish_and_clear();
    Ok(LockCompareReport { runs })
}

impl LockCompareReport {
    /// Whether every run kept mutual exclusion and token order.
    pub fn sound(&self) -> bool {
        self.runs
            .iter()
            .all(|r| r.report.violations == 0 && r.report.token_regressions == 0)
    }

    /// Each backend and shape's median round by throughput, in run order.
    pub fn medians(&self) -> Vec<&ComparedRun> {
        let mut groups: Vec<Vec<&ComparedRun>> = Vec::new();
        for run in &self.runs {
            match groups
                .iter_mut()
                .find(|g| g[0].shape == run.shape && g[0].report.backend == run.report.backend)
            {
                Some(group) => group.push(run),
                None => groups.push(vec![run]),
            }
        }
        groups
            .into_iter()
            .map(|mut group| {
                group.sort_by(|a, b| a.report.ops_per_sec.total_cmp(&b.report.ops_per_sec));
                group[group.len() / 2]
            })
            .collect()
    }

    /// A Markdown table of the medians, ready for the README.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| backend | shape | clients | keys | ops/s | p50 ms | p99 ms | violations | token regressions | errors |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for run in self.medians() {
            let r = &run.report;
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |\n",
                r.backend.name(),
                run.shape,
                r.clients,
                r.keys,
                r.ops_per_sec,
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                r.violations,
                r.token_regressions,
                r.errors
            ));
        }
        out
    }
}
