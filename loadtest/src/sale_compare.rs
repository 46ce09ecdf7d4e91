//! `loadtest compare`: the same flash sale against the claim pipeline and
//! against the `SELECT ... FOR UPDATE` baseline, one after the other, and
//! the two reports side by side.
//!
//! The pipeline must already be running (`scripts/demo` starts claim-api on
//! :8080 and two workers); it is only checked for readiness. The baseline is
//! started here as its own process (`sql-baseline`, by default the binary
//! next to this one) on `--baseline-api`'s address and stopped afterwards,
//! so each service runs in its own process, as in production, and the load
//! generator's runtime is not shared with either. The pipeline goes first;
//! between the runs the machine is left alone for `--pause` seconds.
//! `--sweep` repeats all this at several rates ([`crate::sale_sweep`]).
//! Both runs send the same API keys ([`crate::credentials`]): the baseline
//! reads its keys from the same database as the pipeline.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use crate::{
    credentials::{Credentials, with_credentials},
    flash_sale::{self, FlashSaleArgs, FlashSaleReport, Mode, SaleParams},
};

/// Arguments of `loadtest compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// claim-api of the running pipeline (`scripts/demo` starts it).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub pipeline_api: String,
    /// Where the baseline listens (loopback).
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    pub baseline_api: String,
    /// The sql-baseline binary to start (default: next to this executable).
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// Use a sql-baseline already listening at `--baseline-api` instead of
    /// starting one.
    #[arg(long)]
    pub baseline_running: bool,
    /// Connection pool of the started baseline (`TURNSTILE_PG_POOL`; default:
    /// the service's).
    #[arg(long)]
    pub baseline_pool: Option<u32>,
    /// Claims in progress at once in the started baseline before it sheds
    /// with 429 (`TURNSTILE_MAX_INFLIGHT`; default: the service's).
    #[arg(long)]
    pub baseline_max_inflight: Option<usize>,
    /// Seconds to let the machine settle between the two runs.
    #[arg(long, default_value_t = 5)]
    pub pause: u64,
    #[command(flatten)]
    pub sale: SaleParams,
    /// Also write both runs as one self-contained HTML report (with
    /// `--sweep`: the sweep's table and chart, and every run's invariants).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Run the comparison at each of these offered rates in turn
    /// (claims/s, comma-separated, e.g. 2000,5000,10000,20000,40000), with
    /// `--pause` between runs; `--rate` is then ignored. Prints one row per
    /// rate, then the sweep as one JSON line.
    #[arg(long, value_delimiter = ',', value_name = "RATES")]
    pub sweep: Vec<f64>,
    /// With `--sweep`: write the chart of decided against offered claims/s
    /// to this SVG file.
    #[arg(long, value_name = "FILE.svg", requires = "sweep")]
    pub chart: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Both runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub pipeline: FlashSaleReport,
    pub sql_for_update: FlashSaleReport,
}

impl CompareReport {
    /// Both runs, pipeline first.
    pub fn runs(&self) -> [FlashSaleReport; 2] {
        [self.pipeline.clone(), self.sql_for_update.clone()]
    }

    /// Whether every invariant held in both runs.
    pub fn invariants_hold(&self) -> bool {
        self.pipeline.invariants_hold() && self.sql_for_update.invariants_hold()
    }

    /// A Markdown table, the two runs side by side.
    pub fn table(&self) -> String {
        type Row = (&'static str, fn(&FlashSaleReport) -> String);
        let rows: [Row; 24] = [
            ("offered", |r| {
                format!("{} ({}/s × {} s)", r.offered, r.rate, r.duration_s)
            }),
            ("refused come back (--retry)", |r| {
                if r.retry { "yes" } else { "no" }.to_owned()
            }),
            ("requests sent (retries, share)", |r| {
                format!("{} ({}, {:.1}%)", r.requests_sent, r.retries, 100.0 * r.retry_share)
            }),
            ("accepted (200/202)", |r| r.accepted.to_string()),
            ("arrivals refused (last answer not 200/202)", |r| {
                r.arrivals_refused.to_string()
            }),
            ("granted", |r| r.granted.to_string()),
            ("rejected", |r| r.rejected.to_string()),
            ("claims decided/s", |r| format!("{:.0}", r.claims_per_sec)),
            ("accept p50 / p99 ms", |r| {
                format!("{:.1} / {:.1}", r.accept_p50_ms, r.accept_p99_ms)
            }),
            ("decide p50 / p99 ms", |r| {
                format!("{:.1} / {:.1}", r.decide_p50_ms, r.decide_p99_ms)
            }),
            ("send → decided p50 / p99 ms", |r| {
                format!("{:.1} / {:.1}", r.decide_from_send_p50_ms, r.decide_from_send_p99_ms)
            }),
            ("first attempt → decided p50 / p99 ms", |r| {
                format!(
                    "{:.1} / {:.1}",
                    r.decide_from_first_attempt_p50_ms, r.decide_from_first_attempt_p99_ms
                )
            }),
            ("grants to the earliest arrivals", |r| {
                format!("{:.1}%", 100.0 * r.grants_to_earliest_share)
            }),
            ("429 (every attempt)", |r| r.throttled_429.to_string()),
            ("of which a key's or user's rate limit", |r| {
                r.rate_limited_429.to_string()
            }),
            ("5xx", |r| r.errors_5xx.to_string()),
            ("other errors (4xx, transport, dropped)", |r| {
                (r.errors_4xx + r.transport_errors + r.dropped).to_string()
            }),
            ("oversold", |r| r.oversold.to_string()),
            ("double_claims", |r| r.double_claims.to_string()),
            ("undecided", |r| r.undecided.to_string()),
            ("fence_regressions", |r| r.fence_regressions.to_string()),
            ("remaining_mismatches", |r| r.remaining_mismatches.to_string()),
            ("refused_keys_taken", |r| r.refused_keys_taken.to_string()),
            ("load generator CPU (cores, machine share)", |r| {
                format!("{:.2} ({:.0}%)", r.generator_cores, 100.0 * r.generator_cpu_share)
            }),
        ];
        let mut out = String::from("| | pipeline | sql-for-update |\n|---|---:|---:|\n");
        for (name, value) in rows {
            out.push_str(&format!(
                "| {name} | {} | {} |\n",
                value(&self.pipeline),
                value(&self.sql_for_update)
            ));
        }
        out
    }
}

/// Runs the sale against both services, with the keys `args` names or,
/// when it names none, one pair minted for both runs and revoked after them.
pub async fn run(args: &CompareArgs) -> Result<CompareReport> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    if !ready(&http, &args.pipeline_api).await {
        bail!(
            "the pipeline is not ready at {}: start it with scripts/demo (claim-api and two claim-workers)",
            args.pipeline_api
        );
    }
    with_credentials(&args.sale.keys, &args.sale.database_url, async |credentials| {
        run_as(args, &http, credentials).await
    })
    .await
}

async fn run_as(args: &CompareArgs, http: &reqwest::Client, credentials: &Credentials) -> Result<CompareReport> {
    let sale = |mode: Mode, api: &str| FlashSaleArgs {
        api: api.to_owned(),
        cacert: None,
        mode,
        sale: SaleParams {
            keys: credentials.as_args(),
            ..args.sale.clone()
        },
        json: args.quiet,
        report: None,
    };
    let pipeline = flash_sale::run(&sale(Mode::Pipeline, &args.pipeline_api)).await?;
    tokio::time::sleep(Duration::from_secs(args.pause)).await;

    let baseline = if args.baseline_running {
        if !ready(http, &args.baseline_api).await {
            bail!("no sql-baseline is ready at {}", args.baseline_api);
        }
        None
    } else {
        Some(BaselineProcess::start(args, http).await?)
    };
    let sql = flash_sale::run(&sale(Mode::SqlForUpdate, &args.baseline_api)).await;
    if let Some(baseline) = baseline {
        baseline.stop().await?;
    }
    Ok(CompareReport {
        pipeline,
        sql_for_update: sql?,
    })
}

/// The API answers (`/healthz` is on the public port of both services;
/// `/readyz` is on claim-api's operator listener).
async fn ready(http: &reqwest::Client, api: &str) -> bool {
    matches!(http.get(format!("{api}/healthz")).send().await, Ok(r) if r.status().is_success())
}

/// A sql-baseline process of this run's own.
#[derive(Debug)]
struct BaselineProcess {
    child: Child,
}

impl BaselineProcess {
    async fn start(args: &CompareArgs, http: &reqwest::Client) -> Result<Self> {
        if ready(http, &args.baseline_api).await {
            bail!(
                "something already answers at {}: stop it, or pass --baseline-running to use it",
                args.baseline_api
            );
        }
        let bin = match &args.baseline_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()
                .context("locating this executable")?
                .with_file_name("sql-baseline"),
        };
        let addr = args
            .baseline_api
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let mut command = Command::new(&bin);
        command
            .env("TURNSTILE_HTTP_ADDR", &addr)
            .env("DATABASE_URL", &args.sale.database_url);
        if let Some(pool) = args.baseline_pool {
            command.env("TURNSTILE_PG_POOL", pool.to_string());
        }
        if let Some(inflight) = args.baseline_max_inflight {
            command.env("TURNSTILE_MAX_INFLIGHT", inflight.to_string());
        }
        let mut child = command
            .env("TURNSTILE_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it: cargo build --release -p sql-baseline)",
                    bin.display()
                )
            })?;
        for _ in 0..300 {
            if let Some(status) = child.try_wait()? {
                bail!("sql-baseline exited before it was ready: {status}");
            }
            if ready(http, &args.baseline_api).await {
                return Ok(Self { child });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("sql-baseline not ready at {} within 30 s", args.baseline_api)
    }

    /// SIGTERM, then SIGKILL if it has not left within 10 s.
    async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}
