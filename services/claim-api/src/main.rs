//! `claim-api`: settings, telemetry, build, serve until SIGTERM; or
//! `claim-api keys ...` to manage API keys.

use anyhow::Context;
use claim_api::{Application, Settings, keys::KeysCommand};
use turnstile_telemetry::LogSettings;

/// The claim API. Without a command it serves, with the settings below:
/// each is an option or, the usual way, its environment variable.
#[derive(Debug, clap::Parser)]
#[command(version, after_help = turnstile_telemetry::ENVIRONMENT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    logs: LogSettings,
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
    let mut cli: Cli = turnstile_runtime::settings::parse();
    if let Some(Command::Keys(command)) = cli.command {
        return claim_api::keys::run(command, cli.settings.database.url.expose()).await;
    }
    cli.settings.validate().context("invalid configuration")?;
    cli.settings
        .kafka
        .read_properties(std::env::vars())
        .context("invalid configuration")?;
    turnstile_telemetry::disable_transparent_huge_pages();
    let _telemetry = turnstile_telemetry::init("claim-api", cli.logs.format());
    let _failpoints = turnstile_runtime::failpoints::set_up(cfg!(feature = "failpoints"))?;
    let app = Application::build(cli.settings).await?;
    turnstile_runtime::run_until_signal(|stop| app.run_until_stopped(stop)).await
}
