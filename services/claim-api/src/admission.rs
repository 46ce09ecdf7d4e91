//! Admission control at the edge of `POST /v1/claims`: who gets in is
//! decided before anything else is done for the request.
//!
//! A flash sale offers many times what the pipeline can decide. The excess
//! must cost next to nothing, or answering it takes the CPU that deciding
//! needs and goodput collapses: a refusal that parses the body, opens a span
//! and logs a line costs about as much as a claim. So [`admit_claims`], the outermost layer of
//! the router, looks at the method and path and nothing else:
//! - if the database holds more undecided claims than
//!   `TURNSTILE_MAX_PENDING_CLAIMS`, or every admission slot is taken, it
//!   answers `429` at once, from bytes built at compile time: no body read,
//!   no JSON parsed, no span, no log line (the refusals are counted in
//!   `turnstile_claims_throttled_total`). Kafka is not asked: a claim is
//!   accepted by its commit, whatever the broker does;
//! - otherwise it hands the request a slot ([`AdmissionTicket`]), which
//!   the handler gives back as soon as the claim is recorded (waiting for a
//!   decision with `Prefer: wait` holds no slot). A request that fails
//!   before that gives its slot back when it ends.
//!
//! How many slots there are is adapted by a concurrency limiter
//! ([`LimiterKind`]) from how long each admission took, between
//! [`MIN_LIMIT`] and `TURNSTILE_MAX_INFLIGHT`.
//!
//! The gate runs after authentication (and the key's own bucket), so it
//! knows the caller's tenant, and no tenant may hold more than its fair
//! share of the slots: the limit divided by the tenants active now, those
//! holding a slot or refused one within [`TENANT_ACTIVE_FOR`]
//! ([`fair_share`]). Alone, a tenant may use them all; when a second one
//! knocks, even if every slot is taken, the first is refused past half as
//! its claims finish (milliseconds), so the freed slots go to the second.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::Response,
};
use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_acc::{Aimd, Algorithm, Gradient2};
use turnstile_claim::{TenantId, access::Principal};

use crate::metrics::ApiMetrics;

/// Admission slower than this counts as congestion for the AIMD limiter,
/// unless configured.
///
/// At 5 000 claims/s offered on two cores, 100 ms keeps the end-to-end p99
/// about a quarter lower than 250 ms does, for about the same claims
/// decided per second (`docs/benchmarks.md`).
pub const DEFAULT_ADMISSION_SLO: Duration = Duration::from_millis(100);

/// The limit never falls below this: enough to fill a few group commits.
pub const MIN_LIMIT: usize = 8;

/// The route admission guards.
const CLAIMS_PATH: &str = "/v1/claims";

/// Which algorithm adapts the number of admission slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterKind {
    /// Additive increase while admissions answer within the objective
    /// (`TURNSTILE_ADMISSION_SLO`), a 10% cut when one does not.
    Aimd,
    /// Netflix's Gradient2: the limit follows the ratio of the long-term
    /// to the short-term admission time, so it reacts to latency *rising*,
    /// not to latency above a fixed objective.
    Gradient,
}

impl std::str::FromStr for LimiterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aimd" => Ok(Self::Aimd),
            "gradient" => Ok(Self::Gradient),
            _ => Err("expected aimd or gradient".to_owned()),
        }
    }
}

impl std::fmt::Display for LimiterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Aimd => "aimd",
            Self::Gradient => "gradient",
        })
    }
}

/// Why a claim was turned away at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedCause {
    /// Every admission slot is taken.
    Concurrency,
    /// The database holds too many claims waiting for a decision.
    PendingBacklog,
    /// The caller's tenant holds its fair share of the slots.
    TenantShare,
}

impl ShedCause {
    /// Every cause, in the order of [`ShedCause::index`].
    pub const ALL: [Self; 3] = [Self::Concurrency, Self::PendingBacklog, Self::TenantShare];

    /// The `cause` label of `turnstile_claims_throttled_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Concurrency => "concurrency",
            Self::PendingBacklog => "pending_backlog",
            Self::TenantShare => "tenant_share",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }

    /// Seconds the client should wait: the workers' backlog drains slower
    /// than a slot frees.
    pub const fn retry_after(self) -> u64 {
        match self {
            Self::PendingBacklog => 2,
            Self::Concurrency | Self::TenantShare => 1,
        }
    }

    /// [`ShedCause::retry_after`] as a header value, without formatting.
    const fn retry_after_header(self) -> &'static str {
        match self.retry_after() {
            2 => "2",
            _ => "1",
        }
    }

    /// The problem+json body, the same as `ApiError::Overloaded` renders
    /// (a test holds them equal), built at compile time.
    const fn body(self) -> &'static [u8] {
        macro_rules! overloaded {
            ($cause:literal) => {
                concat!(
                    r#"{"type":"/problems/overloaded","title":"Overloaded","status":429,"detail":"overloaded ("#,
                    $cause,
                    r#"); retry later"}"#
                )
                .as_bytes()
            };
        }
        match self {
            Self::Concurrency => overloaded!("concurrency"),
            Self::PendingBacklog => overloaded!("pending_backlog"),
            Self::TenantShare => overloaded!("tenant_share"),
        }
    }

    /// The whole answer: status, two static headers and a static body.
    pub fn response(self) -> Response {
        let mut response = Response::new(Body::from(Bytes::from_static(self.body())));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static(self.retry_after_header()));
        response
    }
}

/// The instruments a refusal touches, resolved once.
struct ShedInstruments {
    throttled: [IntCounter; ShedCause::ALL.len()],
    requests: IntCounter,
    duration: Histogram,
    limit: IntGauge,
    in_flight: IntGauge,
}

/// The limiter: the algorithm and the slots it sizes.
struct Controller {
    algorithm: Box<dyn Algorithm + Send>,
    /// Slots that exist (free or taken).
    slots: usize,
}

struct Gate {
    semaphore: Arc<Semaphore>,
    /// Active tenants: the slots each holds and when it last asked.
    tenants: Mutex<HashMap<TenantId, TenantLoad>>,
    controller: Mutex<Controller>,
    load: LoadGate,
    instruments: ShedInstruments,
}

/// The admission gate. Cheap to clone.
#[derive(Clone)]
pub struct AdmissionGate(Arc<Gate>);

impl std::fmt::Debug for AdmissionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionGate")
            .field("slots", &self.limit())
            .finish_non_exhaustive()
    }
}

/// Builds the limiter: `kind` adapting between [`MIN_LIMIT`] and
/// `max_inflight`, starting at a quarter of it; `slo` is AIMD's objective.
fn algorithm(kind: LimiterKind, max_inflight: usize, slo: Duration) -> Box<dyn Algorithm + Send> {
    let max = max_inflight.max(MIN_LIMIT);
    let initial = (max / 4).max(MIN_LIMIT);
    match kind {
        LimiterKind::Aimd => Box::new(
            Aimd::builder()
                .min_limit(MIN_LIMIT)
                .initial_limit(initial)
                .max_limit(max)
                .backoff_ratio(0.9)
                .timeout(slo)
                .build(),
        ),
        LimiterKind::Gradient => Box::new(
            Gradient2::builder()
                .min_limit(MIN_LIMIT)
                .initial_limit(initial)
                .max_limit(max)
                .rtt_tolerance(2.0)
                .build(),
        ),
    }
}

impl AdmissionGate {
    /// A gate in front of claim admission.
    pub fn new(kind: LimiterKind, max_inflight: usize, slo: Duration, load: LoadGate, metrics: &ApiMetrics) -> Self {
        let algorithm = algorithm(kind, max_inflight, slo);
        let slots = algorithm.max_concurrency();
        metrics.admission_limit.set(slots as i64);
        Self(Arc::new(Gate {
            semaphore: Arc::new(Semaphore::new(slots)),
            tenants: Mutex::new(HashMap::new()),
            controller: Mutex::new(Controller { algorithm, slots }),
            load,
            instruments: ShedInstruments {
                throttled: ShedCause::ALL.map(|c| metrics.throttled.with_label_values(&[c.as_str()])),
                requests: metrics.http_requests.with_label_values(&[CLAIMS_PATH, "POST", "4xx"]),
                duration: metrics.http_duration.with_label_values(&[CLAIMS_PATH, "POST"]),
                limit: metrics.admission_limit.clone(),
                in_flight: metrics.admission_in_flight.clone(),
            },
        }))
    }

    /// The number of admission slots now.
    pub fn limit(&self) -> usize {
        self.0.controller.lock().unwrap_or_else(PoisonError::into_inner).slots
    }

    /// A slot for a claim of `tenant`, or why there is none.
    fn enter(&self, tenant: TenantId, now: Instant) -> Result<AdmissionTicket, ShedCause> {
        self.0.load.check()?;
        let limit = self.limit();
        let mut tenants = self.0.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        // Tenants are few; forgetting the idle ones as we go keeps this cheap.
        tenants.retain(|_, load| load.held > 0 || now.duration_since(load.seen) < TENANT_ACTIVE_FOR);
        let load = match tenants.get_mut(&tenant) {
            Some(load) => load,
            None => tenants
                .entry(tenant.clone())
                .or_insert(TenantLoad { held: 0, seen: now }),
        };
        load.seen = now;
        let held = load.held;
        // Alone, a tenant is limited by the slots themselves.
        let active = tenants.len();
        if active > 1 && held >= fair_share(limit, active) {
            return Err(ShedCause::TenantShare);
        }
        let permit = Arc::clone(&self.0.semaphore)
            .try_acquire_owned()
            .map_err(|_| ShedCause::Concurrency)?;
        if let Some(load) = tenants.get_mut(&tenant) {
            load.held += 1;
        }
        drop(tenants);
        self.0.instruments.in_flight.inc();
        Ok(AdmissionTicket(Arc::new(Ticket {
            gate: self.clone(),
            tenant,
            permit: Mutex::new(Some(permit)),
            started: Instant::now(),
        })))
    }

    /// A slot of `tenant` is free again.
    fn leave(&self, tenant: &TenantId) {
        let mut tenants = self.0.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(load) = tenants.get_mut(tenant) {
            load.held = load.held.saturating_sub(1);
        }
        drop(tenants);
        self.0.instruments.in_flight.dec();
    }

    fn shed(&self, cause: ShedCause, started: Instant) -> Response {
        let instruments = &self.0.instruments;
        instruments.throttled[cause.index()].inc();
        instruments.requests.inc();
        instruments.duration.observe(started.elapsed().as_secs_f64());
        cause.response()
    }

    /// Feeds one admission's duration to the limiter and resizes the slots.
    fn record(&self, took: Duration, failed: bool) {
        let gate = &self.0;
        let mut controller = gate.controller.lock().unwrap_or_else(PoisonError::into_inner);
        let in_flight = controller.slots.saturating_sub(gate.semaphore.available_permits());
        controller.algorithm.update(took, in_flight, failed, false);
        let wanted = controller.algorithm.max_concurrency();
        if wanted > controller.slots {
            gate.semaphore.add_permits(wanted - controller.slots);
            controller.slots = wanted;
        } else if wanted < controller.slots {
            // Only free slots can be taken away now; the rest go on the
            // next update.
            controller.slots -= gate.semaphore.forget_permits(controller.slots - wanted);
        }
        gate.instruments.limit.set(controller.slots as i64);
    }
}

/// How long a tenant counts as active after it last asked for a slot.
pub const TENANT_ACTIVE_FOR: Duration = Duration::from_secs(1);

/// One tenant's use of the gate.
#[derive(Debug, Clone, Copy)]
struct TenantLoad {
    held: usize,
    seen: Instant,
}

/// The most slots one of `active` tenants may hold out of `limit`: an
/// equal share, rounded up, and never less than one.
pub fn fair_share(limit: usize, active: usize) -> usize {
    limit.div_ceil(active.max(1)).max(1)
}

struct Ticket {
    gate: AdmissionGate,
    tenant: TenantId,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    started: Instant,
}

/// One claim's admission slot, put in the request's extensions by
/// [`admit_claims`]. Dropped unused (bad input, a client gone), it frees
/// the slot and tells the limiter nothing.
#[derive(Clone)]
pub struct AdmissionTicket(Arc<Ticket>);

impl std::fmt::Debug for AdmissionTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionTicket").finish_non_exhaustive()
    }
}

impl AdmissionTicket {
    /// The claim is recorded (or refused): frees the slot and tells the
    /// limiter how long that took; `failed` says a dependency failed.
    pub fn complete(&self, failed: bool) {
        let permit = self.0.permit.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(permit) = permit {
            self.0.gate.record(self.0.started.elapsed(), failed);
            drop(permit);
            self.0.gate.leave(&self.0.tenant);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let permit = self.permit.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if permit.is_some() {
            self.gate.leave(&self.tenant);
        }
    }
}

/// The load check made before a claim gets a slot: the backlog of
/// undecided claims in the database, as last sampled.
#[derive(Debug, Clone)]
pub struct LoadGate {
    /// `TURNSTILE_MAX_PENDING_CLAIMS`.
    pub(crate) max_pending: i64,
    /// The last sample ([`crate::feeds::watch_pending`]); below 0 while
    /// unknown, which never refuses on its own.
    pub(crate) pending: Arc<std::sync::atomic::AtomicI64>,
}

impl LoadGate {
    /// Refuses while the backlog is at or above its bound.
    fn check(&self) -> Result<(), ShedCause> {
        let pending = self.pending.load(std::sync::atomic::Ordering::Relaxed);
        if pending >= 0 && pending >= self.max_pending {
            return Err(ShedCause::PendingBacklog);
        }
        Ok(())
    }
}

/// The layer right after authentication: `POST /v1/claims` gets a slot or
/// an immediate 429; every other request passes untouched.
pub async fn admit_claims(State(gate): State<AdmissionGate>, mut request: Request, next: Next) -> Response {
    if request.method() != Method::POST || request.uri().path() != CLAIMS_PATH {
        return next.run(request).await;
    }
    let started = Instant::now();
    // Authentication runs first and always sets the principal; without
    // one, the handler refuses the request.
    let Some(tenant) = request.extensions().get::<Principal>().map(|p| p.tenant.clone()) else {
        return next.run(request).await;
    };
    match gate.enter(tenant, started) {
        Ok(ticket) => {
            request.extensions_mut().insert(ticket);
            next.run(request).await
        }
        Err(cause) => gate.shed(cause, started),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::ApiError;
    use axum::response::IntoResponse;

    #[tokio::test]
    async fn a_shed_answer_is_the_overloaded_problem_byte_for_byte() {
        for cause in ShedCause::ALL {
            let built = ApiError::Overloaded {
                cause: cause.as_str(),
                retry_after: cause.retry_after(),
            }
            .into_response();
            let shed = cause.response();
            assert_eq!(shed.status(), built.status());
            assert_eq!(shed.headers(), built.headers(), "{cause:?}");
            let built = axum::body::to_bytes(built.into_body(), 1024).await.unwrap();
            let shed = axum::body::to_bytes(shed.into_body(), 1024).await.unwrap();
            assert_eq!(shed, built, "{cause:?}");
        }
    }

    #[test]
    fn a_fair_share_is_an_equal_part_rounded_up() {
        assert_eq!(fair_share(64, 1), 64, "alone, a tenant may use every slot");
        assert_eq!(fair_share(64, 2), 32);
        assert_eq!(fair_share(64, 3), 22);
        assert_eq!(fair_share(8, 100), 1, "never less than one");
        assert_eq!(fair_share(8, 0), 8);
    }

    #[test]
    fn limiter_names_round_trip() {
        for kind in [LimiterKind::Aimd, LimiterKind::Gradient] {
            assert_eq!(kind.to_string().parse::<LimiterKind>(), Ok(kind));
        }
        assert!("vegas".parse::<LimiterKind>().is_err());
    }
}
