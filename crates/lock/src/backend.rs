//! The port every lock store implements, and the small types it speaks.
//!
//! A backend only knows single operations (one attempt, one extend, one
//! release); waiting, renewal, lease-lost signalling and metrics live once in
//! [`crate::LockClient`] so every backend behaves the same.

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis-cluster")]
pub mod redis_cluster;
#[cfg(feature = "redlock")]
pub mod redlock;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "redis")]
mod wakeups;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::{sync::Notify, time::Instant};

use crate::{FencingToken, LockError};

/// A unique identity for one lease, so that only its holder can extend or
/// release it. A fresh id is drawn for every acquire: two leases never share
/// an owner, even inside one process.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OwnerId(String);

impl OwnerId {
    /// A new random owner id (128 bits, hex).
    pub fn random() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    /// The id as sent to the backend.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerId({})", &self.0)
    }
}

/// The outcome of one attempt to take a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attempt {
    /// The lock is ours for `ttl` from when the attempt was sent. (How long
    /// the holder may rely on it, clock drift taken off, is worked out once
    /// by [`crate::LockClient`] for every backend.)
    Acquired {
        /// The lease's fencing token.
        token: FencingToken,
    },
    /// Someone else holds it.
    Busy {
        /// The holder's remaining ttl, when the backend knows it.
        retry_after: Option<Duration>,
    },
}

/// The outcome of waiting in a store's own queue of waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Turn {
    /// Our turn came: the lock is ours for `ttl` from `since`.
    Granted {
        /// The lease's fencing token.
        token: FencingToken,
        /// When the request that confirmed the grant was sent; the lease's
        /// ttl counts from here, not from when the wait began.
        since: Instant,
        /// Whether someone was ahead of us (the lock was contended).
        queued: bool,
    },
    /// The deadline passed first; we have left the queue.
    TimedOut,
}

/// A subscription to "this resource was released" wake-ups. Dropping it
/// unsubscribes.
///
/// Waiters arm [`Notify::notified`] *before* their next attempt, so a release
/// between a refused attempt and the wait is not missed.
pub struct ReleaseSubscription {
    notify: Arc<Notify>,
    _unsubscribe: Box<dyn Send + Sync>,
}

impl ReleaseSubscription {
    /// Ties a notifier to a guard whose drop ends the subscription.
    pub fn new(notify: Arc<Notify>, unsubscribe_on_drop: Box<dyn Send + Sync>) -> Self {
        Self {
            notify,
            _unsubscribe: unsubscribe_on_drop,
        }
    }

    /// The notifier woken on release.
    pub fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }
}

impl fmt::Debug for ReleaseSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseSubscription").finish_non_exhaustive()
    }
}

/// One lock store. Implementations must make each method a single atomic step
/// on the store (one Lua script, one transaction, one znode operation), so a
/// crash between steps can never leave a lock held without a token or a token
/// issued without a lock.
#[async_trait]
pub trait LockBackend: Send + Sync + fmt::Debug {
    /// A short name for metrics and errors (`redis`, `redis-cluster`, ...).
    fn name(&self) -> &'static str;

    /// Tries once to take `resource` for `owner` for `ttl`. On success the
    /// token is strictly greater than any token issued before for `resource`
    /// (see each backend's docs for the conditions).
    async fn try_acquire(&self, resource: &str, owner: &OwnerId, ttl: Duration) -> Result<Attempt, LockError>;

    /// Pushes the expiry of `owner`'s lease to `ttl` from when the request
    /// was sent. Fails with [`LockError::Expired`] or
    /// [`LockError::HeldByOther`] when the lease is no longer `owner`'s.
    async fn extend(
        &self,
        resource: &str,
        owner: &OwnerId,
        token: FencingToken,
        ttl: Duration,
    ) -> Result<(), LockError>;

    /// Releases `owner`'s lease. Never removes another owner's lease: fails
    /// with [`LockError::Expired`] or [`LockError::HeldByOther`] instead.
    async fn release(&self, resource: &str, owner: &OwnerId, token: FencingToken) -> Result<(), LockError>;

    /// Makes every token issued for `resource` from now on greater than
    /// `floor`, in one atomic step; a counter already above it is left alone.
    ///
    /// The repair for a counter that fell behind the fenced store: a store
    /// restored from an older snapshot, a failover to a replica that missed
    /// the last increments, or a switch from another backend. The fenced
    /// store refuses such tokens (safety never depends on this); the caller
    /// passes the last token it accepted, and the next grant is usable. A
    /// lease held now keeps its token.
    async fn raise_floor(&self, resource: &str, floor: FencingToken) -> Result<(), LockError>;

    /// Waits for `resource` in the store's own fair queue until `deadline`,
    /// when the store keeps one (ZooKeeper's lock recipe: each waiter watches
    /// only its predecessor). `None` means it does not; [`crate::LockClient`]
    /// then polls [`try_acquire`](Self::try_acquire), woken by
    /// [`watch_releases`](Self::watch_releases) where available.
    async fn acquire_in_turn(
        &self,
        resource: &str,
        owner: &OwnerId,
        ttl: Duration,
        deadline: Instant,
    ) -> Option<Result<Turn, LockError>> {
        let _ = (resource, owner, ttl, deadline);
        None
    }

    /// Subscribes to release wake-ups for `resource`, when the backend can
    /// push them. `None` means waiters fall back to jittered polling alone.
    async fn watch_releases(&self, resource: &str) -> Result<Option<ReleaseSubscription>, LockError> {
        let _ = resource;
        Ok(None)
    }
}
