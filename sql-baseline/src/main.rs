//! `sql-baseline`: settings, logs, build, serve until SIGTERM.

use anyhow::Context;
use sql_baseline::{Application, Settings};
use turnstile_telemetry::LogSettings;

/// The flash-sale baseline: each claim decided in its request under
/// SELECT ... FOR UPDATE, with the settings below: each is an option or,
/// the usual way, its environment variable.
#[derive(Debug, clap::Parser)]
#[command(version, after_help = turnstile_telemetry::ENVIRONMENT_HELP)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    logs: LogSettings,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = turnstile_runtime::settings::parse();
    cli.settings.validate().context("invalid configuration")?;
    turnstile_telemetry::disable_transparent_huge_pages();
    turnstile_telemetry::init_logs("sql-baseline", cli.logs.format());
    let app = Application::build(cli.settings).await?;
    turnstile_runtime::run_until_signal(|stop| app.run_until_stopped(stop)).await
}
