//! Errors as `application/problem+json` (RFC 9457), each with a stable
//! `type` clients can match on. Bad input is always a 4xx; a failing
//! dependency is a 503 with `Retry-After`; nothing is a bare 500 unless it is
//! a bug.
//!
//! What a refusal promises about a claim: a `429` or `503` means this
//! request recorded nothing, and an earlier accepted request with the same
//! `Idempotency-Key` stands. A `504 outcome-unknown` means the claim may or
//! may not be recorded; a `408 request-timeout` likewise. After either, a
//! retry with the same key tells.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A stable identifier of the kind of problem, e.g. `/problems/sold-out`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A short summary of the kind.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What happened in this instance.
    pub detail: String,
}

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// `Idempotency-Key` is required on `POST /v1/claims`.
    #[error("the Idempotency-Key header is required")]
    MissingIdempotencyKey,
    /// A header is malformed.
    #[error("{0}")]
    InvalidHeader(String),
    /// The body is not JSON (syntax, truncation, invalid UTF-8).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON but breaks the schema or a rule.
    #[error("{0}")]
    InvalidRequest(String),
    /// Only `application/json` bodies are accepted.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// The body is larger than allowed.
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// The request took longer than the server allows. It may have been
    /// recorded: a retry with the same `Idempotency-Key` tells.
    #[error("the request took longer than {0} ms; retry with the same Idempotency-Key")]
    RequestTimeout(u64),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    /// The key was used before with a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// No such coupon or SKU.
    #[error("{0} does not exist")]
    UnknownResource(String),
    /// Nothing at this path.
    #[error("{0}")]
    NotFound(String),
    /// The method is not supported here.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The coupon or SKU exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Shedding load: nothing was done, try again later.
    #[error("overloaded ({cause}); retry later")]
    Overloaded {
        /// What is saturated: `concurrency`, `tenant_share` or `pending_backlog`.
        cause: &'static str,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// A dependency is failing or its circuit is open.
    #[error("{dependency} is unavailable; retry later")]
    Unavailable {
        /// `postgres`, `kafka` or `redis`.
        dependency: &'static str,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// No credential, or one that is malformed, unknown or revoked.
    #[error("{}", .0.detail())]
    Unauthenticated(AuthFailure),
    /// The credential is valid but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The caller's own rate is exceeded (its key's, or its user's); other
    /// callers are unaffected. Nothing was done.
    #[error("the {scope} rate limit is exceeded; retry later")]
    RateLimited {
        /// `key`, `user` or `tenant`.
        scope: &'static str,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The claim's commit was sent, its answer was lost (Postgres
    /// restarting, a network fault), and reading it back did not succeed
    /// in time: the claim may or may not be recorded. Not a 503, which
    /// promises that nothing was recorded. A retry with the same
    /// `Idempotency-Key` is safe and tells.
    #[error("the claim may or may not have been recorded; retry with the same Idempotency-Key")]
    OutcomeUnknown {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// A bug.
    #[error("internal error")]
    Internal,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer` and a well-formed key.
    Malformed,
    /// A well-formed key that is unknown or revoked.
    Unknown,
}

impl AuthFailure {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::Missing => "an API key is required: Authorization: Bearer <key>",
            Self::Malformed => "the Authorization header must be Bearer and an API key",
            Self::Unknown => "the API key is unknown or revoked",
        }
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            MissingIdempotencyKey => (
                StatusCode::BAD_REQUEST,
                "/problems/missing-idempotency-key",
                "Idempotency-Key required",
            ),
            InvalidHeader(_) => (StatusCode::BAD_REQUEST, "/problems/invalid-header", "Invalid header"),
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "/problems/malformed-json", "Malformed JSON"),
            InvalidRequest(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/invalid-request",
                "Invalid request",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "/problems/unsupported-media-type",
                "Unsupported media type",
            ),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "/problems/payload-too-large",
                "Payload too large",
            ),
            RequestTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "/problems/request-timeout",
                "Request timeout",
            ),
            BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "/problems/body-timeout",
                "Request body too slow",
            ),
            IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/idempotency-key-reused",
                "Idempotency-Key reused",
            ),
            UnknownResource(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/unknown-resource",
                "Unknown resource",
            ),
            NotFound(_) => (StatusCode::NOT_FOUND, "/problems/not-found", "Not found"),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "/problems/method-not-allowed",
                "Method not allowed",
            ),
            AlreadyExists(_) => (StatusCode::CONFLICT, "/problems/already-exists", "Already exists"),
            Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "/problems/overloaded", "Overloaded"),
            Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/unavailable",
                "Dependency unavailable",
            ),
            Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "/problems/unauthenticated", "Unauthenticated"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "/problems/forbidden", "Forbidden"),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/rate-limited",
                "Rate limit exceeded",
            ),
            // 504: the upstream (Postgres) did not answer in time. Unlike
            // 503 it says nothing about what happened, and unlike 409 it
            // does not blame the request.
            OutcomeUnknown { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "/problems/outcome-unknown",
                "Outcome unknown: retry with the same Idempotency-Key",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "/problems/internal",
                "Internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        let retry_after = match &self {
            Self::Overloaded { retry_after, .. }
            | Self::Unavailable { retry_after, .. }
            | Self::RateLimited { retry_after, .. }
            | Self::OutcomeUnknown { retry_after } => Some(*retry_after),
            _ => None,
        };
        let body = Problem {
            kind,
            title,
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::Unauthenticated(failure) = self {
            // RFC 6750: no error code when no credential was sent.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(match failure {
                    AuthFailure::Missing => "Bearer realm=\"turnstile\"",
                    _ => "Bearer realm=\"turnstile\", error=\"invalid_token\"",
                }),
            );
        }
        response
    }
}
