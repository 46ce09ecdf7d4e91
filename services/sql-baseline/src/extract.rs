//! Request parsing that answers in problem+json, with `claim-api`'s rules:
//! the JSON body (content type, size, syntax and schema kept apart) and the
//! claim headers, parsed into `turnstile-claim`'s types.

use axum::{
    body::Body,
    extract::{FromRequest, Request},
    http::{HeaderMap, header},
};
use serde::de::DeserializeOwned;
use turnstile_claim::{IdempotencyKey, TenantId};

use crate::problem::ApiError;

/// The most bytes any JSON body may have.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON body: 415 for another content type, 413 when too large, 400 when
/// not JSON, 422 when JSON of the wrong shape.
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
            .is_some_and(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = req.extensions().get::<BodyLimit>().map_or(16 * 1024, |l| l.0);
        let bytes = axum::body::to_bytes(Body::new(req.into_body()), limit)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::InvalidRequest(e.to_string()),
                _ => ApiError::MalformedJson(e.to_string()),
            })
    }
}

/// The tenant named by `X-Tenant-Id`, or the default tenant.
pub fn tenant(headers: &HeaderMap) -> Result<TenantId, ApiError> {
    match headers.get("x-tenant-id") {
        None => Ok(TenantId::default_tenant()),
        Some(value) => value
            .to_str()
            .map_err(|_| ApiError::InvalidHeader("X-Tenant-Id must be visible ASCII".to_owned()))
            .and_then(|v| TenantId::parse(v).map_err(|e| ApiError::InvalidHeader(e.to_string()))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn missing_key_is_its_own_error() {
        assert!(matches!(
            idempotency_key(&HeaderMap::new()),
            Err(ApiError::MissingIdempotencyKey)
        ));
    }

    #[test]
    fn tenant_defaults_and_parses() {
        let mut h = HeaderMap::new();
        assert_eq!(
            tenant(&h).map(|t| t.as_str().to_owned()).ok().as_deref(),
            Some("default")
        );
        h.insert("x-tenant-id", HeaderValue::from_static("acme"));
        assert_eq!(tenant(&h).map(|t| t.as_str().to_owned()).ok().as_deref(), Some("acme"));
        h.insert("x-tenant-id", HeaderValue::from_static("a b"));
        assert!(matches!(tenant(&h), Err(ApiError::InvalidHeader(_))));
    }
}
