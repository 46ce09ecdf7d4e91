//! `claim-api`: configuration, telemetry, build, serve until SIGTERM; or
//! `claim-api keys ...` to manage API keys.

use anyhow::Context;
use claim_api::{Application, Settings, keys::KeysCommand};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The claim API. Without a command it serves, configured by environment
/// variables (see README).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Manage API keys in the database at DATABASE_URL.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(Command::Keys(command)) = Cli::parse().command {
        let database_url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".to_owned());
        return claim_api::keys::run(command, &database_url).await;
    }
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
