//! The coordinator: what any per-resource event handler needs around it to
//! be correct under a crowd and a hostile world, apart from the handler.
//!
//! Events are keyed by resource on a Kafka topic, so one resource's events
//! share a partition and arrive in order. A consumer group spreads the
//! partitions over the members; each member handles a partition's events
//! in order, a resource's at a time under a lease whose fencing token every
//! effect carries (`turnstile-lock`), so that a member that lost its
//! partition and goes on as a zombie has its writes refused.
//!
//! A user supplies a [`Handler`]: how a message becomes an event, the
//! resource an event is about, and how one resource's events are applied
//! with the lease's token. Optionally an [`Announcer`] (events published
//! after the effects, at least once) and a [`SweepSource`] (records that
//! must be handled even if their event never arrives). The crate provides
//! the rest:
//! - [`consume`] and [`batch`]: micro-batches, each partition's in order,
//!   split by resource;
//! - [`lease`]: the lease per resource, kept alive, its token handed to
//!   the handler, and the fence repaired (`raise_floor`) after a
//!   stale-token refusal;
//! - [`poison`] and [`dead_letter`]: transient failures rewind the
//!   partition and back off ([`consumption`]); others, after
//!   [`POISON_ATTEMPTS`], send the events to the dead-letter topic;
//! - [`settle`]: offsets stored only after the effects and the
//!   announcements;
//! - [`subscription`] and [`waiting`]: the member stays subscribed across
//!   topics that are deleted, or lost with a broker's data, and come back;
//! - [`sweep`]: one sweeper at a time across the group;
//! - [`metrics`]: the instruments, under the names the claim worker's
//!   dashboards and alerts read;
//! - [`postgres`] (feature `postgres`): the fence check a transaction
//!   starts with, and the sweeper's turn as an advisory lock.
//!
//! docs/coordinator.md says what it guarantees and what a handler must do.
//! It knows nothing of claims: `cargo tree -p turnstile-coordinator` has no
//! claim or store crate.

pub mod batch;
pub mod consume;
pub mod consumption;
mod coordinator;
pub mod dead_letter;
pub mod handler;
pub mod lease;
pub mod metrics;
mod pipeline;
pub mod poison;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod settle;
pub mod subscription;
pub mod sweep;
pub mod waiting;

pub use coordinator::{Coordinator, CoordinatorParts, JoinError, Membership, NoSweep};
pub use dead_letter::DeadLetters;
pub use handler::{AfterEffects, Fenced, FencingToken, Handled, Handler, HandlerError, Origin, Refusal, Source, Work};
pub use lease::{HandleFailure, LeaseTerms, Leaseholder};
pub use metrics::CoordinatorMetrics;
pub use poison::{POISON_ATTEMPTS, PoisonCounter};
pub use settle::{Announcer, SettleClock, Silent};
pub use sweep::{Stale, SweepMetrics, SweepSource, SweepTerms, SweepTurn};
pub use waiting::Waiting;
