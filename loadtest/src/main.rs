//! `loadtest`: benchmarks and load scenarios for Turnstile. See the library
//! docs for what each subcommand measures.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use turnstile_loadtest::{
    chaos::{self, ChaosArgs},
    flash_sale::{self, FlashSaleArgs, FlashSaleReport},
    html_report,
    lock_bench::{self, LockBenchArgs},
    lock_compare::{self, LockCompareArgs},
    sale_compare::{self, CompareArgs, CompareReport},
    sale_sweep::{self, SweepReport},
    sale_table,
    seed::{self, SeedArgs},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Benchmarks and load scenarios for Turnstile",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// Runtime worker threads (default: one per core; 1 = single-threaded).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Acquire + tiny critical section + release on K keys from N clients.
    LockBench(LockBenchArgs),
    /// Every lock backend, uncontended and on one hot key: a table and JSON.
    LockCompare(LockCompareArgs),
    /// A flash sale through the HTTP API, audited against Postgres.
    FlashSale(FlashSaleArgs),
    /// The same flash sale through the pipeline and the SQL baseline, side by
    /// side; with `--sweep`, at several offered rates.
    Compare(CompareArgs),
    /// Bulk-loads decided claims into Postgres, to measure a sale against a
    /// large claims table.
    Seed(SeedArgs),
    /// A flash sale on private services with a fault injected, then the invariants.
    Chaos(ChaosArgs),
    /// Renders the HTML report of a saved `flash-sale --json`, `compare` or
    /// `compare --sweep` JSON line.
    Report {
        /// The JSON (the last line of the file is read).
        input: PathBuf,
        /// Where to write the HTML.
        #[arg(long, value_name = "FILE.html")]
        out: PathBuf,
        /// For a sweep: also write the chart of decided against offered
        /// claims/s on its own.
        #[arg(long, value_name = "FILE.svg")]
        chart: Option<PathBuf>,
    },
    /// Print a lock script's source, e.g. for redis-benchmark comparisons.
    RedisScript {
        /// acquire, extend or release.
        name: String,
    },
}

/// What `--help` says of the exit status, for scripts that run loadtest.
const EXIT_STATUS: &str = "\
Progress goes to stderr on a terminal (none with --json); results go to stdout.

Exit status:
  0  the run finished and every invariant it checks held
  1  the run finished and an invariant broke (units oversold, a user granted
     twice, a lock held twice, a chaos check failed): its numbers are no result
  2  the run could not be carried out (bad arguments, a service unreachable,
     an API key refused)

Also read from the environment:
  RUST_LOG  log filter [default: warn]";

fn exit_code(invariants_hold: bool) -> ExitCode {
    // A sale that broke an invariant must not pass for a result.
    if invariants_hold {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sale_title(r: &FlashSaleReport) -> String {
    format!(
        "Flash sale ({}): {} × {} units, {} users, {}/s for {} s",
        r.mode.as_str(),
        r.coupons,
        r.stock_per_coupon,
        r.users,
        r.rate,
        r.duration_s
    )
}

fn compare_title(c: &CompareReport) -> String {
    let r = &c.pipeline;
    format!(
        "Flash sale, pipeline vs sql-for-update: {} × {} units, {} users, {}/s for {} s",
        r.coupons, r.stock_per_coupon, r.users, r.rate, r.duration_s
    )
}

fn sweep_title(s: &SweepReport) -> String {
    match s.points.first() {
        Some(c) => {
            let r = &c.pipeline;
            format!(
                "Flash sale sweep, pipeline vs sql-for-update: {} × {} units, {} users, {} s per rate",
                r.coupons, r.stock_per_coupon, r.users, r.duration_s
            )
        }
        None => "Flash sale sweep".to_owned(),
    }
}

fn main() -> ExitCode {
    // The load generator shares the machine's cores with what it measures.
    turnstile_telemetry::disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    let runtime = match cli.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::LockBench(args) => {
            let report = lock_bench::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.table());
            }
            // A benchmark that broke mutual exclusion must not pass for a result.
            Ok(if report.violations == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::LockCompare(args) => {
            let report = lock_compare::run(&args).await?;
            println!("{}", report.table());
            println!("{}", serde_json::to_string(&report)?);
            Ok(if report.sound() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Chaos(args) => {
            let reports = chaos::run(&args).await?;
            for report in &reports {
                if args.json {
                    println!("{}", serde_json::to_string(report)?);
                } else {
                    println!("{}", report.summary());
                }
            }
            Ok(exit_code(reports.iter().all(|r| r.passed)))
        }
        Command::FlashSale(args) => {
            let report = flash_sale::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", sale_table::render(&report));
            }
            if let Some(path) = &args.report {
                html_report::write(path, &sale_title(&report), std::slice::from_ref(&report))?;
                eprintln!("report written to {}", path.display());
            }
            Ok(exit_code(report.invariants_hold()))
        }
        Command::Compare(args) if !args.sweep.is_empty() => {
            let sweep = sale_sweep::run(&args).await?;
            println!("{}", sweep.table());
            println!("{}", serde_json::to_string(&sweep)?);
            if let Some(path) = &args.chart {
                std::fs::write(path, sweep.chart_svg()?)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                eprintln!("chart written to {}", path.display());
            }
            if let Some(path) = &args.report {
                html_report::write_sweep(path, &sweep_title(&sweep), &sweep)?;
                eprintln!("report written to {}", path.display());
            }
            Ok(exit_code(sweep.invariants_hold()))
        }
        Command::Compare(args) => {
            let report = sale_compare::run(&args).await?;
            println!("{}", report.table());
            println!("{}", serde_json::to_string(&report)?);
            if let Some(path) = &args.report {
                html_report::write(path, &compare_title(&report), &report.runs())?;
                eprintln!("report written to {}", path.display());
            }
            Ok(exit_code(report.invariants_hold()))
        }
        Command::Report { input, out, chart } => {
            let text = std::fs::read_to_string(&input)?;
            let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
            if let Ok(sweep) = serde_json::from_str::<SweepReport>(line) {
                html_report::write_sweep(&out, &sweep_title(&sweep), &sweep)?;
                if let Some(path) = &chart {
                    std::fs::write(path, sweep.chart_svg()?)?;
                }
            } else if let Ok(compare) = serde_json::from_str::<CompareReport>(line) {
                html_report::write(&out, &compare_title(&compare), &compare.runs())?;
            } else {
                let report: FlashSaleReport = serde_json::from_str(line).map_err(|e| {
                    anyhow::anyhow!("{}: not a flash-sale, compare or sweep report: {e}", input.display())
                })?;
                html_report::write(&out, &sale_title(&report), std::slice::from_ref(&report))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed(args) => {
            let report = seed::run(&args).await?;
            println!("{}", report.summary());
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::RedisScript { name } => {
            let source = turnstile_lock::backend::redis::script_source(&name)
                .ok_or_else(|| anyhow::anyhow!("unknown script {name:?}: expected acquire, extend or release"))?;
            println!("{source}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
