//! The trust boundary: who is calling ([`KeyRing`], [`authenticate`]), what
//! they may do ([`require`]), and how fast ([`CallerLimits`]).
//!
//! Every `/v1` request carries `Authorization: Bearer <key>`. The key ring is
//! a snapshot of the keys in force, refreshed from Postgres every
//! `refresh` (at most 5 s), so checking a key costs a SHA-256 and a hash
//! lookup, never a round trip, and a revoked key stops working within one
//! refresh. A key missing from the snapshot (one created a moment ago, or a
//! guess) waits for the next refresh, which starts at most
//! [`MISS_REFRESH_SPACING`] after the previous one: a new key works at once,
//! and a flood of guesses costs the database ten small reads a second.
//!
//! Refreshes are single-flight: one runs at a time, and callers that queued
//! behind it share its result, success or failure. After a failure the next
//! refresh waits a back-off ([`REFRESH_BACKOFF`], doubling), and unknown
//! keys are answered `401` at once meanwhile; no lookup waits longer than
//! [`MISS_WAIT`]. So while Postgres is down or frozen, the known keys keep
//! working from the snapshot and guesses cost nothing.
//!
//! The tenant is the key's. `X-Tenant-Id` is accepted only when it names the
//! key's tenant (403 otherwise), so a client that still sends it keeps
//! working and none can use it to reach another tenant.

use crate::tls::ClientCertificate;
use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use tokio_util::sync::CancellationToken;
use turnstile_claim::{
    TenantId, UserId,
    access::{ApiKey, KeyDigest, KeySource, Operation, Principal},
};
use uuid::Uuid;

use crate::problem::{ApiError, AuthFailure};

/// The longest a revoked key may keep working.
pub const MAX_KEY_REFRESH: Duration = Duration::from_secs(5);

/// The least time between two refreshes caused by unknown keys.
pub const MISS_REFRESH_SPACING: Duration = Duration::from_millis(100);

/// After a failed refresh, how long the next one waits: the first bound,
/// doubling on each failure up to the second.
pub const REFRESH_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// The longest an unknown key waits for a refresh before it is answered.
pub const MISS_WAIT: Duration = Duration::from_secs(1);

type Snapshot = Arc<HashMap<KeyDigest, Principal>>;

/// The keys in force could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// Reading them failed (the store's own error is its source, so this
    /// crate's API does not depend on it).
    #[error("reading the api keys failed")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A recent refresh failed; the next waits for its back-off.
    #[error("a recent refresh of the api keys failed; backing off")]
    BackingOff,
}

async fn keys_in_force(source: &dyn KeySource) -> Result<Vec<(KeyDigest, Principal)>, KeyRingError> {
    source.keys_in_force().await.map_err(KeyRingError::Read)
}

/// The refreshes so far, behind the single-flight lock.
struct Refreshes {
    /// When the newest successful refresh started.
    last_start: Instant,
    /// When the newest failure ended, while failures continue.
    failed_at: Option<Instant>,
    /// How long after `failed_at` the next refresh may start.
    backoff: Duration,
}

/// The keys in force, as of the last refresh. Cheap to clone.
#[derive(Clone)]
pub struct KeyRing(Arc<RingInner>);

struct RingInner {
    source: Box<dyn KeySource>,
    snapshot: RwLock<Snapshot>,
    /// Held while refreshing, so one refresh runs at a time and the callers
    /// that queued behind it reuse its result.
    refreshing: tokio::sync::Mutex<Refreshes>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("keys", &self.snapshot().len()).finish()
    }
}

impl KeyRing {
    /// Loads the keys in force from `source`.
    pub async fn load(source: impl KeySource) -> Result<Self, KeyRingError> {
        let started = Instant::now();
        let keys = keys_in_force(&source).await?;
        Ok(Self(Arc::new(RingInner {
            source: Box::new(source),
            snapshot: RwLock::new(Arc::new(keys.into_iter().collect())),
            refreshing: tokio::sync::Mutex::new(Refreshes {
                last_start: started,
                failed_at: None,
                backoff: REFRESH_BACKOFF.0,
            }),
        })))
    }

    /// Refreshes every `every` (capped at [`MAX_KEY_REFRESH`]) until `stop`.
    /// A failed refresh keeps the previous snapshot and is logged: while
    /// Postgres is down nothing can be claimed anyway, and reads keep
    /// working for the keys that were valid.
    pub fn refresh_every(&self, every: Duration, stop: CancellationToken) {
        let ring = self.clone();
        let every = every.min(MAX_KEY_REFRESH);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match ring.refresh_since(Instant::now(), Duration::ZERO).await {
                    Ok(()) | Err(KeyRingError::BackingOff) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, cause = ?e, "refreshing the API keys failed; using the previous set");
                    }
                }
            }
        });
    }

    fn snapshot(&self) -> Snapshot {
        // A poisoned lock still holds a complete snapshot (it is replaced
        // whole), so its value is safe to use.
        Arc::clone(&self.0.snapshot.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Ensures a refresh that started at or after `since` has completed,
    /// starting one no sooner than `spacing` after the previous start.
    /// A refresh that failed after `since` (the caller queued behind it),
    /// or within its back-off, is not tried again: the caller gets
    /// [`KeyRingError::BackingOff`] at once.
    async fn refresh_since(&self, since: Instant, spacing: Duration) -> Result<(), KeyRingError> {
        let mut refreshes = self.0.refreshing.lock().await;
        if refreshes.last_start >= since {
            return Ok(());
        }
        if let Some(failed_at) = refreshes.failed_at
            && (failed_at >= since || Instant::now() < failed_at + refreshes.backoff)
        {
            return Err(KeyRingError::BackingOff);
        }
        let earliest = refreshes.last_start + spacing;
        tokio::time::sleep_until(earliest.into()).await;
        let started = Instant::now();
        match keys_in_force(self.0.source.as_ref()).await {
            Ok(keys) => {
                *self.0.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys.into_iter().collect());
                refreshes.last_start = started;
                refreshes.failed_at = None;
                refreshes.backoff = REFRESH_BACKOFF.0;
                Ok(())
            }
            Err(e) => {
                if refreshes.failed_at.is_some() {
                    refreshes.backoff = (refreshes.backoff * 2).min(REFRESH_BACKOFF.1);
                }
                refreshes.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Who the key with `digest` stands for, if it is in force.
    pub async fn principal(&self, digest: KeyDigest) -> Option<Principal> {
        let arrived = Instant::now();
        if let Some(found) = self.snapshot().get(&digest) {
            return Some(found.clone());
        }
        // A task of its own, so a refresh the caller stops waiting for
        // still finishes and records its result for the callers after it.
        let ring = self.clone();
        let refresh = tokio::spawn(async move { ring.refresh_since(arrived, MISS_REFRESH_SPACING).await });
        match tokio::time::timeout(MISS_WAIT, refresh).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::debug!(error = %e, "refreshing the API keys for an unknown key failed"),
            Ok(Err(_)) | Err(_) => {
                tracing::debug!("no refresh of the API keys within the wait; the key counts as unknown");
            }
        }
        self.snapshot().get(&digest).cloned()
    }
}

/// Per-caller token buckets (GCRA, from `governor`), checked before any
/// database work: one per API key on every `/v1` request, and one per
/// (tenant, user) on claims. Either answers 429 with `Retry-After`
/// without touching the other callers' budgets.
#[derive(Clone)]
pub struct CallerLimits(Arc<LimitsInner>);

struct LimitsInner {
    per_key: Option<DefaultKeyedRateLimiter<Uuid>>,
    /// Keyed by a 64-bit hash of (tenant, user): no allocation per claim,
    /// and two users sharing a bucket by collision is as rare as it is
    /// harmless.
    per_user: Option<DefaultKeyedRateLimiter<u64>>,
    /// The hash's keys, random per process so no caller can aim for a
    /// collision.
    user_hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for CallerLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerLimits")
            .field("per_key", &self.0.per_key.is_some())
            .field("per_user", &self.0.per_user.is_some())
            .finish()
    }
}

/// A bucket: `per_second` tokens a second, holding at most `burst`. A rate
/// of 0 turns the bucket off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second; 0 is unlimited.
    pub per_second: u32,
    /// Requests that may arrive at once.
    pub burst: u32,
}

impl RateLimit {
    /// No bucket at all.
    pub const UNLIMITED: Self = Self {
        per_second: 0,
        burst: 0,
    };

    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

/// How often the buckets of idle callers are dropped.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(10);

impl CallerLimits {
    /// Buckets with these limits; idle callers' buckets are dropped every
    /// few seconds until `stop`, so cycling through user ids cannot grow
    /// memory without bound.
    pub fn new(per_key: RateLimit, per_user: RateLimit, stop: CancellationToken) -> Self {
        let limits = Self(Arc::new(LimitsInner {
            per_key: per_key.quota().map(DefaultKeyedRateLimiter::keyed),
            per_user: per_user.quota().map(DefaultKeyedRateLimiter::keyed),
            user_hasher: std::collections::hash_map::RandomState::new(),
        }));
        let weak = Arc::downgrade(&limits.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FORGET_IDLE_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                for limiter in inner.per_key.iter() {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
                for limiter in inner.per_user.iter() {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
        });
        limits
    }

    /// Limits that never refuse.
    pub fn unlimited() -> Self {
        Self(Arc::new(LimitsInner {
            per_key: None,
            per_user: None,
            user_hasher: std::collections::hash_map::RandomState::new(),
        }))
    }

    /// Takes a token from the caller's key bucket.
    pub fn check_key(&self, principal: &Principal) -> Result<(), ApiError> {
        match &self.0.per_key {
            None => Ok(()),
            Some(limiter) => limiter.check_key(&principal.key_id).map_err(|not_until| {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                rate_limited("key", wait)
            }),
        }
    }

    /// Takes a token from the bucket of `user` in `tenant`.
    pub fn check_user(&self, tenant: &TenantId, user: &UserId) -> Result<(), ApiError> {
        match &self.0.per_user {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(&std::hash::BuildHasher::hash_one(&self.0.user_hasher, (tenant, user)))
                .map_err(|not_until| {
                    let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                    rate_limited("user", wait)
                }),
        }
    }
}

fn rate_limited(scope: &'static str, wait: Duration) -> ApiError {
    ApiError::RateLimited {
        scope,
        // Whole seconds, rounded up: a client that waits as told succeeds.
        retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
    }
}

/// What [`authenticate`] needs.
#[derive(Clone, Debug)]
pub struct Gatekeeper {
    /// The keys in force.
    pub keys: KeyRing,
    /// The per-caller buckets.
    pub limits: CallerLimits,
    /// Counts refusals by reason (`missing`, `malformed`, `unknown`,
    /// `tenant_mismatch`, `certificate_tenant`, `rate_key`), when set.
    pub refusals: Option<prometheus::IntCounterVec>,
    /// Whether a client certificate's common name is its holder's tenant
    /// (`TURNSTILE_TLS_CLIENT_TENANT`): the API key must then belong to it.
    pub certificate_names_tenant: bool,
}

impl Gatekeeper {
    fn refuse(&self, reason: &'static str, error: ApiError) -> Response {
        if let Some(refusals) = &self.refusals {
            refusals.with_label_values(&[reason]).inc();
        }
        error.into_response()
    }
}

/// The digest of the key a request presents, if it presents a well-formed one.
fn bearer_key(headers: &HeaderMap) -> Result<KeyDigest, AuthFailure> {
    let value = headers.get(header::AUTHORIZATION).ok_or(AuthFailure::Missing)?;
    let text = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    ApiKey::digest_of(token.trim()).ok_or(AuthFailure::Malformed)
}

/// Middleware for the `/v1` routes: 401 without a key in force, 403 when
/// `X-Tenant-Id` names another tenant, 429 past the key's bucket; otherwise
/// the [`Principal`] goes on as a request extension.
pub async fn authenticate(State(gate): State<Gatekeeper>, request: Request, next: Next) -> Response {
    match authenticate_request(&gate, request).await {
        Ok(request) => next.run(request).await,
        Err(refusal) => refusal,
    }
}

/// What [`authenticate`] does, for a service that runs it inside a layer of
/// its own: the request with its [`Principal`], or the refusal to send.
pub async fn authenticate_request(gate: &Gatekeeper, mut request: Request) -> Result<Request, Response> {
    let digest = match bearer_key(request.headers()) {
        Ok(digest) => digest,
        Err(failure) => return Err(gate.refuse(failure.as_str(), ApiError::Unauthenticated(failure))),
    };
    let Some(principal) = gate.keys.principal(digest).await else {
        return Err(gate.refuse("unknown", ApiError::Unauthenticated(AuthFailure::Unknown)));
    };
    if let Some(named) = request.headers().get("x-tenant-id")
        && named.as_bytes() != principal.tenant.as_str().as_bytes()
    {
        return Err(gate.refuse(
            "tenant_mismatch",
            ApiError::Forbidden("X-Tenant-Id names a tenant this API key does not belong to".to_owned()),
        ));
    }
    if gate.certificate_names_tenant {
        let named = request
            .extensions()
            .get::<ClientCertificate>()
            .and_then(|certificate| certificate.common_name.as_deref());
        if named != Some(principal.tenant.as_str()) {
            return Err(gate.refuse(
                "certificate_tenant",
                ApiError::Forbidden("the client certificate names another tenant than this API key's".to_owned()),
            ));
        }
    }
    if let Err(limited) = gate.limits.check_key(&principal) {
        return Err(gate.refuse("rate_key", limited));
    }
    request.extensions_mut().insert(principal);
    Ok(request)
}

/// The request's principal, if it may perform `operation` (403 otherwise).
pub fn require(principal: &Principal, operation: Operation) -> Result<(), ApiError> {
    if principal.may(operation) {
        Ok(())
    } else {
        let what = match operation {
            Operation::ManageResources => "creating coupons and SKUs needs an admin key",
            Operation::PostClaims => "posting claims needs a claim key",
            Operation::Read => "reading needs a key of this tenant",
        };
        Err(ApiError::Forbidden(what.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_keys_are_parsed_strictly() {
        let key = ApiKey::generate();
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_key(&headers), Err(AuthFailure::Missing));
        for (value, expected) in [
            (format!("Bearer {}", key.reveal()), Ok(())),
            (format!("bearer {}", key.reveal()), Ok(())),
            (format!("Basic {}", key.reveal()), Err(AuthFailure::Malformed)),
            (key.reveal().to_owned(), Err(AuthFailure::Malformed)),
            ("Bearer tsk_short".to_owned(), Err(AuthFailure::Malformed)),
            ("Bearer".to_owned(), Err(AuthFailure::Malformed)),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
            assert_eq!(bearer_key(&headers).map(|_| ()), expected, "{value}");
        }
    }

    /// A source like a frozen Postgres behind a pool: each read hangs until
    /// the pool gives up (2 s), then fails. Counts the reads.
    struct FrozenSource(Arc<std::sync::atomic::AtomicUsize>);

    impl KeySource for FrozenSource {
        fn keys_in_force(
            &self,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = turnstile_claim::access::KeysInForce> + Send + '_>>
        {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Err("pool timed out".into())
            })
        }
    }

    /// A ring with no keys whose source never answers in time, and the
    /// count of reads it made.
    async fn ring_on_a_frozen_database() -> (KeyRing, Arc<std::sync::atomic::AtomicUsize>) {
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ring = KeyRing(Arc::new(RingInner {
            source: Box::new(FrozenSource(Arc::clone(&connections))),
            snapshot: RwLock::new(Arc::new(HashMap::new())),
            refreshing: tokio::sync::Mutex::new(Refreshes {
                last_start: Instant::now(),
                failed_at: None,
                backoff: REFRESH_BACKOFF.0,
            }),
        }));
        (ring, connections)
    }

    #[tokio::test]
    async fn unknown_keys_are_answered_within_the_wait_and_at_once_after_a_failed_refresh() {
        let (ring, connections) = ring_on_a_frozen_database().await;
        let guess = || ApiKey::digest_of(ApiKey::generate().reveal()).unwrap();

        // While the one refresh hangs, every guess waits at most MISS_WAIT.
        let started = Instant::now();
        let mut lookups = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let ring = ring.clone();
            let digest = guess();
            lookups.spawn(async move { ring.principal(digest).await });
        }
        while let Some(answer) = lookups.join_next().await {
            assert!(answer.unwrap().is_none());
        }
        let waited = started.elapsed();
        assert!(waited < MISS_WAIT + Duration::from_millis(500), "{waited:?}");

        // The refresh fails when the pool gives up; a caller queued behind
        // it shares the failure instead of starting another.
        let queued = ring.refresh_since(Instant::now(), Duration::ZERO).await;
        assert!(matches!(queued, Err(KeyRingError::BackingOff)), "{queued:?}");

        // In the back-off, guesses are answered at once, with no round trip.
        let started = Instant::now();
        for _ in 0..50 {
            assert!(ring.principal(guess()).await.is_none());
        }
        let waited = started.elapsed();
        assert!(waited < Duration::from_millis(200), "{waited:?}");
        let taken = connections.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(taken, 1, "one refresh for 71 unknown keys");
    }

    #[tokio::test]
    async fn the_user_bucket_refuses_past_its_burst_with_a_retry_after() {
        let limits = CallerLimits::new(
            RateLimit {
                per_second: 0,
                burst: 0,
            },
            RateLimit {
                per_second: 1,
                burst: 2,
            },
            CancellationToken::new(),
        );
        let tenant = TenantId::parse("t").unwrap();
        let (alice, bob) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
        assert!(limits.check_user(&tenant, &alice).is_ok());
        assert!(limits.check_user(&tenant, &alice).is_ok());
        match limits.check_user(&tenant, &alice) {
            Err(ApiError::RateLimited { scope, retry_after }) => {
                assert_eq!(scope, "user");
                assert_eq!(retry_after, 1);
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(
            limits.check_user(&tenant, &bob).is_ok(),
            "another user has its own bucket"
        );
        let other_tenant = TenantId::parse("u").unwrap();
        assert!(
            limits.check_user(&other_tenant, &alice).is_ok(),
            "and so does the same name elsewhere"
        );
    }
}
