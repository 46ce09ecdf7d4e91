//! The HTTP edge every Turnstile service shares, so clients (and `loadtest`)
//! see one contract whichever service answers: `claim-api` (the pipeline)
//! and `sql-baseline` (the `SELECT ... FOR UPDATE` comparison).
//!
//! - [`claims`]: a claim as clients see it, and its 200/202 answer.
//! - [`routes`]: the `/v1` route table.
//! - [`auth`]: API keys (`Authorization: Bearer`), the tenant they belong
//!   to, roles, and per-key and per-user token buckets.
//! - [`problem`]: errors as `application/problem+json` with stable `type`s;
//!   bad input is a 4xx, load shedding a 429 and a failing dependency a
//!   503, both with `Retry-After`.
//! - [`extract`]: the JSON body (content type, size, syntax and schema told
//!   apart) and the claim headers (`Idempotency-Key`,
//!   `Prefer: wait`), parsed into `turnstile-claim`'s types.
//! - [`resources`]: the coupon and SKU bodies and their validation.
//! - [`openapi`]: the errors each kind of operation answers, as the
//!   OpenAPI document lists them.
//! - [`listener`]: the services' TCP listener, with a deep accept queue.
//! - [`serve`]: serving a router with a header-read timeout, a connection
//!   cap and a graceful drain.

pub mod auth;
mod caller_settings;
pub mod claims;
pub mod extract;
pub mod listener;
pub mod openapi;
pub mod problem;
pub mod resources;
pub mod routes;
pub mod serve;
pub mod tls;

pub use caller_settings::CallerSettings;
