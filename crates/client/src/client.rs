//! The call loop: throttle, send, and on a refusal wait what `Retry-After`
//! asks (with jitter) and send the same request again, with the ticket the
//! refusal carried, until an answer, the last attempt or the deadline.

use std::{
    fmt,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use turnstile_claim::ClaimId;

use crate::{
    Claim, Error, PreparedClaim, Problem, Request, Response, RetryPolicy, Transport, TransportError,
    throttle::{AdaptiveThrottle, ThrottleSettings},
};

/// `Idempotency-Key`: one per claim, the same on every attempt.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Turnstile-Ticket`: the API's mark of a request's place in line, handed
/// out with a `429` and sent back, unread, with the retry.
pub static TICKET: HeaderName = HeaderName::from_static("turnstile-ticket");
/// The standard names a request borrows, as statics: a request holds
/// references to them for the length of an attempt.
static AUTHORIZATION: HeaderName = header::AUTHORIZATION;
static PREFER: HeaderName = HeaderName::from_static("prefer");

/// The path of `POST /v1/claims`.
const CLAIMS: &str = "/v1/claims";
/// The longest ticket carried; a longer one is not the API's.
const MAX_TICKET_BYTES: usize = 1024;
/// The longest `Prefer: wait` the API honours.
const MAX_PREFER_WAIT: Duration = Duration::from_secs(10);

/// Whether an answer with `status` (`None`: no answer) counts as an accept
/// for adaptive throttling.
///
/// Every HTTP answer but a `429` or a `503` is an accept: the server took
/// the request on and answered it, even with a rejection (`sold_out`), a
/// `4xx` for a bad request, or a `504` whose outcome is unknown. A `429`
/// (load shedding, or the caller's own rate) and a `503` (a dependency
/// failing) are refusals: sending more only costs the server more
/// refusals. No answer at all (a connection refused or reset, a timeout)
/// is not an accept either: a server that does not answer did not take the
/// request on, and more requests will not help it answer.
pub fn counts_as_accept(status: Option<StatusCode>) -> bool {
    status.is_some_and(|s| !is_refusal(s))
}

/// A `429` or `503`: the request recorded nothing, and the answer says when
/// to come back.
fn is_refusal(status: StatusCode) -> bool {
    matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
}

/// A claim the API accepted or decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimAnswer {
    /// The claim: `pending` for a `202`, decided for a `200`.
    pub claim: Claim,
    /// Requests sent, the answered one included.
    pub attempts: u32,
}

/// Per call: when the last retry may start. By default, the policy's
/// total after the call begins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOptions {
    deadline: Option<Instant>,
}

impl CallOptions {
    /// No retry starts at or after `deadline`.
    pub const fn until(deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
        }
    }
}

/// How one attempt ended.
#[derive(Debug)]
pub enum AttemptOutcome<'a> {
    /// An HTTP answer.
    Answered(&'a Response),
    /// No answer.
    Failed(&'a TransportError),
    /// Dropped by client-side throttling, not sent.
    Throttled {
        /// The probability it was dropped with.
        probability: f64,
    },
}

/// One attempt, as the observer sees it when it ends.
#[derive(Debug)]
pub struct AttemptEnd<'a> {
    /// 1 for the first request of the call.
    pub attempt: u32,
    /// When it was due: the call's start for the first attempt, the end of
    /// the wait for a retry. A late send counts from here.
    pub due: Instant,
    /// When it was answered, failed or dropped.
    pub ended: Instant,
    pub outcome: AttemptOutcome<'a>,
}

/// Watches each attempt of a call, and may keep one from being sent: a
/// load generator counts every answer and caps its requests in flight.
/// `()` watches nothing.
pub trait Observer: Send {
    /// Before attempt `attempt` (due at `due`) is throttled and sent;
    /// `false` ends the call with [`Error::Abandoned`].
    fn before_attempt(&mut self, attempt: u32, due: Instant) -> bool {
        let _ = (attempt, due);
        true
    }

    /// After each attempt, answered or not.
    fn after_attempt(&mut self, attempt: &AttemptEnd<'_>) {
        let _ = attempt;
    }
}

impl Observer for () {}

/// A client of the claim API over transport `T`. Shared by every task of a
/// process (`Arc<Client<_>>`, or a reference): its throttle counts all of
/// their requests, as the SRE book's per-backend throttle does.
pub struct Client<T> {
    transport: T,
    authorization: Option<HeaderValue>,
    policy: RetryPolicy,
    throttle: Option<Mutex<AdaptiveThrottle>>,
    prefer_wait: Option<HeaderValue>,
    /// Uniform draws in `[0, 1)`, for jitter and throttling.
    random: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl<T: fmt::Debug> fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.transport)
            // Sensitive: shows as `Sensitive`.
            .field("authorization", &self.authorization)
            .field("policy", &self.policy)
            .field("throttle", &self.throttle)
            .field("prefer_wait", &self.prefer_wait)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Client<T> {
    /// A client with the default retry policy, no throttling, no
    /// `Prefer: wait`, and no API key (see [`Self::with_api_key`]).
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            authorization: None,
            policy: RetryPolicy::default(),
            throttle: None,
            prefer_wait: None,
            random: Box::new(rand::random::<f64>),
        }
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn with_api_key(self, key: &str) -> Result<Self, Error> {
        let mut value = HeaderValue::try_from(format!("Bearer {key}"))
            .map_err(|_| Error::InvalidSetting("an api key must be visible ascii"))?;
        value.set_sensitive(true);
        Ok(self.with_authorization(value))
    }

    /// Sends `value` as `Authorization` with every request.
    pub fn with_authorization(mut self, mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        self.authorization = Some(value);
        self
    }

    /// Retries refusals as `policy` says.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Drops requests locally while the API refuses, as
    /// [`crate::throttle`] describes.
    pub fn with_throttle(mut self, settings: ThrottleSettings) -> Self {
        self.throttle = Some(Mutex::new(AdaptiveThrottle::new(settings)));
        self
    }

    /// Asks the API to wait up to `wait` (whole seconds, at most 10) for the
    /// claim's decision before answering (`Prefer: wait=N`), so that more
    /// answers are final `200`s rather than pending `202`s.
    pub fn with_prefer_wait(mut self, wait: Duration) -> Self {
        let secs = wait.min(MAX_PREFER_WAIT).as_secs();
        self.prefer_wait = HeaderValue::try_from(format!("wait={secs}")).ok();
        self
    }

    /// Draws jitter and throttling decisions from `random`, which returns
    /// values uniform in `[0, 1)`.
    pub fn with_random(mut self, random: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.random = Box::new(random);
        self
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The probability the next request is dropped by throttling (0 without).
    pub fn rejection_probability(&self) -> f64 {
        self.throttle
            .as_ref()
            .map_or(0.0, |t| lock(t).rejection_probability(now()))
    }

    /// Sends `claim` (`POST /v1/claims`), retrying refusals under its one
    /// idempotency key.
    pub async fn claim(&self, claim: &PreparedClaim) -> Result<ClaimAnswer, Error> {
        self.claim_with(claim, CallOptions::default(), &mut ()).await
    }

    /// [`Self::claim`], with a deadline of the caller's and an observer of
    /// each attempt.
    pub async fn claim_with(
        &self,
        claim: &PreparedClaim,
        options: CallOptions,
        observer: &mut impl Observer,
    ) -> Result<ClaimAnswer, Error> {
        let call = Call {
            method: Method::POST,
            path: CLAIMS,
            key: Some(claim.key_header()),
            body: Some(claim.body()),
            prefer_wait: true,
        };
        let (response, attempts) = self.call(call, options, observer).await?;
        match response.status {
            StatusCode::OK | StatusCode::ACCEPTED => Ok(ClaimAnswer {
                claim: decode(&response)?,
                attempts,
            }),
            _ => Err(failure(response)),
        }
    }

    /// Reads claim `id` (`GET /v1/claims/{claim_id}`), for instance to
    /// follow a `pending` claim to its decision.
    pub async fn get_claim(&self, id: ClaimId) -> Result<Claim, Error> {
        let path = format!("/v1/claims/{id}");
        let call = Call {
            method: Method::GET,
            path: &path,
            key: None,
            body: None,
            prefer_wait: false,
        };
        let (response, _) = self.call(call, CallOptions::default(), &mut ()).await?;
        match response.status {
            StatusCode::OK => decode(&response),
            _ => Err(failure(response)),
        }
    }

    /// Sends `call` until it is answered with something other than a
    /// refusal; returns that answer and the number of attempts.
    async fn call(
        &self,
        call: Call<'_>,
        options: CallOptions,
        observer: &mut impl Observer,
    ) -> Result<(Response, u32), Error> {
        let started = now();
        let deadline = options
            .deadline
            .unwrap_or_else(|| started.checked_add(self.policy.total()).unwrap_or(started));
        let mut due = started;
        let mut ticket: Option<HeaderValue> = None;
        let mut attempt = 1u32;
        loop {
            if !observer.before_attempt(attempt, due) {
                return Err(Error::Abandoned { attempt });
            }
            if let Some(throttle) = &self.throttle {
                let admitted = lock(throttle).admit(now(), (self.random)());
                if let Err(dropped) = admitted {
                    observer.after_attempt(&AttemptEnd {
                        attempt,
                        due,
                        ended: now(),
                        outcome: AttemptOutcome::Throttled {
                            probability: dropped.probability,
                        },
                    });
                    return Err(Error::Throttled {
                        probability: dropped.probability,
                    });
                }
            }
            let result = {
                let mut request = Request::new(call.method.clone(), call.path, call.body);
                request.header(&IDEMPOTENCY_KEY, call.key);
                request.header(&AUTHORIZATION, self.authorization.as_ref());
                request.header(&PREFER, self.prefer_wait.as_ref().filter(|_| call.prefer_wait));
                request.header(&TICKET, ticket.as_ref());
                self.transport.send(&request).await
            };
            let answered = now();
            let status = result.as_ref().ok().map(|r| r.status);
            if let Some(throttle) = &self.throttle {
                lock(throttle).answered(answered, counts_as_accept(status));
            }
            observer.after_attempt(&AttemptEnd {
                attempt,
                due,
                ended: answered,
                outcome: match &result {
                    Ok(response) => AttemptOutcome::Answered(response),
                    Err(error) => AttemptOutcome::Failed(error),
                },
            });
            let response = result.map_err(Error::Transport)?;
            if !is_refusal(response.status) {
                return Ok((response, attempt));
            }
            if response.status == StatusCode::TOO_MANY_REQUESTS
                && let Some(new) = response.headers.get(&TICKET).filter(|t| t.len() <= MAX_TICKET_BYTES)
            {
                ticket = Some(new.clone());
            }
            let retry_after = self.policy.retry_after(response.headers.get(header::RETRY_AFTER));
            let Some(next) = self
                .policy
                .next_attempt(attempt, answered, retry_after, (self.random)(), deadline)
            else {
                return Err(Error::Refused {
                    status: response.status,
                    attempts: attempt,
                    retry_after,
                    problem: Problem::parse(&response.body),
                });
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
            due = next;
            attempt += 1;
        }
    }
}

/// One operation, sent the same on every attempt.
struct Call<'a> {
    method: Method,
    path: &'a str,
    key: Option<&'a HeaderValue>,
    body: Option<&'a Bytes>,
    prefer_wait: bool,
}

/// The clock: tokio's, so that tests with a paused clock control it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Held for a few arithmetic operations that do not panic; a poisoned
    // lock still holds valid counts.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn decode(response: &Response) -> Result<Claim, Error> {
    serde_json::from_slice(&response.body).map_err(|source| Error::Decode {
        status: response.status,
        source,
    })
}

/// The error of an answer that is neither a success nor a refusal.
fn failure(response: Response) -> Error {
    let status = response.status;
    let problem = Problem::parse(&response.body);
    if status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        Error::OutcomeUnknown { status, problem }
    } else if status.is_client_error() {
        Error::Api { status, problem }
    } else {
        Error::UnexpectedStatus(status)
    }
}
