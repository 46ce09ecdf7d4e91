//! Stopping on a signal.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on SIGTERM or Ctrl-C, so services finish in-flight
/// work and leave cleanly.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C alone still stops the service.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

/// Runs the future `run` makes from a shutdown token until it ends,
/// cancelling the token on SIGTERM or Ctrl-C: every service's last step.
pub async fn run_until_signal<F, Fut>(run: F) -> Fut::Output
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future,
{
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    run(shutdown).await
}
