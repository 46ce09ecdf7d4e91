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
//! This crate holds the generic parts of that loop, which the claim worker
//! uses:
//! - [`batch`]: a partition's events split by resource, each in order;
//! - [`poison`]: events that keep failing the same way go to the
//!   dead-letter topic after a bounded number of attempts;
//! - [`consumption`]: the back-off that pauses the member while a
//!   dependency fails, and leaving the group with the stored offsets;
//! - [`subscription`]: keeping the group's subscription across topics that
//!   are deleted, or lost with a broker's data, and come back;
//! - [`waiting`]: whether the loop is waiting on the consumer, which the
//!   subscription keeper reads.
//!
//! It knows nothing of claims: `cargo tree -p turnstile-coordinator` has no
//! claim or store crate.

pub mod batch;
pub mod consumption;
pub mod poison;
pub mod subscription;
pub mod waiting;

pub use poison::{POISON_ATTEMPTS, PoisonCounter};
pub use waiting::Waiting;
