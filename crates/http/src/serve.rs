//! Serving a router on a public listener, with the bounds a hostile client
//! meets before any handler runs.
//!
//! `axum::serve` has no header-read timeout and no connection cap, so this
//! is hyper-util's server (HTTP/1.1 and HTTP/2, as `axum::serve` speaks)
//! driven by hand, as axum's own `serve-with-hyper` example does:
//! - **Headers within [`ServeLimits::header_read_timeout`]**: a connection
//!   that dribbles its request head (a byte a second, slowloris) is closed
//!   when the timeout passes.
//! - **At most [`ServeLimits::max_connections`] open connections**: past
//!   the cap the next connection waits in the kernel's accept queue
//!   instead of costing a task, buffers and a file descriptor here.
//! - **Graceful shutdown**: when `shutdown` fires, accepting stops and open
//!   connections finish their requests in flight, for at most
//!   [`ServeLimits::drain`].

use std::{future::Future, io, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};

/// The connection-level bounds.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// How long a request's head (request line and headers) may take to
    /// arrive.
    pub header_read_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// How long open connections get to finish at shutdown.
    pub drain: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            drain: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        // A slot first: over the cap, connections wait in the accept queue.
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: back off a little and go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(router.clone()))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client's I/O error or a timed-out head ends its connection;
            // there is nobody to tell.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(drain = ?limits.drain, "connections still open at shutdown were dropped");
    }
    Ok(())
}
