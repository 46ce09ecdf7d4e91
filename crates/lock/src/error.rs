//! The one error type of the lock library, with a [`LockErrorKind`] callers
//! can act on without matching every variant.

use std::time::Duration;

/// A boxed error from a backend's client library.
pub type BackendSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong with a lock operation. More variants may come: match on
/// [`LockError::kind`] to decide what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// `try_acquire` found the lock held by someone else.
    #[error("lock on {resource} is held by another owner")]
    Busy {
        /// The contended resource.
        resource: String,
        /// How long the current holder's lease has left, when the backend knows.
        retry_after: Option<Duration>,
    },
    /// `acquire` waited as long as it was allowed to.
    #[error("gave up on lock {resource} after waiting {waited:?}")]
    Timeout {
        /// The contended resource.
        resource: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The lease ran out before this operation reached the backend: nobody
    /// holds it under this owner any more.
    #[error("lease on {resource} has expired")]
    Expired {
        /// The resource whose lease was lost.
        resource: String,
    },
    /// Someone else holds the lock now; the operation did not touch their lease.
    #[error("lease on {resource} is held by another owner")]
    HeldByOther {
        /// The resource whose lease was lost.
        resource: String,
    },
    /// Too few Redlock nodes answered to form a quorum.
    #[error("redlock quorum not reached on {resource}: {granted} of {needed} nodes granted, {failed} failed")]
    NoQuorum {
        /// The resource.
        resource: String,
        /// Nodes that granted.
        granted: usize,
        /// Nodes needed.
        needed: usize,
        /// Nodes that failed or timed out.
        failed: usize,
    },
    /// The backend could not be reached or answered with an error.
    #[error("lock backend {backend} failed")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// The client library's error.
        #[source]
        source: BackendSource,
    },
    /// The request itself is malformed (empty resource name, zero ttl, ...).
    #[error("invalid lock request: {0}")]
    InvalidRequest(&'static str),
    /// A backend was configured with a value it cannot use (a table or key
    /// name, a node count).
    #[error("invalid lock configuration: {0}")]
    InvalidConfig(String),
}

/// The class of a [`LockError`], for callers deciding what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockErrorKind {
    /// Held by someone else or waited too long: try later.
    Contended,
    /// The caller's lease is gone: stop writing under its token.
    LeaseLost,
    /// The backend failed: retry with backoff, maybe elsewhere.
    Unavailable,
    /// A bug in the caller: retrying will not help.
    InvalidRequest,
}

impl LockError {
    /// The class of this error.
    pub fn kind(&self) -> LockErrorKind {
        match self {
            Self::Busy { .. } | Self::Timeout { .. } => LockErrorKind::Contended,
            Self::Expired { .. } | Self::HeldByOther { .. } => LockErrorKind::LeaseLost,
            Self::NoQuorum { .. } | Self::Unavailable { .. } => LockErrorKind::Unavailable,
            Self::InvalidRequest(_) | Self::InvalidConfig(_) => LockErrorKind::InvalidRequest,
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), LockErrorKind::Contended | LockErrorKind::Unavailable)
    }

    #[cfg_attr(
        not(any(feature = "redis", feature = "postgres", feature = "zookeeper")),
        allow(dead_code)
    )]
    pub(crate) fn unavailable(backend: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable {
            backend,
            source: Box::new(source),
        }
    }
}
