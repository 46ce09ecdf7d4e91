//! The command line: settings and log format from options or the
//! environment, telemetry, build, run until SIGTERM. `main.rs` calls
//! [`run`]; so does the end-to-end tests' copy of the binary
//! (`testing/e2e`), so both start the same way.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
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
    // Fault injection exists only in builds with the `failpoints` feature
    // (the tests and `loadtest chaos`); any other build refuses FAILPOINTS
    // rather than ignore it.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    #[cfg(not(feature = "failpoints"))]
    anyhow::ensure!(
        std::env::var_os("FAILPOINTS").is_none(),
        "FAILPOINTS is set, but this build has no failpoints (build with --features failpoints)"
    );
    let worker = Worker::build(cli.settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(turnstile_runtime::stop_on_signal(shutdown.clone()));
    worker.run_until_stopped(shutdown).await
}
