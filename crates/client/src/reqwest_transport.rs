//! The default transport, on a `reqwest::Client` and its connection pool.

use std::time::Duration;

use http::header::CONTENT_TYPE;

use crate::{Error, Request, Response, Transport, TransportError};

/// How long a request waits for its answer by default: longer than the
/// API's longest `Prefer: wait` (10 s) and its own request deadline.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests to one API (`http://host:port`, or `https://` when reqwest is
/// built with a TLS feature) through a `reqwest::Client`.
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
    /// The API's base URL, without a trailing `/`.
    base: String,
}

impl ReqwestTransport {
    /// A transport to `base_url` with a client of its own (30 s timeout).
    pub fn new(base_url: &str) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .map_err(|_| Error::InvalidSetting("the http client could not be built"))?;
        Self::with_client(client, base_url)
    }

    /// A transport to `base_url` through `client` (its pool, timeouts and TLS).
    pub fn with_client(client: reqwest::Client, base_url: &str) -> Result<Self, Error> {
        let url = reqwest::Url::parse(base_url).map_err(|_| Error::InvalidSetting("the api url is not a url"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Error::InvalidSetting(
                "the api url must be http:// or https:// and name a host",
            ));
        }
        Ok(Self {
            client,
            base: base_url.trim_end_matches('/').to_owned(),
        })
    }
}

impl Transport for ReqwestTransport {
    async fn send(&self, request: &Request<'_>) -> Result<Response, TransportError> {
        let mut url = String::with_capacity(self.base.len() + request.path().len());
        url.push_str(&self.base);
        url.push_str(request.path());
        let mut builder = self.client.request(request.method().clone(), url);
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body() {
            builder = builder.header(CONTENT_TYPE, "application/json").body(body.clone());
        }
        let mut response = builder.send().await.map_err(TransportError::new)?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let body = response.bytes().await.map_err(TransportError::new)?;
        Ok(Response { status, headers, body })
    }
}
