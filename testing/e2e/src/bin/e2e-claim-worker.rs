//! The claim worker, built for the end-to-end tests: a test can only name a
//! binary of its own package (`CARGO_BIN_EXE_*`), and these tests stop,
//! kill and restart a worker process. It starts exactly as `claim-worker`
//! does ([`claim_worker::cli::run`]).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    claim_worker::cli::run().await
}
