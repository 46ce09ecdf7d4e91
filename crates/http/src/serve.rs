//! Serving a router on a public listener, with the bounds a hostile client
//! meets before any handler runs.
//!
//! `axum::serve` has no header-read timeout, no connection cap and no TLS,
//! so this is hyper-util's server driven by hand, as axum's own
//! `serve-with-hyper` example does:
//! - **HTTP/1.1 over plain TCP.** HTTP/2 could only be prior knowledge
//!   (`h2c`), which no browser speaks. A connection that opens with the
//!   HTTP/2 preface is closed without an answer.
//! - **Over TLS ([`crate::tls`]), HTTP/2 where ALPN chose it**, with at most
//!   [`MAX_STREAMS`] streams at once per connection; the handshake must end
//!   within the header-read timeout.
//! - **HTTP/1.1 headers within [`ServeLimits::header_read_timeout`]**: a
//!   connection that dribbles its request head (a byte a second, slowloris)
//!   is closed when the timeout passes. HTTP/2 has no such timeout in
//!   hyper; its bounds are the streams per connection and a keep-alive
//!   ping that closes a connection whose peer stopped answering.
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
use rustls::ServerConfig;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::tls::ClientCertificate;

/// Streams one HTTP/2 connection may have open at once: each is a request
/// the connection cap does not count.
pub const MAX_STREAMS: u32 = 100;

/// How often an idle HTTP/2 connection is pinged, and how long the answer
/// may take before the connection is closed.
const H2_PING: Duration = Duration::from_secs(20);

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

/// Serves `router` on `listener` within `limits`, over TLS with `tls`,
/// until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut plain = auto::Builder::new(TokioExecutor::new()).http1_only();
    plain
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut secure = auto::Builder::new(TokioExecutor::new());
    secure
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    secure
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(H2_PING))
        .keep_alive_timeout(H2_PING);
    let acceptor = tls.map(TlsAcceptor::from);
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
        let watcher = graceful.watcher();
        match &acceptor {
            None => {
                let service = TowerToHyperService::new(router.clone());
                // Not `serve_connection_with_upgrades`, which ignores `http1_only`.
                let connection = plain.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = watcher.watch(connection);
                tokio::spawn(async move {
                    // A client's I/O error or a timed-out head ends its
                    // connection; there is nobody to tell.
                    let _ = connection.await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let (acceptor, builder, router) = (acceptor.clone(), secure.clone(), router.clone());
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    // A handshake that fails (a client without a
                    // certificate under mutual TLS, a wrong protocol) or
                    // stalls ends the connection.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let certificate = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|leaf| ClientCertificate::from_der(leaf));
                            // Every request of the connection carries the
                            // certificate it was opened with.
                            let service = TowerToHyperService::new(
                                tower::ServiceBuilder::new()
                                    .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                                        if let Some(certificate) = &certificate {
                                            request.extensions_mut().insert(certificate.clone());
                                        }
                                        request
                                    })
                                    .service(router),
                            );
                            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                            let _ = watcher.watch(connection).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "tls handshake failed"),
                        Err(_) => tracing::debug!("tls handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(drain = ?limits.drain, "connections still open at shutdown were dropped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a router answering `ok` on a free port until the token fires.
    async fn serving() -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(serve(listener, router, ServeLimits::default(), None, async move {
            stopped.cancelled().await;
        }));
        (addr, stop)
    }

    /// Everything the server sends on a new connection after `request`,
    /// until it closes the connection.
    async fn answer_to(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        // The server closes the connection; a hang fails the test.
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection")
            .ok();
        answer
    }

    #[tokio::test]
    async fn http2_with_prior_knowledge_is_refused_and_http1_is_served() {
        let (addr, stop) = serving().await;
        // The HTTP/2 connection preface, then an empty SETTINGS frame.
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let answer = answer_to(addr, &h2).await;
        // An HTTP/2 server's first frame is its SETTINGS (type 4).
        assert!(
            answer.len() < 9 || answer[3] != 4,
            "the server spoke HTTP/2: {answer:?}"
        );
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
            "{}",
            String::from_utf8_lossy(&answer)
        );

        let answer = answer_to(addr, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        stop.cancel();
    }
}
