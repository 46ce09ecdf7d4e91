//! The command line: settings and log format from options or the
//! environment, telemetry, build, run until SIGTERM. `main.rs` calls
//! [`run`]; so does the end-to-end tests' copy of the binary
//! (`testing/e2e`), so both start the same way.

use anyhow::Context;
use turnstile_telemetry::LogSettings;

use crate::{Settings, Worker};

/// The claim worker: decides claims under a fenced lock, with the settings
/// below: each is an option or, the usual way, its environment variable.
#[derive(Debug, clap::Parser)]
#[command(name = "claim-worker", version, after_help = turnstile_telemetry::ENVIRONMENT_HELP)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    logs: LogSettings,
}

/// Parses the command line and the environment, then runs the worker until
/// SIGTERM or SIGINT.
pub async fn run() -> anyhow::Result<()> {
    let mut cli: Cli = turnstile_runtime::settings::parse();
    cli.settings.validate().context("invalid configuration")?;
    cli.settings
        .kafka
        .read_properties(std::env::vars())
        .context("invalid configuration")?;
    turnstile_telemetry::disable_transparent_huge_pages();
    let _telemetry = turnstile_telemetry::init("claim-worker", cli.logs.format());
    let _failpoints = turnstile_runtime::failpoints::set_up(cfg!(feature = "failpoints"))?;
    let worker = Worker::build(cli.settings).await?;
    turnstile_runtime::run_until_signal(|stop| worker.run_until_stopped(stop)).await
}
