//! Why a call did not end in a claim, and what the caller can do about it.

use std::time::Duration;

use http::StatusCode;

use crate::{Problem, TransportError};

/// What the caller can do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Dropped by client-side throttling: nothing was sent. Come back
    /// later, or tell the user the service is busy.
    Throttled,
    /// The API refused (`429`, `503`) on every attempt the policy allowed.
    /// Nothing was recorded by those requests; a later call with the same
    /// idempotency key is safe.
    Refused,
    /// The request may or may not have been recorded (`408`, `5xx` other
    /// than `503`, or no answer). A call with the same idempotency key
    /// tells.
    OutcomeUnknown,
    /// The request is wrong and will stay wrong (`400`, `404`, `413`, `415`,
    /// `422`: bad body, unknown coupon, key reused with another request).
    Rejected,
    /// The API key is missing, unknown, revoked, or may not claim
    /// (`401`, `403`).
    Unauthorized,
    /// The caller's [`Observer`](crate::Observer) declined to send.
    Abandoned,
    /// An answer the API does not give: an unexpected status or body.
    Protocol,
    /// A setting was out of range.
    InvalidSetting,
}

impl ErrorKind {
    /// Whether the same call (same idempotency key) may succeed later.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::Throttled | Self::Refused | Self::OutcomeUnknown)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Dropped locally by adaptive throttling.
    #[error("dropped by client-side throttling (rejection probability {probability:.3})")]
    Throttled {
        /// The probability it was dropped with.
        probability: f64,
    },
    /// Refused on every attempt.
    #[error("refused with {status} after {attempts} attempts; nothing was recorded")]
    Refused {
        /// The last answer's status (`429` or `503`).
        status: StatusCode,
        /// Requests sent.
        attempts: u32,
        /// What the last answer's `Retry-After` asked (bounded by the policy).
        retry_after: Duration,
        /// The last answer's body, when it is a problem.
        problem: Option<Problem>,
    },
    /// An answer that leaves the outcome unknown.
    #[error("the outcome is unknown after {status}; call again with the same idempotency key")]
    OutcomeUnknown {
        /// `408`, `500`, `504`, ...
        status: StatusCode,
        /// The body, when it is a problem.
        problem: Option<Problem>,
    },
    /// No answer.
    #[error("no answer, the outcome is unknown: {0}")]
    Transport(#[source] TransportError),
    /// The API refused the request for good.
    #[error("refused with {status}{}", problem_type(.problem))]
    Api {
        /// The status (a `4xx`).
        status: StatusCode,
        /// The body, when it is a problem.
        problem: Option<Problem>,
    },
    /// The caller's observer declined to send.
    #[error("abandoned by the caller before attempt {attempt}")]
    Abandoned {
        /// The attempt not sent (1 for the first).
        attempt: u32,
    },
    /// A status the API does not answer here.
    #[error("unexpected status {0}")]
    UnexpectedStatus(StatusCode),
    /// A success whose body is not a claim.
    #[error("the answer {status} is not a claim: {source}")]
    Decode {
        status: StatusCode,
        #[source]
        source: serde_json::Error,
    },
    /// A setting out of range.
    #[error("invalid setting: {0}")]
    InvalidSetting(&'static str),
}

fn problem_type(problem: &Option<Problem>) -> String {
    match problem {
        Some(p) if !p.problem_type.is_empty() => format!(" ({})", p.problem_type),
        _ => String::new(),
    }
}

impl Error {
    /// What the caller can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Throttled { .. } => ErrorKind::Throttled,
            Self::Refused { .. } => ErrorKind::Refused,
            Self::OutcomeUnknown { .. } | Self::Transport(_) => ErrorKind::OutcomeUnknown,
            Self::Api { status, .. } if matches!(*status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                ErrorKind::Unauthorized
            }
            Self::Api { .. } => ErrorKind::Rejected,
            Self::Abandoned { .. } => ErrorKind::Abandoned,
            Self::UnexpectedStatus(_) | Self::Decode { .. } => ErrorKind::Protocol,
            Self::InvalidSetting(_) => ErrorKind::InvalidSetting,
        }
    }

    /// The problem the API answered with, if it sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Refused { problem, .. } | Self::OutcomeUnknown { problem, .. } | Self::Api { problem, .. } => {
                problem.as_ref()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_say_what_to_do_and_messages_are_lowercase() {
        let problem = Problem {
            problem_type: "/problems/idempotency-key-reused".to_owned(),
            ..Problem::default()
        };
        let errors = [
            (Error::Throttled { probability: 0.5 }, ErrorKind::Throttled, true),
            (
                Error::Refused {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    attempts: 3,
                    retry_after: Duration::from_secs(1),
                    problem: None,
                },
                ErrorKind::Refused,
                true,
            ),
            (
                Error::OutcomeUnknown {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    problem: None,
                },
                ErrorKind::OutcomeUnknown,
                true,
            ),
            (
                Error::Transport(TransportError::new("connection reset")),
                ErrorKind::OutcomeUnknown,
                true,
            ),
            (
                Error::Api {
                    status: StatusCode::FORBIDDEN,
                    problem: None,
                },
                ErrorKind::Unauthorized,
                false,
            ),
            (
                Error::Api {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    problem: Some(problem),
                },
                ErrorKind::Rejected,
                false,
            ),
            (Error::Abandoned { attempt: 2 }, ErrorKind::Abandoned, false),
            (
                Error::UnexpectedStatus(StatusCode::NO_CONTENT),
                ErrorKind::Protocol,
                false,
            ),
            (Error::InvalidSetting("k"), ErrorKind::InvalidSetting, false),
        ];
        for (error, kind, retryable) in errors {
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(kind.is_retryable(), retryable, "{error}");
            let message = error.to_string();
            assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
        let reused = Error::Api {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem: Some(Problem {
                problem_type: "/problems/idempotency-key-reused".to_owned(),
                ..Problem::default()
            }),
        };
        assert!(reused.to_string().ends_with("(/problems/idempotency-key-reused)"));
        assert!(reused.problem().is_some_and(|p| p.is("idempotency-key-reused")));
    }
}
