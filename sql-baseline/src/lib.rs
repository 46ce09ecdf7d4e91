//! `sql-baseline`: the flash sale the way many teams run it today, as the
//! yardstick the claim pipeline has to beat on a hot key.
//!
//! No Kafka, no lock service, no worker: `POST /v1/claims` decides the claim
//! inside the request, in one Postgres transaction, and answers `200` with
//! the final decision. The transaction records the claim row, which is also
//! its idempotency record, as `claim-api` does (with
//! [`turnstile_store::reserve_claim`], the one-claim form), then takes
//! `SELECT ... FOR UPDATE` on the resource row, decides with the same pure
//! [`turnstile_claim::decide_batch`] (a batch of one), writes the decision
//! and the new stock, and commits. The row lock is the whole concurrency
//! story: every claim on a coupon waits for the one before it to commit, so
//! a hot coupon is decided strictly one transaction at a time.
//!
//! It writes the same tables as the pipeline (`resources` and `claims`,
//! migrated with [`turnstile_store::migrate`]), so
//! `loadtest flash-sale --mode sql-for-update` audits it with the same
//! queries: nothing oversold, no double grant, nothing undecided, stock equal
//! to total minus grants.
//!
//! **Fences.** There is no lease, so there is no lock-issued fencing token.
//! Each decision instead moves `resources.fence` to `fence + 1` while the row
//! lock is held, and the claim records that value. The row lock is then the
//! "lease" and the counter its token: per resource, fences must strictly
//! increase in commit order, which is what the audit's `fence_regressions`
//! checks. It stays a meaningful check rather than a constant 0: it would
//! catch a decision written without holding the row lock (the `FOR UPDATE`
//! dropped, or a second writer bypassing it). The counter starts from the
//! resource's current fence, so it never moves backwards even on a resource
//! the pipeline wrote before.
//!
//! Over the HTTP surface it matches `claim-api` where the two overlap: the
//! same bodies, the same `Idempotency-Key` and `X-Tenant-Id` rules, the same
//! claim view and the same `application/problem+json` types for bad input.
//! Its only admission control is a fixed cap on claims in progress
//! (`TURNSTILE_MAX_INFLIGHT`): beyond it, `429` with `Retry-After` before any
//! work, as `claim-api` sheds. Without the cap, a flash sale queues
//! thousands of requests on the connection pool, and the pool thrashes
//! (acquires that time out drop the connections they just opened) until
//! nothing is served at all; that would measure a pool pathology rather
//! than the row lock. A connection not had within the acquire timeout is a
//! `503`.

mod app;
mod routes;
pub mod settings;

// The HTTP edge shared with the other services.
use turnstile_http::{extract, problem};
pub mod store;

pub use app::Application;
pub use settings::Settings;
