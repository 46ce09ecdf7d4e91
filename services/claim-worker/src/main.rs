//! `claim-worker`: settings, telemetry, build, run until SIGTERM
//! ([`claim_worker::cli::run`]).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    claim_worker::cli::run().await
}
