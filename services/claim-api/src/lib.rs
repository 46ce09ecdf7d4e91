//! `claim-api`: the producing side of the claim pipeline.
//!
//! Validates a claim, makes retries safe with idempotency keys (one claim per
//! tenant and key, however often and however concurrently it is sent),
//! publishes a `ClaimRequested` event keyed by resource and answers `202`.
//! It never decides a claim: `claim-worker` does, under a fenced lock. When it
//! cannot take more work (in-flight limit, Kafka's local queue, the workers'
//! lag) it answers `429` with `Retry-After` and does nothing; when a
//! dependency fails, its circuit breaker turns calls into fast `503`s.

mod accept;
mod admission;
mod app;
mod feeds;
pub mod keys;
mod metrics;
mod reads;
pub mod reference;
mod resilience;
mod routes;
pub mod settings;

// The HTTP edge shared with the other services.
use turnstile_http::{extract, problem};

pub use admission::{DEFAULT_ADMISSION_SLO, LimiterKind, MIN_LIMIT as MIN_ADMISSION_LIMIT};
pub use app::{ApiDoc, Application};
pub use settings::Settings;
