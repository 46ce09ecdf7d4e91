//! A TLS front for a server that speaks plain TCP alone: it takes TLS
//! connections on a loopback port of its own, with the certificate it was
//! given, and passes each one's bytes to the server and back. tansu 0.6
//! cannot serve TLS itself (docs/security.md), so a private broker started
//! with TLS sits behind one, advertising the front's address, and every
//! client connection to it, the bootstrap and each one to the broker it
//! names, crosses TLS.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result};
use rustls::{ServerConfig, crypto::ring};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;

use crate::ServerTls;

/// The front: stops taking connections, and drops the ones it holds, when
/// dropped.
#[derive(Debug)]
pub struct TlsFront {
    port: u16,
    handshakes: Arc<Handshakes>,
    accepting: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Handshakes {
    completed: AtomicU64,
    failed: AtomicU64,
}

impl TlsFront {
    /// Takes connections on a free loopback port, each passed on to
    /// `127.0.0.1:upstream` once its handshake completed. The upstream need
    /// not listen yet: a connection that cannot reach it is closed.
    pub async fn start(tls: &ServerTls, upstream: u16) -> Result<Self> {
        let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("the front's certificate")?;
        let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).context("the front's key")?;
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let handshakes = Arc::new(Handshakes::default());
        let accepting = tokio::spawn(accept(listener, acceptor, upstream, Arc::clone(&handshakes)));
        Ok(Self {
            port,
            handshakes,
            accepting,
        })
    }

    /// The port it takes TLS connections on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Handshakes that completed: clients that trusted the certificate.
    pub fn completed_handshakes(&self) -> u64 {
        self.handshakes.completed.load(Ordering::Relaxed)
    }

    /// Handshakes that failed: clients that refused the certificate (or
    /// spoke no TLS).
    pub fn failed_handshakes(&self) -> u64 {
        self.handshakes.failed.load(Ordering::Relaxed)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept(listener: TcpListener, acceptor: TlsAcceptor, upstream: u16, handshakes: Arc<Handshakes>) {
    // Dropped with this task, which aborts every connection it holds.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let (acceptor, handshakes) = (acceptor.clone(), Arc::clone(&handshakes));
                connections.spawn(async move {
                    let mut client = match acceptor.accept(client).await {
                        Ok(client) => client,
                        Err(_) => {
                            handshakes.failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    handshakes.completed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}
