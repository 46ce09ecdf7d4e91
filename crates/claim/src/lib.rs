//! The claim domain, with no I/O: what a claim is, how a batch of claims on
//! one resource is decided, and what must always hold of the claims kept.
//!
//! `claim-api` parses requests into [`ClaimRequest`]s and publishes them as
//! [`ClaimRequested`] events; `claim-worker` feeds each batch for one resource
//! to [`decide_batch`] inside a fenced Postgres transaction (the adapter is
//! `turnstile-store`). [`access`] says who may do what: API keys, roles and
//! tenants. [`door`] says which claims the pipeline would reject, known
//! before they are recorded. [`audit`] keeps the invariants: nothing oversold, no user granted
//! twice, `remaining` equal to stock less what was granted. Everything here
//! is plain data and plain functions, unit- and property-tested.

pub mod access;
pub mod audit;
pub mod decision;
pub mod door;
pub mod events;
pub mod model;
pub mod request;

pub use decision::{BatchOutcome, Decision, PendingClaim, ResourceState, decide_batch};
pub use door::{DecisionFact, DoorKnowledge, DoorSize, decision_facts};
pub use events::{ClaimDecided, ClaimRequested};
pub use model::{
    ClaimId, ClaimStatus, IdempotencyKey, ParseError, Quantity, RejectReason, ResourceId, ResourceKey, ResourceKind,
    TenantId, UnixMillis, UserId,
};
pub use request::{ClaimRequest, ClaimRequestBody};
