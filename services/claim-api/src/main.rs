//! `claim-api`: configuration, telemetry, build, serve until SIGTERM.

use anyhow::Context;
use claim_api::{Application, Settings};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    turnstile_telemetry::disable_transparent_huge_pages();
    let _telemetry = turnstile_telemetry::init(
        "claim-api",
        turnstile_telemetry::LogFormat::from_env().map_err(anyhow::Error::msg)?,
    );
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
    let settings = Settings::from_env().context("invalid configuration")?;
    let app = Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(turnstile_telemetry::stop_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await
}
