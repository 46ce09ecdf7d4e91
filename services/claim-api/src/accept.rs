//! Group commit for claim admission: record, commit, answer, then publish.
//!
//! The Postgres row is the claim. Every accepted claim's pending row (which
//! is also its idempotency record) is committed before anything else
//! happens, and only then is its `ClaimRequested` handed to Kafka, to tell
//! the partition's owner to decide it. So:
//! - a `202` is sent only after the commit: the claim exists and will be
//!   decided;
//! - a `429` or `503` is sent only when this request recorded nothing; an
//!   earlier accepted request with the same key stands. A failure that may
//!   hide a commit (the connection died while the statement ran: Postgres
//!   restarting, a network fault) is never answered so: recording is
//!   idempotent, so it is tried again, with back-off, until it answers or
//!   `TURNSTILE_OUTCOME_DEADLINE` passes; claims the lost attempt committed
//!   come back as replays of themselves, answered `202` and published then.
//!   Past the deadline the answer is `504 outcome-unknown`: retry with the
//!   same key;
//! - an event always names a row that exists. A publish that fails after
//!   the commit leaves a pending claim, which the worker's sweeper decides
//!   once it has been pending for the sweep window
//!   (`TURNSTILE_SWEEP_AFTER`); the answer is still `202`.
//!
//! Kafka is the fast path, not the record, so nothing here waits for it.
//! The commit is the acceptance: the events are queued after it, and their
//! acknowledgements are awaited by a task of their own, which counts what
//! Kafka did not take (`turnstile_claims_unpublished_total`); a batch's
//! slot is held for a fixed pace ([`BATCH_PACE`]), never for Kafka. A
//! broker that is down therefore slows decisions (the sweeper decides
//! those claims) but not acceptance. What bounds acceptance is the
//! database's backlog: admission refuses new claims while
//! `TURNSTILE_MAX_PENDING_CLAIMS` or more wait for a decision
//! ([`crate::feeds::watch_pending`]).
//!
//! One commit per claim puts a WAL flush on every request; under a flash
//! sale that is the API's ceiling. So requests queue here, and whoever is
//! free takes everything waiting: one autocommit statement records the
//! whole batch ([`store::reserve_claims`]). At low load a batch is one
//! request and nothing waits; under load batches grow by themselves, with
//! no linger.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::join_all;
use rdkafka::producer::DeliveryFuture;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use turnstile_bus::{KafkaHealth, Publisher, Topics, TraceHeaders};
use turnstile_claim::{ClaimId, ClaimRequested, RejectReason};
use turnstile_store::{self as store, Admission, ClaimRow, Reserved, StoreError};

use crate::{metrics::ApiMetrics, problem::ApiError, reads::Reads, resilience::Breaker};

/// The least and the most a retry of an ambiguous commit waits.
const RESOLVE_BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(1));

/// Most claims recorded by one statement.
const MAX_BATCH: usize = 256;

/// The least time a batch holds its slot, from its start: a busy API then
/// writes at most `TURNSTILE_ACCEPT_BATCHES` statements per pace, and the
/// claims arriving meanwhile gather into larger batches. It stands in for
/// the wait on Kafka's acknowledgements that once held the slot (about the
/// producer's 5 ms linger plus the broker's answer), which kept batches
/// about three times larger at 5 000 claims/s than releasing the slot at
/// the commit, with a better end-to-end p99; unlike that wait it is the
/// same whatever the broker does. At low load slots are free and nothing
/// waits for it; the answers are sent at the commit either way.
const BATCH_PACE: Duration = Duration::from_millis(10);

/// One claim to admit: the part of `POST /v1/claims` that does work and is
/// therefore under the adaptive concurrency limit (waiting for a decision
/// is not: it costs nothing but a parked task).
pub struct AcceptJob {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) event: ClaimRequested,
    pub(crate) correlation_id: String,
    /// The door's answer ([`crate::door`]): given, unless the key is
    /// already recorded.
    pub(crate) door: Option<RejectReason>,
    /// Admitted without a slot, for the door to answer: if the door cannot
    /// (its key's read failed), nothing is recorded and the answer is 503.
    /// A key already recorded is replayed as usual.
    pub(crate) door_only: bool,
}

impl std::fmt::Debug for AcceptJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptJob")
            .field("claim_id", &self.event.claim_id)
            .finish_non_exhaustive()
    }
}

/// What admission did.
#[derive(Debug)]
pub enum Admitted {
    /// A new claim, committed (and handed to Kafka).
    Accepted,
    /// The key was used before with this request; the claim as stored now.
    Replayed(Option<ClaimRow>),
    /// Answered at the door: rejected for this reason, nothing recorded.
    AtTheDoor(RejectReason),
}

/// What a batch needs to record and publish claims.
#[derive(Clone)]
pub struct AcceptDeps {
    pub(crate) write_pool: PgPool,
    pub(crate) reads: Reads,
    pub(crate) publisher: Publisher,
    /// Whether a broker answers: while none does, events are not queued.
    pub(crate) kafka: KafkaHealth,
    pub(crate) topics: Topics,
    pub(crate) postgres: Breaker,
    pub(crate) metrics: ApiMetrics,
    /// How long an ambiguous commit is retried before the answer is
    /// `504 outcome-unknown` (`TURNSTILE_OUTCOME_DEADLINE`).
    pub(crate) outcome_deadline: Duration,
}

struct Pending {
    job: AcceptJob,
    /// The request's span: the batch's spans hang off it.
    span: Span,
    reply: oneshot::Sender<Result<Admitted, ApiError>>,
}

/// The queue in front of the batches. Cheap to clone.
#[derive(Clone)]
pub struct AcceptQueue {
    jobs: mpsc::Sender<Pending>,
}

impl AcceptQueue {
    /// Starts the batcher: at most `concurrent_batches` statements at once
    /// (each holds one write connection), until `stop` fires.
    pub fn start(deps: AcceptDeps, concurrent_batches: usize, stop: CancellationToken) -> Self {
        // Admission's concurrency limit bounds what waits here.
        let (jobs, mut queue) = mpsc::channel::<Pending>(MAX_BATCH * 16);
        let slots = Arc::new(Semaphore::new(concurrent_batches.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let first = tokio::select! {
                    () = stop.cancelled() => return,
                    first = queue.recv() => match first {
                        Some(first) => first,
                        None => return,
                    },
                };
                let mut batch = Vec::with_capacity(MAX_BATCH.min(queue.len() + 1));
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let deps = deps.clone();
                // Boxed where it is made: a batch's future is kilobytes, and
                // spawning moves a future by value several times (measured:
                // those copies were a third of the API's instructions per
                // door answer with small batches).
                tokio::spawn(Box::pin(async move {
                    let started = tokio::time::Instant::now();
                    run_batch(&deps, batch).await;
                    // Paced: see BATCH_PACE.
                    tokio::time::sleep_until(started + BATCH_PACE).await;
                    drop(slot);
                }));
            }
        });
        Self { jobs }
    }

    /// Queues `job` and waits for its batch to commit.
    pub async fn admit(self, job: AcceptJob) -> Result<Admitted, ApiError> {
        let (pending, answer) = pending(job);
        if self.jobs.send(pending).await.is_err() {
            return Err(ApiError::Internal);
        }
        answer.await.unwrap_or(Err(ApiError::Internal))
    }

    /// Queues `job` if there is room, else answers 429: for a claim that
    /// holds no admission slot, which must not wait for one here either.
    pub async fn try_admit(&self, job: AcceptJob) -> Result<Admitted, ApiError> {
        let (pending, answer) = pending(job);
        if self.jobs.try_send(pending).is_err() {
            return Err(ApiError::Overloaded {
                cause: "concurrency",
                retry_after: 1,
            });
        }
        answer.await.unwrap_or(Err(ApiError::Internal))
    }
}

/// `job` as the batcher takes it, under the caller's span, and where its
/// answer will come.
fn pending(job: AcceptJob) -> (Pending, oneshot::Receiver<Result<Admitted, ApiError>>) {
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        job,
        span: Span::current(),
        reply,
    };
    (pending, answer)
}

async fn run_batch(deps: &AcceptDeps, batch: Vec<Pending>) {
    let batch = answer_at_the_door(deps, batch).await;
    if batch.is_empty() {
        return;
    }
    deps.metrics.accept_batch_size.observe(batch.len() as f64);
    let span = tracing::info_span!(
        parent: &batch[0].span,
        "db",
        otel.name = "reserve_claims claims",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "reserve_claims",
        db.collection.name = "claims",
        db.operation.batch.size = batch.len(),
    );
    let recorded = record(deps, &batch).instrument(span).await;
    let deliveries = publish_new(deps, &batch, &recorded);
    let mut replays = Vec::new();
    for (pending, answer) in batch.into_iter().zip(recorded.answers) {
        let answer = match answer {
            Ok(Reserved::New) => {
                deps.metrics.accepted.inc();
                Ok(Admitted::Accepted)
            }
            Ok(Reserved::Replay(claim_id)) => {
                deps.metrics.replays.inc();
                replays.push((pending.reply, claim_id));
                continue;
            }
            Ok(Reserved::KeyReused) => Err(ApiError::IdempotencyKeyReused),
            Ok(Reserved::UnknownResource) => Err(ApiError::UnknownResource(pending.job.event.resource.local_name())),
            Err(e) => Err(e),
        };
        let _ = pending.reply.send(answer);
    }
    if !replays.is_empty() {
        // Outside the batch's slot: the slot is for recording new claims.
        tokio::spawn(answer_replays(deps.reads.clone(), replays));
    }
    if !deliveries.is_empty() {
        // Nobody waits for Kafka: not the clients, not the batch's slot.
        tokio::spawn(settle_deliveries(deps.metrics.clone(), deliveries));
    }
}

/// Answers the jobs the door can answer whose keys are not recorded, after
/// one read of those keys' claims (a key that is recorded is replayed, or
/// refused as reused, by recording as usual); returns the jobs left to
/// record. A failed read answers nothing at the door.
async fn answer_at_the_door(deps: &AcceptDeps, batch: Vec<Pending>) -> Vec<Pending> {
    let asked: Vec<ClaimId> = batch
        .iter()
        .filter(|p| p.job.door.is_some())
        .map(|p| p.job.event.claim_id)
        .collect();
    if asked.is_empty() {
        return batch;
    }
    let Ok(recorded) = deps.reads.claims(&asked).await else {
        // Not known to be free: a claim admitted only for the door is
        // answered as if the database were down; nothing was recorded.
        let (door_only, left): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| p.job.door_only);
        for pending in door_only {
            let _ = pending.reply.send(Err(deps.postgres.unavailable()));
        }
        return left;
    };
    let recorded: std::collections::HashSet<ClaimId> = recorded.iter().map(|row| row.claim_id).collect();
    let mut left = Vec::with_capacity(batch.len());
    for pending in batch {
        match pending.job.door {
            Some(reason) if !recorded.contains(&pending.job.event.claim_id) => {
                let _ = pending.reply.send(Ok(Admitted::AtTheDoor(reason)));
            }
            _ => left.push(pending),
        }
    }
    left
}

/// Answers a batch's replays with their claims as stored now, read in one
/// statement. A failed read answers without the row: the handler then
/// reports the claim as pending, which a later read corrects.
async fn answer_replays(reads: Reads, replays: Vec<(oneshot::Sender<Result<Admitted, ApiError>>, ClaimId)>) {
    let ids: Vec<ClaimId> = replays.iter().map(|(_, id)| *id).collect();
    let rows: HashMap<ClaimId, ClaimRow> = reads
        .claims(&ids)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|row| (row.claim_id, row))
        .collect();
    for (reply, claim_id) in replays {
        let _ = reply.send(Ok(Admitted::Replayed(rows.get(&claim_id).cloned())));
    }
}

/// What [`record`] did for a batch.
struct Recorded {
    /// One answer per job.
    answers: Vec<Result<Reserved, ApiError>>,
    /// An attempt failed in a way that may have committed it, and a later
    /// one answered: its claims came back as replays, and may have no
    /// event yet.
    resolved: bool,
}

/// Why an attempt to record a batch failed.
enum AttemptError {
    /// No connection: nothing was sent.
    NoConnection(StoreError),
    /// The statement failed.
    Statement(StoreError),
}

/// One attempt: a write connection and [`store::reserve_claims`].
async fn attempt(deps: &AcceptDeps, admissions: &[Admission<'_>]) -> Result<Vec<Reserved>, AttemptError> {
    let mut conn = deps
        .write_pool
        .acquire()
        .await
        .map_err(|e| AttemptError::NoConnection(e.into()))?;
    let reserved = store::reserve_claims(&mut conn, admissions)
        .await
        .map_err(AttemptError::Statement)?;
    // Fault injection for the tests: the commit happened, its answer is lost.
    fail::fail_point!("reserve-answer-lost", |_| Err(AttemptError::Statement(
        StoreError::Unavailable(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()))
    )));
    Ok(reserved)
}

/// Records the batch in one autocommit statement. Returns one answer per
/// job; an error answer is one of: nothing was recorded for that job (`503`,
/// `500`), or the outcome could not be known in time (`504`).
async fn record(deps: &AcceptDeps, batch: &[Pending]) -> Recorded {
    let fail_all = |e: ApiError| Recorded {
        answers: batch.iter().map(|_| Err(e.clone())).collect(),
        resolved: false,
    };
    if let Err(e) = deps.postgres.permit() {
        return fail_all(e);
    }
    let admissions: Vec<Admission<'_>> = batch
        .iter()
        .map(|p| Admission {
            fingerprint: &p.job.fingerprint,
            event: &p.job.event,
        })
        .collect();
    let deadline = Instant::now() + deps.outcome_deadline;
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(RESOLVE_BACKOFF.0)
        .with_max_delay(RESOLVE_BACKOFF.1)
        .without_max_times()
        .with_jitter()
        .build();
    // Whether some attempt may have committed: from then on the batch is
    // never refused, only resolved (or, past the deadline, unknown).
    let mut ambiguous = false;
    let mut retries = 0u32;
    loop {
        let error = match attempt(deps, &admissions).await {
            Ok(reserved) => {
                deps.postgres.record(true);
                if ambiguous {
                    tracing::info!(retries, "an ambiguous commit was resolved by recording again");
                }
                return Recorded {
                    answers: reserved.into_iter().map(Ok).collect(),
                    resolved: ambiguous,
                };
            }
            Err(AttemptError::NoConnection(e)) => e,
            Err(AttemptError::Statement(e)) => {
                if e.may_have_committed() && !ambiguous {
                    tracing::warn!(error = %e, cause = ?e, batch = batch.len(), "the commit's answer was lost; resolving it");
                    ambiguous = true;
                }
                e
            }
        };
        if !ambiguous {
            // Nothing was committed: the answer may say so.
            deps.postgres.record(!error.is_transient());
            if error.is_transient() {
                return fail_all(deps.postgres.unavailable());
            }
            tracing::error!(error = %error, cause = ?error, "reserving claims failed");
            return fail_all(ApiError::Internal);
        }
        // The last attempt is made at the deadline itself: the whole
        // deadline is spent trying to learn the outcome.
        let now = Instant::now();
        let wait = backoff
            .next()
            .unwrap_or(RESOLVE_BACKOFF.1)
            .min(deadline.saturating_duration_since(now));
        if now >= deadline {
            deps.postgres.record(false);
            tracing::error!(error = %error, cause = ?error, retries, batch = batch.len(),
                "the outcome of a commit is unknown; answering outcome-unknown");
            return fail_all(ApiError::OutcomeUnknown { retry_after: 1 });
        }
        tracing::debug!(error = %error, retries, wait_ms = wait.as_millis() as u64, "recording again to resolve a commit");
        retries += 1;
        tokio::time::sleep(wait).await;
    }
}

/// Hands the batch's new claims, committed already, to Kafka; after an
/// ambiguous commit, also its replays, which may be the claims the lost
/// attempt committed (a duplicate event is harmless: the worker finds the
/// claim decided).
fn publish_new(deps: &AcceptDeps, batch: &[Pending], recorded: &Recorded) -> Vec<DeliveryFuture> {
    batch
        .iter()
        .zip(&recorded.answers)
        .filter(|(_, answer)| match answer {
            Ok(Reserved::New) => true,
            Ok(Reserved::Replay(_)) => recorded.resolved,
            _ => false,
        })
        .filter_map(|(pending, _)| publish(deps, pending))
        .collect()
}

/// Awaits the acknowledgements of a batch's events; a claim Kafka did not
/// take is counted and left to the sweeper.
async fn settle_deliveries(metrics: ApiMetrics, deliveries: Vec<DeliveryFuture>) {
    let started = Instant::now();
    for delivered in join_all(deliveries).await {
        metrics.produce_duration.observe(started.elapsed().as_secs_f64());
        match delivered {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                tracing::debug!(error = %e, "ClaimRequested not acknowledged; the sweeper will decide its claim");
                metrics.unpublished.inc();
            }
            // The producer was dropped: the API is stopping.
            Err(_) => metrics.unpublished.inc(),
        }
    }
}

/// Queues one claim's event, in a producer span under its request's span
/// whose context travels in the message headers (W3C `traceparent`).
/// `None` when Kafka did not take it.
fn publish(deps: &AcceptDeps, pending: &Pending) -> Option<DeliveryFuture> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let event = &pending.job.event;
    let topic = deps.topics.requested.as_str();
    let span = tracing::info_span!(
        parent: &pending.span,
        "publish",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = topic,
        messaging.kafka.message.key = %event.resource,
    );
    let failpoint: Option<()> = (|| {
        fail::fail_point!("publish-after-commit", |_| Some(()));
        None
    })();
    if failpoint.is_some() {
        tracing::info!(claim_id = %event.claim_id, "failpoint: dropping the publish of a committed claim");
        deps.metrics.unpublished.inc();
        return None;
    }
    // No broker answers: an event queued now would only fail at its
    // delivery timeout, and librdkafka spends a core on a queue of doomed
    // messages (measured: claim-api's broker thread at 30-40% with the
    // broker down, starving Postgres of the CPU the commits need). The
    // claim is committed, and the sweeper decides it within
    // TURNSTILE_SWEEP_AFTER_WITHOUT_KAFKA.
    if !deps.kafka.is_up() {
        deps.metrics.unpublished.inc();
        return None;
    }
    let trace = TraceHeaders {
        context: &span.context(),
        correlation_id: &pending.job.correlation_id,
    };
    let queued = deps
        .publisher
        .queue_event(topic, &event.resource.to_string(), "ClaimRequested", event, Some(trace));
    match queued {
        Ok(delivery) => Some(delivery),
        Err(e) => {
            // A full local queue (the broker slow or down) or a refusal:
            // the claim is committed, and the sweeper decides it.
            tracing::debug!(error = %e, claim_id = %event.claim_id, "ClaimRequested not queued; the sweeper will decide its claim");
            deps.metrics.unpublished.inc();
            None
        }
    }
}

/// How long to wait for the producer's queue to drain at shutdown.
pub(crate) const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(5);
