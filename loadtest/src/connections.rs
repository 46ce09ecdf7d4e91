//! The load generator's connections to the API under test: a fixed number
//! of keep-alive HTTP/1.1 connections, opened before the clock starts.
//!
//! This is wrk2's model (`-c`), and what an API sees behind a load
//! balancer's connection pool. A request waits for a free connection, and
//! that wait counts in its latency, since latency runs from the request's
//! scheduled send time. A pooled client (`reqwest`) does not fit a
//! generator that shares the cores with the system it measures:
//! - in a sale's first second it opens a connection for every request that
//!   finds none idle (thousands in the first 1.5 s at 5000 claims/s), each
//!   a connect and an accept, while at most 256 claims are admitted at once;
//! - per request it costs about as much CPU as claim-api spends answering.
//!
//! An `https://` API is reached over TLS (rustls, ALPN `http/1.1`, the CA
//! given with `--cacert`): the handshakes happen while the connections are
//! opened, before the clock starts, as a balancer's pool would have them.
//!
//! Requests go straight to `hyper`'s connection API: one `SendRequest` per
//! connection, checked out for one request and its body, then returned.
//! They implement `turnstile-client`'s `Transport`, so a sale's claims go
//! through the same client, retries and throttling as a caller's.

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::FutureExt as _;
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, StatusCode, Uri,
    body::Incoming,
    client::conn::{
        TrySendError,
        http1::{self, SendRequest},
    },
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{net::TcpStream, sync::Semaphore};
use tokio_rustls::TlsConnector;
use turnstile_client::{Request as ClientRequest, Response, Transport, TransportError};

/// A request not answered in this long counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A status, the headers and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A fixed set of keep-alive connections to one API.
#[derive(Debug)]
pub struct Connections {
    addr: SocketAddr,
    /// How to speak TLS to an `https://` API.
    tls: Option<Tls>,
    host: HeaderValue,
    /// One permit per connection: holding one entitles to one sender.
    free: Semaphore,
    /// Idle connections; fewer than the free permits only while a broken
    /// one is being replaced.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Connections {
    /// Opens `count` connections to `api` (`http://host:port`, or
    /// `https://` with the CA `ca` in PEM), all at once.
    pub async fn open(api: &str, count: NonZeroUsize, ca: Option<&Path>) -> Result<Arc<Self>> {
        let url: Uri = api.parse().with_context(|| format!("--api {api} is not a URL"))?;
        let authority = url.authority().with_context(|| format!("--api {api} has no host"))?;
        let (tls, default_port) = match url.scheme_str() {
            Some("http") => (None, 80),
            Some("https") => {
                let ca = ca.with_context(|| format!("--api {api}: https needs --cacert"))?;
                (Some(Tls::new(ca, authority.host())?), 443)
            }
            _ => bail!("--api {api}: only http:// and https:// are supported"),
        };
        let port = authority.port_u16().unwrap_or(default_port);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("resolving {api}"))?
            .next()
            .with_context(|| format!("{api} resolves to no address"))?;
        let host = HeaderValue::from_str(authority.as_str()).context("--api's host is not a header value")?;
        let opening = (0..count.get()).map(|_| connect(addr, tls.as_ref()));
        let idle = futures::future::try_join_all(opening)
            .await
            .with_context(|| format!("opening {count} connections to {api}"))?;
        Ok(Arc::new(Self {
            addr,
            tls,
            host,
            free: Semaphore::new(count.get()),
            idle: Mutex::new(idle),
        }))
    }

    /// POSTs a JSON `body` to `path` with `headers` on the next free
    /// connection, and reads the whole answer. A `Bytes` body is shared, not
    /// copied, so sending the same request again costs no allocation.
    pub async fn post_json(
        &self,
        path: &str,
        headers: &[(&HeaderName, HeaderValue)],
        body: impl Into<Bytes>,
    ) -> Result<Answer> {
        let headers = headers.iter().map(|(name, value)| (*name, value));
        self.request(Method::POST, path, headers, Some(body.into())).await
    }

    /// Sends a request on the next free connection and reads the whole
    /// answer; a body goes as `application/json`.
    async fn request<'h>(
        &self,
        method: Method,
        path: &str,
        headers: impl Iterator<Item = (&'h HeaderName, &'h HeaderValue)>,
        body: Option<Bytes>,
    ) -> Result<Answer> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host.clone());
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in headers {
            request = request.header(name, value.clone());
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let _free = self.free.acquire().await?;
        let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut sender = match pooled {
            Some(sender) if !sender.is_closed() => sender,
            _ => connect(self.addr, self.tls.as_ref()).await?,
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            // A connection the server closed while it sat idle gives the
            // request back unsent: send it once more on a new connection.
            let response = match send(&mut sender, request).await {
                Ok(response) => response,
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => {
                        sender = connect(self.addr, self.tls.as_ref()).await?;
                        send(&mut sender, unsent).await.map_err(TrySendError::into_error)?
                    }
                    None => return Err(failed.into_error().into()),
                },
            };
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
        .await
        .context("no answer in time")??;
        // A connection that failed or timed out is dropped; the next
        // request on its permit opens a new one.
        if !sender.is_closed() {
            self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(sender);
        }
        Ok(answer)
    }
}

/// The claim client's transport: its retries, tickets and throttling run
/// on these connections, so a wait for a free one counts as it does for
/// every other request.
impl Transport for Connections {
    async fn send(&self, request: &ClientRequest<'_>) -> Result<Response, TransportError> {
        let answer = self
            .request(
                request.method().clone(),
                request.path(),
                request.headers(),
                request.body().cloned(),
            )
            .await
            .map_err(TransportError::new)?;
        Ok(Response {
            status: answer.status,
            headers: answer.headers,
            body: answer.body,
        })
    }
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, TrySendError<Request<Full<Bytes>>>> {
    // `ready` fails only when the connection is gone; the request is then
    // still unsent, and `try_send_request` hands it back.
    let _ = sender.ready().await;
    sender.try_send_request(request).await
}

/// A TLS client for one API: its CA, and the name its certificate bears.
#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    server: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Tls {
    fn new(ca: &Path, host: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading --cacert {}", ca.display()))? {
            roots.add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The generator's model is a pool of HTTP/1.1 connections.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server: ServerName::try_from(host.to_owned()).with_context(|| format!("{host} is no server name"))?,
        })
    }
}

async fn connect(addr: SocketAddr, tls: Option<&Tls>) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = match tls {
        None => {
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            (sender, connection.boxed())
        }
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.server.clone(), stream)
                .await
                .with_context(|| format!("tls handshake with {addr}"))?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            (sender, connection.boxed())
        }
    };
    tokio::spawn(async move {
        // Ends when the server closes the connection or the sender is
        // dropped; either way the pool notices through `is_closed`.
        let _ = connection.await;
    });
    Ok(sender)
}
