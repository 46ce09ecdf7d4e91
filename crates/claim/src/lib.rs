//! The claim domain: what a claim is, how a batch of claims on one resource
//! is decided, and how claims are stored.
//!
//! [`access`] says who may do what: API keys, roles and tenants.
//! `claim-api` parses requests into [`ClaimRequest`]s and publishes them as
//! [`ClaimRequested`] events; `claim-worker` feeds each batch for one resource
//! to [`decide_batch`] inside a fenced Postgres transaction ([`store`]). The
//! modules [`model`], [`request`], [`decision`] and [`events`] are pure (no
//! I/O) and property-tested; [`store`] is the one adapter, over sqlx.

pub mod access;
pub mod audit;
pub mod cache;
pub mod decision;
pub mod events;
pub mod model;
pub mod request;
pub mod store;

pub use decision::{BatchOutcome, Decision, PendingClaim, ResourceState, decide_batch};
pub use events::{ClaimDecided, ClaimRequested};
pub use model::{
    ClaimId, ClaimStatus, IdempotencyKey, ParseError, Quantity, RejectReason, ResourceId, ResourceKey, ResourceKind,
    TenantId, UnixMillis, UserId,
};
pub use request::{ClaimRequest, ClaimRequestBody};
