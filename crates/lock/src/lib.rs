//! Leases with fencing tokens: the lock layer of Turnstile.
//!
//! In the claim pipeline a Kafka partition already serialises the claims for
//! one resource, but a consumer that stalls (a GC pause, `SIGSTOP`) or loses
//! its partition in a rebalance can keep working as a zombie beside the new
//! owner. The claim worker therefore also takes a lease on the resource from
//! this crate, and sends the lease's [`FencingToken`] with every write; the
//! database refuses any token older than the last one it accepted. The lock
//! keeps the zombies rare; the fence makes them harmless.
//!
//! The crate is usable on its own:
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//! use turnstile_lock::{LockClient, backend::redis::RedisLockBackend};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), turnstile_lock::LockError> {
//! // Needs a Redis on 127.0.0.1:6379 (`scripts/stack up` starts one).
//! let backend = RedisLockBackend::connect("redis://127.0.0.1:6379").await?;
//! let locks = LockClient::new(Arc::new(backend));
//!
//! let mut lease = locks
//!     .acquire("doc:coupon:SPRING", Duration::from_secs(5), Duration::from_secs(2))
//!     .await?;
//! let lost = lease.keep_alive(); // renew every ttl/3 until released
//! let fence = lease.token(); // send this with every write made under the lease
//! tokio::select! {
//!     () = lost.cancelled() => { /* stop: the store will refuse `fence` from now on */ }
//!     () = async { /* write with `fence` */ } => {}
//! }
//! lease.release().await?;
//!
//! // The next holder always gets a greater token.
//! let next = locks.try_acquire("doc:coupon:SPRING", Duration::from_secs(5)).await?;
//! assert!(next.token() > fence);
//! next.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Features
//! Only what you use is compiled:
//!
//! | feature | what it adds | pulls in |
//! |---|---|---|
//! | `redis` (default) | `backend::redis`: one Redis server | `redis` |
//! | `redis-cluster` | `backend::redis_cluster`: Redis Cluster | `redis/cluster-async` |
//! | `redlock` | `backend::redlock`: a majority of independent masters | `redis` |
//! | `postgres` | `backend::postgres`: a lease table | `sqlx` (Postgres) |
//! | `zookeeper` | `backend::zookeeper`: sequential ephemeral nodes | `zookeeper-client` |
//! | `prometheus` | `LockMetricFamilies`: instruments in your registry | `prometheus` |
//! | `testsuite` | `testsuite`: the contract a backend must pass | |
//!
//! ## Layout
//! - [`lease`] and [`fence`]: the pure rules (validity, drift, quorum,
//!   jitter, the fence check), property-tested, no I/O.
//! - [`LockBackend`]: the port a store implements, one atomic step per call.
//! - `backend::redis`, `backend::redis_cluster`, `backend::redlock`,
//!   `backend::postgres` and `backend::zookeeper`, each behind its feature:
//!   the adapters.
//! - [`LockClient`] and [`LeaseGuard`]: waiting, renewal, the lease-lost
//!   signal and metrics, written once for every backend.
//! - `testsuite` (feature `testsuite`): the contract every backend must pass.
//!
//! ## Guarantees and their limits
//! - **Mutual exclusion** holds while clocks advance at roughly the same rate
//!   (drift within 1% of the ttl plus 2 ms) and the holder notices expiry
//!   through [`LeaseGuard::lost`] before its validity ends. A process paused
//!   past its lease cannot notice: only the fence protects against it.
//! - **Fencing tokens** strictly increase per resource on a single Redis,
//!   including across restarts without persistence, under the clock
//!   condition stated in [`backend::redis`]. On Redis Cluster a failover can
//!   set a counter back, which the fenced store detects and
//!   [`LockClient::raise_floor`] repairs; see [`backend::redis_cluster`].
//!   Redlock tokens are weaker; see [`backend::redlock`].
//! - **Release and extend are owner-checked** in the store: they never touch
//!   another holder's lease and report [`LockError::Expired`] or
//!   [`LockError::HeldByOther`] instead.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod fence;
pub mod lease;

mod client;
mod error;
mod metrics;

#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use backend::{Attempt, LockBackend, OwnerId, ReleaseSubscription, Turn};
pub use client::{LeaseGuard, LockClient, LockConfig};
pub use error::{BackendSource, LockError, LockErrorKind};
pub use fence::{FenceCheck, FencingToken, StaleFence};
#[cfg(feature = "prometheus")]
pub use metrics::LockMetricFamilies;
pub use metrics::{DEFAULT_METRIC_PREFIX, LockMetrics};
