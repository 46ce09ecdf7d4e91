//! The one thing the client needs from an HTTP stack: send a request, get
//! its status, headers and whole body back.
//!
//! Retries, tickets and throttling sit above this trait, so a caller with
//! its own connections (the load generator keeps a fixed set of HTTP/1.1
//! connections and measures every wait for one) gets exactly the client's
//! behaviour on them. The `reqwest` feature brings
//! [`ReqwestTransport`](crate::ReqwestTransport).

use std::{error::Error as StdError, fmt, future::Future, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The most headers the client sets on one request: `Idempotency-Key`,
/// `Authorization`, `Prefer` and `Turnstile-Ticket`.
const MAX_HEADERS: usize = 4;

/// One request, borrowed from the call that sends it: nothing in it is
/// allocated per attempt.
#[derive(Debug)]
pub struct Request<'a> {
    pub(crate) method: Method,
    pub(crate) path: &'a str,
    pub(crate) headers: [Option<(&'a HeaderName, &'a HeaderValue)>; MAX_HEADERS],
    pub(crate) body: Option<&'a Bytes>,
}

impl<'a> Request<'a> {
    pub(crate) fn new(method: Method, path: &'a str, body: Option<&'a Bytes>) -> Self {
        Self {
            method,
            path,
            headers: [None; MAX_HEADERS],
            body,
        }
    }

    pub(crate) fn header(&mut self, name: &'a HeaderName, value: Option<&'a HeaderValue>) {
        let (Some(value), Some(slot)) = (value, self.headers.iter_mut().find(|slot| slot.is_none())) else {
            return;
        };
        *slot = Some((name, value));
    }

    /// `POST` or `GET`.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path and query, e.g. `/v1/claims`; the transport knows the API's
    /// scheme and authority.
    pub fn path(&self) -> &str {
        self.path
    }

    /// The headers to send besides `Host`, and `Content-Type` for a body.
    pub fn headers(&self) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + '_ {
        self.headers.iter().flatten().copied()
    }

    /// The JSON body, if any: the transport sends it with
    /// `Content-Type: application/json`. `Bytes` clone without copying.
    pub fn body(&self) -> Option<&'a Bytes> {
        self.body
    }
}

/// An answer: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request that got no answer: it could not be sent, the connection
/// failed, or no answer came in time. Whether the server acted on it is
/// unknown.
#[derive(Debug)]
pub struct TransportError(Box<dyn StdError + Send + Sync>);

impl TransportError {
    /// Wraps the transport's own error.
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for TransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// Sends one request and reads its whole answer. A transport bounds how
/// long it waits for an answer (with `Prefer: wait=N`, at least `N`
/// seconds more than the server needs) and how large a body it reads.
pub trait Transport: Send + Sync {
    /// Sends `request` and reads the answer.
    fn send(&self, request: &Request<'_>) -> impl Future<Output = Result<Response, TransportError>> + Send;
}

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn send(&self, request: &Request<'_>) -> impl Future<Output = Result<Response, TransportError>> + Send {
        (**self).send(request)
    }
}

impl<T: Transport + ?Sized> Transport for &T {
    fn send(&self, request: &Request<'_>) -> impl Future<Output = Result<Response, TransportError>> + Send {
        (**self).send(request)
    }
}
