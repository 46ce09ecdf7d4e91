//! `loadtest`: benchmarks and load scenarios for Turnstile. See the library
//! docs for what each subcommand measures.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use turnstile_loadtest::{
    flash_sale::{self, FlashSaleArgs},
    lock_bench::{self, LockBenchArgs},
    lock_compare::{self, LockCompareArgs},
};

#[derive(Debug, Parser)]
#[command(name = "loadtest", about = "Benchmarks and load scenarios for Turnstile")]
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
    /// Print a lock script's source, e.g. for redis-benchmark comparisons.
    RedisScript {
        /// acquire, extend or release.
        name: String,
    },
}

fn main() -> ExitCode {
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
        Command::FlashSale(args) => {
            let report = flash_sale::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(if report.invariants_hold() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::RedisScript { name } => {
            let source = turnstile_lock::backend::redis::script_source(&name)
                .ok_or_else(|| anyhow::anyhow!("unknown script {name:?}: expected acquire, extend or release"))?;
            println!("{source}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
