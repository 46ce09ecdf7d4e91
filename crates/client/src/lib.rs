//! A client for Turnstile's claim API, for the backends that call it on
//! behalf of shoppers.
//!
//! ```text
//! shopper -> your backend -> turnstile-client -> claim-api -> Kafka -> claim-worker -> Postgres
//! ```
//!
//! In a flash sale the API sheds load with `429` (and a failing dependency
//! answers `503`), each promising that the request recorded nothing and
//! saying in `Retry-After` when to come back. What a caller should do with
//! that is the same for every caller, so it lives here:
//!
//! - **Typed claims.** [`NewClaim`] is built from `turnstile-claim`'s
//!   parsed types, so its body is one the API accepts; [`Claim`] and
//!   [`Problem`] are its answers.
//! - **One idempotency key per claim.** [`PreparedClaim`] encodes the body
//!   once and keeps the caller's key, or a new UUID v7: every retry sends
//!   the same bytes under the same key, so however often it is sent, there
//!   is one claim.
//! - **Retries as asked** ([`RetryPolicy`]): a `429` or `503` is sent again
//!   after `Retry-After` times a jitter factor in `[0.5, 1.5)`, within a
//!   number of attempts and a deadline.
//! - **Its place in line.** A `429` may carry a `Turnstile-Ticket`; the
//!   retry sends it back, unread.
//! - **`Prefer: wait=N`** ([`Client::with_prefer_wait`]): the API answers
//!   with the decision when it comes within `N` seconds.
//! - **Client-side adaptive throttling** ([`throttle`]): while the API
//!   refuses, the client drops a share of its requests itself, as in
//!   Google's SRE book, and reports them as [`ErrorKind::Throttled`].
//!
//! Errors carry an [`ErrorKind`] that says whether the same call may
//! succeed later. The call loop is generic over a [`Transport`], so a
//! caller with connections of its own (the load generator) gets the same
//! behaviour; the `reqwest` feature (on by default) brings
//! [`ReqwestTransport`]. The decisions themselves ([`RetryPolicy`],
//! [`throttle::AdaptiveThrottle`]) are pure: time and randomness are passed
//! in.
//!
//! ```no_run
//! # #[cfg(feature = "reqwest")]
//! # async fn example() -> Result<(), turnstile_client::Error> {
//! use std::time::Duration;
//!
//! use turnstile_claim::{ResourceId, UserId};
//! use turnstile_client::{
//!     Client, ErrorKind, NewClaim, PreparedClaim, ReqwestTransport, RetryPolicy, ThrottleSettings,
//! };
//!
//! let client = Client::new(ReqwestTransport::new("http://127.0.0.1:8080")?)
//!     .with_api_key("tsk_...")?
//!     .with_retry(RetryPolicy::try_new(5, Duration::from_secs(20))?)
//!     .with_throttle(ThrottleSettings::default())
//!     .with_prefer_wait(Duration::from_secs(5));
//!
//! let code = ResourceId::parse("coupon", "SPRING").expect("a valid code");
//! let user = UserId::parse("u-42").expect("a valid user id");
//! // No key given: a UUID v7, kept for every retry of this claim.
//! let claim = PreparedClaim::new(&NewClaim::coupon(code, user), None);
//! match client.claim(&claim).await {
//!     Ok(answer) if answer.claim.is_granted() => println!("granted"),
//!     Ok(answer) if answer.claim.is_final() => println!("rejected: {:?}", answer.claim.reason),
//!     Ok(answer) => {
//!         // Accepted, not decided within the wait: read it again later.
//!         let later = client.get_claim(answer.claim.claim_id).await?;
//!         println!("{:?}", later.status);
//!     }
//!     Err(e) if e.kind().is_retryable() => println!("busy, try again later: {e}"),
//!     Err(e) if e.kind() == ErrorKind::Rejected => println!("bad request: {e}"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```

mod claim;
mod client;
mod error;
#[cfg(feature = "reqwest")]
mod reqwest_transport;
pub mod retry;
pub mod throttle;
mod transport;

pub use claim::{Claim, ClaimBatch, NewClaim, PreparedClaim, Problem};
pub use client::{
    AttemptEnd, AttemptOutcome, CallOptions, ClaimAnswer, Client, IDEMPOTENCY_KEY, Observer, TICKET, counts_as_accept,
};
pub use error::{Error, ErrorKind};
#[cfg(feature = "reqwest")]
pub use reqwest_transport::ReqwestTransport;
pub use retry::RetryPolicy;
pub use throttle::ThrottleSettings;
pub use transport::{Request, Response, Transport, TransportError};
