//! `sql-baseline`: configuration, logs, build, serve until SIGTERM.

use anyhow::Context;
use sql_baseline::{Application, Settings};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    turnstile_telemetry::disable_transparent_huge_pages();
    turnstile_telemetry::init_logs(
        "sql-baseline",
        turnstile_telemetry::LogFormat::from_env().map_err(anyhow::Error::msg)?,
    );
    let settings = Settings::from_env().context("invalid configuration")?;
    let app = Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(turnstile_telemetry::stop_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await
}
