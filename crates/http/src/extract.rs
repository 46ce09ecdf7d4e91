//! Request parsing that answers in problem+json: the JSON body (content type,
//! size, syntax and schema kept apart), the path parameter and the claim
//! headers.

use axum::{
    body::Body,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{HeaderMap, header, request::Parts},
};
use serde::de::DeserializeOwned;
use turnstile_claim::IdempotencyKey;

use crate::problem::ApiError;

/// The most bytes any JSON body may have; the app state can lower it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// How long a client may take to send its body once its headers arrived.
/// A claim holds one of admission's slots while its body arrives, so a
/// client that sends headers and then dawdles must not hold it for long.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A JSON body: 415 for another content type, 413 when too large, 408 when
/// slower than [`BODY_READ_TIMEOUT`], 400 when not JSON, 422 when JSON of
/// the wrong shape.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = req.extensions().get::<BodyLimit>().map_or(16 * 1024, |l| l.0);
        let reading = axum::body::to_bytes(Body::new(req.into_body()), limit);
        let bytes = tokio::time::timeout(BODY_READ_TIMEOUT, reading)
            .await
            .map_err(|_| ApiError::BodyTimeout(BODY_READ_TIMEOUT.as_millis() as u64))?
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::InvalidRequest(e.to_string()),
                _ => ApiError::MalformedJson(e.to_string()),
            })
    }
}

/// A path's one parameter (`{claim_id}`, `{code}`, `{sku}`), percent-decoded.
/// One that does not decode to UTF-8 names nothing that can exist, so it is
/// a 404 problem, as any other id that cannot exist (axum's own `Path`
/// would answer a plain-text 400).
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|_| ApiError::NotFound(format!("nothing at {}", parts.uri.path())))
    }
}

/// The `Idempotency-Key`, which `POST /v1/claims` requires.
pub fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let value = headers.get("idempotency-key").ok_or(ApiError::MissingIdempotencyKey)?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::InvalidHeader("Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned()))?;
    IdempotencyKey::parse(text).map_err(|e| ApiError::InvalidHeader(e.to_string()))
}

/// The longest `Prefer: wait` honoured.
pub const MAX_WAIT_SECS: u64 = 10;

/// `Prefer: wait=N` (RFC 7240), capped at 10 s. Other or malformed
/// preferences are ignored, as the RFC asks.
pub fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let (name, value) = pref.trim().split_once('=')?;
            (name.trim().eq_ignore_ascii_case("wait")).then(|| value.trim().parse::<u64>().ok())?
        })
        .next()
        .map(|n| n.min(MAX_WAIT_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn prefer_wait_parses_and_caps() {
        let mut h = HeaderMap::new();
        assert_eq!(prefer_wait(&h), None);
        h.insert("prefer", HeaderValue::from_static("respond-async, wait=3"));
        assert_eq!(prefer_wait(&h), Some(3));
        h.insert("prefer", HeaderValue::from_static("wait=100"));
        assert_eq!(prefer_wait(&h), Some(10));
        h.insert("prefer", HeaderValue::from_static("wait=soon"));
        assert_eq!(prefer_wait(&h), None);
    }

    #[test]
    fn missing_key_is_its_own_error() {
        assert!(matches!(
            idempotency_key(&HeaderMap::new()),
            Err(ApiError::MissingIdempotencyKey)
        ));
    }
}
