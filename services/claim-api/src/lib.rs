//! `claim-api`: the producing side of the claim pipeline.
//!
//! Validates a claim, makes retries safe with idempotency keys (one claim per
//! tenant and key, however often and however concurrently it is sent),
//! records it in Postgres, answers `202`, and publishes a `ClaimRequested`
//! event keyed by resource. The commit is the acceptance: Kafka is the fast
//! path to a worker, and a claim whose event is lost is decided by the
//! worker's sweeper. It never decides a claim: `claim-worker` does, under a
//! fenced lock; a claim whose rejection earlier decisions already settled
//! (sold out, the user at the limit) is answered at the door and not
//! recorded (`door`). When it cannot take more work (in-flight limit, a tenant's
//! share, too many undecided claims in the database) it answers `429` with
//! `Retry-After` and records nothing; when Postgres fails, its circuit
//! breaker turns calls into fast `503`s.

mod accept;
mod admission;
mod app;
mod door;
mod feeds;
pub mod keys;
mod line;
mod metrics;
mod reads;
pub mod reference;
mod resilience;
mod routes;
pub mod settings;
pub mod ticket;

// The HTTP edge shared with the other services.
use turnstile_http::{extract, problem};

pub use admission::{DEFAULT_ADMISSION_SLO, LimiterKind, MIN_LIMIT as MIN_ADMISSION_LIMIT};
pub use app::{ApiDoc, Application};
pub use settings::Settings;
