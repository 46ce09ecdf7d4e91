//! Admission control at the edge of `POST /v1/claims`: who gets in, who
//! waits and who is sent away is decided before anything else is done for
//! the request.
//!
//! A flash sale offers many times what the pipeline can decide. The excess
//! must cost next to nothing, or answering it takes the CPU that deciding
//! needs and goodput collapses: a refusal that parses the body, opens a span
//! and logs a line costs about as much as a claim. So [`admit_claims`], the
//! step right after authentication, looks at the method, the path and two
//! headers (`Idempotency-Key`, `Turnstile-Ticket`) and nothing else:
//! - if the database holds more undecided claims than
//!   `TURNSTILE_MAX_PENDING_CLAIMS`, it answers `429` at once
//!   (`pending_backlog`). Kafka is not asked: a claim is accepted by its
//!   commit, whatever the broker does;
//! - if a slot is free and nobody waits, the request gets it
//!   ([`AdmissionTicket`]), which the handler gives back as soon as the
//!   claim is recorded (waiting for a decision with `Prefer: wait` holds no
//!   slot). A request that fails before that gives its slot back when it
//!   ends;
//! - otherwise it waits in a queue of at most `TURNSTILE_ADMISSION_QUEUE`
//!   for up to `TURNSTILE_ADMISSION_QUEUE_WAIT`. A freed slot goes to the
//!   waiter with the oldest first attempt, not to whoever asks next. A
//!   full queue, or a wait that runs out, is a `429` (`concurrency`).
//!
//! A `429` for load carries a ticket ([`crate::ticket`]): the claim's first
//! attempt, signed over the tenant and the idempotency key. The retry that
//! presents it waits in the queue with its first attempt's rank, ahead of
//! every claim that came later, so a shopper keeps their place in the
//! crowd however often they are sent away. `Retry-After` is the wait for
//! the tickets out before theirs, at the rate claims are let in
//! ([`crate::line`]). Refusals are counted in
//! `turnstile_claims_throttled_total` and cost no span, no log line and
//! no body read, except while the door knows a settled answer
//! ([`crate::door`]): then a claim without a slot goes on to its handler,
//! which reads it, and the door answers it without a slot if it can.
//!
//! How many slots there are is adapted by a concurrency limiter
//! ([`LimiterKind`]) from how long each admission took, between
//! [`MIN_LIMIT`] and `TURNSTILE_MAX_INFLIGHT`.
//!
//! The gate knows the caller's tenant, and no tenant may hold more than its
//! fair share of the slots and the places in the queue: the limit divided
//! by the tenants active now, those holding one or refused within
//! [`TENANT_ACTIVE_FOR`] ([`fair_share`]). Alone, a tenant may use them
//! all; when a second one knocks, even if every slot is taken, the first
//! is refused past half as its claims finish (milliseconds), so the freed
//! slots go to the second.

use std::{
    collections::{BinaryHeap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tower_acc::{Aimd, Algorithm, Gradient2};
use turnstile_claim::{TenantId, access::Principal};

use crate::{door::Door, line::Line, metrics::ApiMetrics, ticket::TicketKeys};

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

    /// The whole answer: status, the static body and its type, and
    /// `retry_after` seconds.
    pub fn response(self, retry_after: u64) -> Response {
        let mut response = Response::new(Body::from(Bytes::from_static(self.body())));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
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
    queued: IntGauge,
    in_line: IntGauge,
    tickets: [IntCounter; TicketOutcome::ALL.len()],
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
    queue: Mutex<Queue>,
    settings: QueueSettings,
    load: LoadGate,
    door: Door,
    instruments: ShedInstruments,
}

/// How claims wait for a slot, and the tickets of those sent away.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Claims waiting for a slot at most (`TURNSTILE_ADMISSION_QUEUE`);
    /// past it a claim is answered 429 with a ticket.
    pub capacity: usize,
    /// The longest a claim waits for a slot (`TURNSTILE_ADMISSION_QUEUE_WAIT`).
    pub max_wait: Duration,
    /// Sign and verify tickets (`TURNSTILE_TICKET_KEYS`).
    pub keys: TicketKeys,
    /// How long a ticket keeps its holder's place (`TURNSTILE_TICKET_TTL`).
    pub ticket_ttl: Duration,
}

/// Claims waiting for a slot, oldest first attempt first, and the line of
/// those sent away.
struct Queue {
    waiters: BinaryHeap<Waiter>,
    /// Breaks ties between equal first attempts: earlier in, earlier out.
    next_seq: u64,
    line: Line,
}

/// A claim waiting for a slot: the slot is sent to it.
struct Waiter {
    first_attempt_ms: u64,
    seq: u64,
    slot: oneshot::Sender<OwnedSemaphorePermit>,
}

impl Waiter {
    /// The heap is a max-heap: the oldest first attempt is the greatest.
    fn rank(&self) -> std::cmp::Reverse<(u64, u64)> {
        std::cmp::Reverse((self.first_attempt_ms, self.seq))
    }
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
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

/// Who asks for a slot: since when, and whether a ticket says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Unix ms of the claim's first attempt: now, or its ticket's.
    pub first_attempt_ms: u64,
    /// A valid ticket vouched for `first_attempt_ms`.
    pub ticketed: bool,
}

/// What the gate made of a claim.
#[derive(Debug)]
pub enum Entry {
    /// A slot: go on.
    Slot(AdmissionTicket),
    /// Every slot is taken: wait in the queue for one.
    Queued(QueuedClaim),
    /// Sent away.
    Refused(Refusal),
}

/// The limiter's controls: the algorithm and its bounds.
#[derive(Debug, Clone, Copy)]
pub struct LimiterSettings {
    pub kind: LimiterKind,
    /// `TURNSTILE_MAX_INFLIGHT`.
    pub max_inflight: usize,
    /// `TURNSTILE_ADMISSION_SLO`.
    pub slo: Duration,
}

impl AdmissionGate {
    /// A gate in front of claim admission; `door` says whether a refused
    /// claim is worth reading (the door may answer it).
    pub fn new(
        limiter: LimiterSettings,
        queue: QueueSettings,
        load: LoadGate,
        door: Door,
        metrics: &ApiMetrics,
    ) -> Self {
        let algorithm = algorithm(limiter.kind, limiter.max_inflight, limiter.slo);
        let slots = algorithm.max_concurrency();
        metrics.admission_limit.set(slots as i64);
        Self(Arc::new(Gate {
            semaphore: Arc::new(Semaphore::new(slots)),
            tenants: Mutex::new(HashMap::new()),
            controller: Mutex::new(Controller { algorithm, slots }),
            queue: Mutex::new(Queue {
                waiters: BinaryHeap::new(),
                next_seq: 0,
                line: Line::new(),
            }),
            settings: queue,
            load,
            door,
            instruments: ShedInstruments {
                throttled: ShedCause::ALL.map(|c| metrics.throttled.with_label_values(&[c.as_str()])),
                requests: metrics.http_requests.with_label_values(&[CLAIMS_PATH, "POST", "4xx"]),
                duration: metrics.http_duration.with_label_values(&[CLAIMS_PATH, "POST"]),
                limit: metrics.admission_limit.clone(),
                in_flight: metrics.admission_in_flight.clone(),
                queued: metrics.admission_queued.clone(),
                in_line: metrics.admission_line.clone(),
                tickets: TicketOutcome::ALL.map(|o| metrics.tickets.with_label_values(&[o.as_str()])),
            },
        }))
    }

    /// The number of admission slots now.
    pub fn limit(&self) -> usize {
        self.0.controller.lock().unwrap_or_else(PoisonError::into_inner).slots
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.0.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The arrival a request is: its ticket's first attempt when it
    /// presents a valid one for this tenant and key, else now.
    pub fn arrival(&self, tenant: &TenantId, key: Option<&str>, ticket: Option<&str>, now_ms: u64) -> Arrival {
        let newcomer = Arrival {
            first_attempt_ms: now_ms,
            ticketed: false,
        };
        let (Some(key), Some(ticket)) = (key, ticket) else {
            return newcomer;
        };
        let ttl_ms = u64::try_from(self.0.settings.ticket_ttl.as_millis()).unwrap_or(u64::MAX);
        match self
            .0
            .settings
            .keys
            .verify(ticket, tenant.as_str(), key, now_ms, ttl_ms)
        {
            Some(first_attempt_ms) => {
                self.0.instruments.tickets[TicketOutcome::Honoured as usize].inc();
                Arrival {
                    first_attempt_ms: first_attempt_ms.min(now_ms),
                    ticketed: true,
                }
            }
            None => {
                self.0.instruments.tickets[TicketOutcome::Ignored as usize].inc();
                newcomer
            }
        }
    }

    /// A slot for a claim of `tenant`, a place in the queue, or a refusal
    /// (with a ticket when the request has an idempotency key).
    pub fn enter(&self, tenant: TenantId, arrival: Arrival, key: Option<&str>, now: Instant) -> Entry {
        if let Err(cause) = self.0.load.check() {
            return Entry::Refused(self.refuse(cause, &tenant, arrival, key));
        }
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
            drop(tenants);
            return Entry::Refused(self.refuse(ShedCause::TenantShare, &tenant, arrival, key));
        }
        let mut queue = self.queue();
        // Nobody waits: the fast path. Otherwise the oldest waiter is first.
        if queue.waiters.is_empty()
            && let Ok(permit) = Arc::clone(&self.0.semaphore).try_acquire_owned()
        {
            queue
                .line
                .admitted(arrival.ticketed.then_some(arrival.first_attempt_ms), unix_ms());
            drop(queue);
            if let Some(load) = tenants.get_mut(&tenant) {
                load.held += 1;
            }
            drop(tenants);
            return Entry::Slot(self.slot(tenant, permit));
        }
        if queue.waiters.len() >= self.0.settings.capacity {
            // Waiters who gave up still sit in the heap until a slot meets them.
            queue.waiters.retain(|w| !w.slot.is_closed());
            if queue.waiters.len() >= self.0.settings.capacity {
                drop(queue);
                drop(tenants);
                return Entry::Refused(self.refuse(ShedCause::Concurrency, &tenant, arrival, key));
            }
        }
        // A waiter counts in its tenant's share: no tenant fills the queue.
        if let Some(load) = tenants.get_mut(&tenant) {
            load.held += 1;
        }
        drop(tenants);
        let (sender, slot) = oneshot::channel();
        let seq = queue.next_seq;
        queue.next_seq += 1;
        queue.waiters.push(Waiter {
            first_attempt_ms: arrival.first_attempt_ms,
            seq,
            slot: sender,
        });
        self.serve(&mut queue);
        self.0.instruments.queued.set(queue.waiters.len() as i64);
        drop(queue);
        Entry::Queued(QueuedClaim {
            gate: self.clone(),
            tenant,
            arrival,
            key: key.map(str::to_owned),
            slot: Some(slot),
        })
    }

    /// Hands free slots to the oldest waiters.
    fn serve(&self, queue: &mut Queue) {
        while !queue.waiters.is_empty() {
            let Ok(permit) = Arc::clone(&self.0.semaphore).try_acquire_owned() else {
                return;
            };
            self.hand(queue, permit);
        }
    }

    /// Gives `permit` to the oldest waiter still waiting, or back to the
    /// semaphore when there is none.
    fn hand(&self, queue: &mut Queue, mut permit: OwnedSemaphorePermit) {
        while let Some(waiter) = queue.waiters.pop() {
            match waiter.slot.send(permit) {
                Ok(()) => return,
                Err(back) => permit = back,
            }
        }
        drop(permit);
    }

    fn slot(&self, tenant: TenantId, permit: OwnedSemaphorePermit) -> AdmissionTicket {
        self.0.instruments.in_flight.inc();
        AdmissionTicket(Arc::new(Ticket {
            gate: self.clone(),
            tenant,
            permit: Mutex::new(Some(permit)),
            started: Instant::now(),
        }))
    }

    /// A refusal for `cause`: the claim's place in line, the wait that
    /// place means, and a ticket that keeps it.
    fn refuse(&self, cause: ShedCause, tenant: &TenantId, arrival: Arrival, key: Option<&str>) -> Refusal {
        let mut queue = self.queue();
        let place = queue.line.refuse(arrival.first_attempt_ms, arrival.ticketed, unix_ms());
        self.0
            .instruments
            .in_line
            .set(i64::try_from(queue.line.waiting()).unwrap_or(i64::MAX));
        drop(queue);
        let ticket = key.and_then(|key| {
            let signed = self
                .0
                .settings
                .keys
                .sign(tenant.as_str(), key, arrival.first_attempt_ms);
            HeaderValue::from_str(&signed).ok()
        });
        if ticket.is_some() && !arrival.ticketed {
            self.0.instruments.tickets[TicketOutcome::Issued as usize].inc();
        }
        self.0.instruments.throttled[cause.index()].inc();
        Refusal {
            cause,
            // A backlog drains slower than slots free: never less than the
            // cause's own wait.
            retry_after_secs: place.retry_after_secs.max(cause.retry_after()),
            ticket,
        }
    }

    /// A slot of `tenant` is free again: it goes to the oldest waiter.
    fn leave(&self, tenant: &TenantId, permit: OwnedSemaphorePermit) {
        {
            let mut queue = self.queue();
            self.hand(&mut queue, permit);
            self.0.instruments.queued.set(queue.waiters.len() as i64);
        }
        self.release_share(tenant);
        self.0.instruments.in_flight.dec();
    }

    /// `tenant` holds one slot or place fewer.
    fn release_share(&self, tenant: &TenantId) {
        let mut tenants = self.0.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(load) = tenants.get_mut(tenant) {
            load.held = load.held.saturating_sub(1);
        }
    }

    /// Answers a refusal in the middleware: no body read, no span.
    fn shed(&self, refusal: &Refusal, started: Instant) -> Response {
        let instruments = &self.0.instruments;
        instruments.requests.inc();
        instruments.duration.observe(started.elapsed().as_secs_f64());
        refusal.response()
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
        drop(controller);
        if gate.semaphore.available_permits() > 0 {
            self.serve(&mut self.queue());
        }
    }
}

/// Unix milliseconds now: tickets name wall-clock times, so that another
/// replica can order them.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// How long a tenant counts as active after it last asked for a slot.
pub const TENANT_ACTIVE_FOR: Duration = Duration::from_secs(1);

/// One tenant's use of the gate.
#[derive(Debug, Clone, Copy)]
struct TenantLoad {
    /// Slots held and places in the queue.
    held: usize,
    seen: Instant,
}

/// The most slots one of `active` tenants may hold out of `limit`: an
/// equal share, rounded up, and never less than one.
pub fn fair_share(limit: usize, active: usize) -> usize {
    limit.div_ceil(active.max(1)).max(1)
}

/// A claim waiting in the queue for a slot. Dropped, it leaves the queue
/// (a slot already sent to it goes to the next).
pub struct QueuedClaim {
    gate: AdmissionGate,
    tenant: TenantId,
    arrival: Arrival,
    key: Option<String>,
    slot: Option<oneshot::Receiver<OwnedSemaphorePermit>>,
}

impl std::fmt::Debug for QueuedClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedClaim")
            .field("arrival", &self.arrival)
            .finish_non_exhaustive()
    }
}

impl QueuedClaim {
    /// Waits for a slot, at most `TURNSTILE_ADMISSION_QUEUE_WAIT`; past it
    /// the claim is refused with a ticket for its first attempt.
    pub async fn wait(mut self) -> Result<AdmissionTicket, Refusal> {
        let Some(slot) = self.slot.as_mut() else {
            return Err(self.refusal());
        };
        match tokio::time::timeout(self.gate.0.settings.max_wait, slot).await {
            Ok(Ok(permit)) => {
                self.slot = None;
                let ticket = self.arrival.ticketed.then_some(self.arrival.first_attempt_ms);
                self.gate.queue().line.admitted(ticket, unix_ms());
                Ok(self.gate.slot(self.tenant.clone(), permit))
            }
            _ => Err(self.refusal()),
        }
    }

    fn refusal(&self) -> Refusal {
        self.gate
            .refuse(ShedCause::Concurrency, &self.tenant, self.arrival, self.key.as_deref())
    }
}

impl Drop for QueuedClaim {
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            // Given a slot: its ticket holds the tenant's share now.
            return;
        };
        slot.close();
        if let Ok(permit) = slot.try_recv() {
            let mut queue = self.gate.queue();
            self.gate.hand(&mut queue, permit);
        }
        self.gate.release_share(&self.tenant);
    }
}

/// A claim sent away: why, when to come back, and the ticket that keeps
/// its place.
#[derive(Debug, Clone)]
pub struct Refusal {
    cause: ShedCause,
    retry_after_secs: u64,
    ticket: Option<HeaderValue>,
}

impl Refusal {
    /// The `429`: the static problem body of its cause, `Retry-After`
    /// from the claim's place in line, and `Turnstile-Ticket`.
    pub fn response(&self) -> Response {
        let mut response = self.cause.response(self.retry_after_secs);
        if let Some(ticket) = &self.ticket {
            response.headers_mut().insert(TICKET_HEADER, ticket.clone());
        }
        response
    }
}

/// `Turnstile-Ticket`, on a refusal and on the retry that presents it.
pub const TICKET_HEADER: HeaderName = HeaderName::from_static("turnstile-ticket");

/// What became of tickets, the `outcome` label of `turnstile_tickets_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketOutcome {
    /// Handed out with a refusal.
    Issued,
    /// Presented and valid: the claim kept its first attempt's place.
    Honoured,
    /// Presented and not valid (forged, expired, transplanted): ignored.
    Ignored,
}

impl TicketOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Self; 3] = [Self::Issued, Self::Honoured, Self::Ignored];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Honoured => "honoured",
            Self::Ignored => "ignored",
        }
    }
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
            self.0.gate.leave(&self.0.tenant, permit);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let permit = self.permit.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(permit) = permit {
            self.gate.leave(&self.tenant, permit);
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

/// What admission made of a claim, for its handler: a slot, or (when the
/// door may answer it without one) a place in the queue or a refusal,
/// which the handler turns into a wait or a `429` if the door cannot.
#[derive(Debug, Clone)]
pub struct Admission(Arc<Mutex<Option<Entry>>>);

impl Admission {
    fn new(entry: Entry) -> Self {
        Self(Arc::new(Mutex::new(Some(entry))))
    }

    /// The entry; `None` if taken before.
    pub fn take(&self) -> Option<Entry> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Right after authentication: `POST /v1/claims` gets a slot, a place in
/// the queue, or an immediate 429 with a ticket; every other request passes
/// untouched. A claim without a slot is passed on to its handler only while
/// the door knows a settled answer for some claims: otherwise its refusal
/// is returned (`Err`) to be sent from here, unread.
pub async fn admit_claims(gate: &AdmissionGate, mut request: Request) -> Result<Request, Response> {
    if request.method() != Method::POST || request.uri().path() != CLAIMS_PATH {
        return Ok(request);
    }
    let started = Instant::now();
    // Authentication runs first and always sets the principal; without
    // one, the handler refuses the request.
    let Some(tenant) = request.extensions().get::<Principal>().map(|p| p.tenant.clone()) else {
        return Ok(request);
    };
    let headers = request.headers();
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| (1..=255).contains(&k.len()));
    let ticket = headers.get(&TICKET_HEADER).and_then(|v| v.to_str().ok());
    let arrival = gate.arrival(&tenant, key, ticket, unix_ms());
    let entry = gate.enter(tenant, arrival, key, started);
    let entry = match entry {
        Entry::Slot(_) => entry,
        _ if gate.0.door.may_answer() => entry,
        Entry::Queued(queued) => match queued.wait().await {
            Ok(slot) => Entry::Slot(slot),
            Err(refusal) => return Err(gate.shed(&refusal, started)),
        },
        Entry::Refused(refusal) => return Err(gate.shed(&refusal, started)),
    };
    request.extensions_mut().insert(Admission::new(entry));
    Ok(request)
}

/// The idempotency key's header, read here before the handler parses it.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

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
            let shed = cause.response(cause.retry_after());
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

    fn gate(queue: usize, max_wait: Duration, max_pending: i64) -> AdmissionGate {
        let metrics = ApiMetrics::register(&prometheus::Registry::new()).unwrap();
        let door = Door::new(metrics.door_answers.clone(), metrics.door_known.clone());
        AdmissionGate::new(
            LimiterSettings {
                kind: LimiterKind::Aimd,
                max_inflight: MIN_LIMIT,
                slo: DEFAULT_ADMISSION_SLO,
            },
            QueueSettings {
                capacity: queue,
                max_wait,
                keys: TicketKeys::parse("k1=0123456789abcdef0123456789abcdef").unwrap(),
                ticket_ttl: Duration::from_secs(120),
            },
            LoadGate {
                max_pending,
                pending: Arc::new(std::sync::atomic::AtomicI64::new(1)),
            },
            door,
            &metrics,
        )
    }

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn newcomer() -> Arrival {
        Arrival {
            first_attempt_ms: unix_ms(),
            ticketed: false,
        }
    }

    /// Takes every slot of a fresh gate.
    fn fill(gate: &AdmissionGate) -> Vec<AdmissionTicket> {
        (0..gate.limit())
            .map(|_| match gate.enter(tenant(), newcomer(), None, Instant::now()) {
                Entry::Slot(slot) => slot,
                other => panic!("a free slot expected, got {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_oldest_first_attempt_not_the_first_to_ask() {
        let gate = gate(16, Duration::from_secs(5), i64::MAX);
        let mut slots = fill(&gate);
        let Entry::Queued(newer) = gate.enter(tenant(), newcomer(), Some("newer"), Instant::now()) else {
            panic!("the newcomer waits");
        };
        let older = Arrival {
            first_attempt_ms: unix_ms() - 5_000,
            ticketed: true,
        };
        let Entry::Queued(older) = gate.enter(tenant(), older, Some("older"), Instant::now()) else {
            panic!("the ticket holder waits");
        };
        let mut newer = tokio::spawn(newer.wait());
        let older = tokio::spawn(older.wait());
        slots.pop().unwrap().complete(false);
        let older = older.await.unwrap().expect("the older first attempt gets the slot");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut newer)
                .await
                .is_err(),
            "the newer one still waits"
        );
        older.complete(false);
        assert!(newer.await.unwrap().is_ok(), "then the newer one");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_with_a_ticket_for_the_first_attempt() {
        let gate = gate(1, Duration::from_secs(5), i64::MAX);
        let _slots = fill(&gate);
        let Entry::Queued(_waiting) = gate.enter(tenant(), newcomer(), None, Instant::now()) else {
            panic!("one place in the queue");
        };
        let arrival = newcomer();
        let Entry::Refused(refusal) = gate.enter(tenant(), arrival, Some("order-9"), Instant::now()) else {
            panic!("the queue is full");
        };
        let response = refusal.response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let ticket = response.headers()[&TICKET_HEADER].to_str().unwrap();
        // Presented again, by the same tenant and key, it is the first attempt.
        let back = gate.arrival(&tenant(), Some("order-9"), Some(ticket), unix_ms() + 2_000);
        assert_eq!(
            back,
            Arrival {
                first_attempt_ms: arrival.first_attempt_ms,
                ticketed: true
            }
        );
        // Under another key it is nothing.
        let stolen = gate.arrival(&tenant(), Some("order-10"), Some(ticket), unix_ms());
        assert!(!stolen.ticketed);
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_is_a_refusal_and_frees_its_place() {
        let gate = gate(1, Duration::from_millis(20), i64::MAX);
        let mut slots = fill(&gate);
        let Entry::Queued(waiting) = gate.enter(tenant(), newcomer(), Some("k"), Instant::now()) else {
            panic!("a place in the queue");
        };
        let refusal = waiting.wait().await.expect_err("no slot within 20 ms");
        assert!(refusal.ticket.is_some());
        // The place is free again, and a freed slot is not lost to it.
        let Entry::Queued(next) = gate.enter(tenant(), newcomer(), None, Instant::now()) else {
            panic!("the place is free");
        };
        slots.pop().unwrap().complete(false);
        assert!(next.wait().await.is_ok());
    }

    #[tokio::test]
    async fn a_backlog_refuses_before_any_slot_is_taken() {
        let gate = gate(16, Duration::from_secs(1), 0);
        let Entry::Refused(refusal) = gate.enter(tenant(), newcomer(), Some("k"), Instant::now()) else {
            panic!("refused for the backlog");
        };
        assert_eq!(refusal.cause, ShedCause::PendingBacklog);
        assert_eq!(gate.0.semaphore.available_permits(), gate.limit());
    }

    #[test]
    fn limiter_names_round_trip() {
        for kind in [LimiterKind::Aimd, LimiterKind::Gradient] {
            assert_eq!(kind.to_string().parse::<LimiterKind>(), Ok(kind));
        }
        assert!("vegas".parse::<LimiterKind>().is_err());
    }
}
