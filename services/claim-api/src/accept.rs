//! Group commit for claim admission: record, commit, then publish.
//!
//! The Postgres row is the claim. Every accepted claim's pending row (which
//! is also its idempotency record) is committed before anything else
//! happens, and only then is its `ClaimRequested` handed to Kafka, to tell
//! the partition's owner to decide it. So:
//! - a `202` is sent only after the commit: the claim exists and will be
//!   decided;
//! - a `429` or `503` is sent only when nothing was committed: the key stays
//!   free for the client's retry (a failure that may hide a commit is
//!   resolved by recording once more, which finds what the first attempt
//!   committed);
//! - an event always names a row that exists. A publish that fails after
//!   the commit leaves a pending claim, which the worker's sweeper decides
//!   once it has been pending for the sweep window
//!   (`TURNSTILE_SWEEP_AFTER`); the answer is still `202`.
//!
//! The answer does not wait for Kafka's acknowledgement: after the commit
//! it would be `202` either way. The batch's slot does: a batch holds one of
//! the `TURNSTILE_ACCEPT_BATCHES` slots until Kafka acknowledged its events.
//! That bounds the events in flight by the slots, and it keeps batches as
//! large as they were when the commit waited for Kafka: releasing the slot
//! at the commit made batches three times smaller at 5 000 claims/s (2.9
//! claims against 8.5), three times the statements for Postgres, and a
//! worse end-to-end p99. Kafka's health also reaches admission through the
//! circuit breaker (fed by the acknowledgements) and the producer-queue
//! gate, both checked before anything is recorded.
//!
//! One commit per claim puts a WAL flush on every request; under a flash
//! sale that is the API's ceiling. So requests queue here, and whoever is
//! free takes everything waiting: one autocommit statement records the
//! whole batch ([`store::reserve_claims`]). At low load a batch is one
//! request and nothing waits; under load batches grow by themselves, with
//! no linger.

use std::{collections::HashMap, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use futures::future::join_all;
use rdkafka::producer::DeliveryFuture;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use turnstile_bus::{Publisher, QueueError, Topics, TraceHeaders};
use turnstile_claim::{ClaimId, ClaimRequested};
use turnstile_store::{self as store, Admission, ClaimRow, Reserved, StoreError};

use crate::{metrics::ApiMetrics, problem::ApiError, reads::Reads, resilience::Breaker};

/// Most claims recorded by one statement.
const MAX_BATCH: usize = 256;

/// One claim to admit: the part of `POST /v1/claims` that does work and is
/// therefore under the adaptive concurrency limit (waiting for a decision
/// is not: it costs nothing but a parked task).
pub struct AcceptJob {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) event: ClaimRequested,
    pub(crate) correlation_id: String,
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
}

/// What a batch needs to record and publish claims.
#[derive(Clone)]
pub struct AcceptDeps {
    pub(crate) write_pool: PgPool,
    pub(crate) reads: Reads,
    pub(crate) publisher: Publisher,
    pub(crate) topics: Topics,
    pub(crate) postgres: Breaker,
    pub(crate) kafka: Breaker,
    pub(crate) metrics: ApiMetrics,
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
                tokio::spawn(async move {
                    run_batch(&deps, batch).await;
                    drop(slot);
                });
            }
        });
        Self { jobs }
    }

    /// Queues `job` and waits for its batch to commit.
    pub async fn admit(self, job: AcceptJob) -> Result<Admitted, ApiError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            job,
            span: Span::current(),
            reply,
        };
        if self.jobs.send(pending).await.is_err() {
            return Err(ApiError::Internal);
        }
        answer.await.unwrap_or(Err(ApiError::Internal))
    }
}

async fn run_batch(deps: &AcceptDeps, batch: Vec<Pending>) {
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
    let answers = record(deps, &batch).instrument(span).await;
    let deliveries = publish_new(deps, &batch, &answers);
    let mut replays = Vec::new();
    for (pending, answer) in batch.into_iter().zip(answers) {
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
    // The clients have their answers; the batch's slot is held until Kafka
    // acknowledged its events (see the module docs).
    settle_deliveries(deps, deliveries).await;
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

/// Records the batch in one autocommit statement. Returns one answer per
/// job; an error means nothing was committed for that job.
async fn record(deps: &AcceptDeps, batch: &[Pending]) -> Vec<Result<Reserved, ApiError>> {
    let fail_all = |e: &ApiError| batch.iter().map(|_| Err(e.clone())).collect();
    // Kafka known to be down: refuse before recording, so the key stays
    // free, rather than accept claims only the sweeper would decide.
    if let Err(e) = deps.postgres.permit().and_then(|()| deps.kafka.permit()) {
        return fail_all(&e);
    }
    let admissions: Vec<Admission<'_>> = batch
        .iter()
        .map(|p| Admission {
            fingerprint: &p.job.fingerprint,
            event: &p.job.event,
        })
        .collect();
    // A transient failure can hide a commit (the connection died after
    // Postgres committed, before the answer arrived): answering 503 then
    // would break its promise. Recording is idempotent, so it is tried once
    // more: claims the first attempt did commit come back as replays of
    // themselves, still pending (their events were not published; the
    // sweeper decides them).
    let reserved = (|| async {
        let mut conn = deps.write_pool.acquire().await?;
        let reserved = store::reserve_claims(&mut conn, &admissions).await?;
        // Fault injection for the tests: the commit happened, its answer is lost.
        fail::fail_point!("reserve-answer-lost", |_| Err(StoreError::Unavailable(
            sqlx::Error::PoolClosed
        )));
        Ok(reserved)
    })
    .retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_times(1)
            .with_jitter(),
    )
    .when(StoreError::is_transient)
    .await;
    deps.postgres
        .record(reserved.as_ref().map_or_else(|e| !e.is_transient(), |_| true));
    match reserved {
        Ok(reserved) => reserved.into_iter().map(Ok).collect(),
        Err(e) if e.is_transient() => fail_all(&deps.postgres.unavailable()),
        Err(e) => {
            tracing::error!(error = %e, cause = ?e, "reserving claims failed");
            fail_all(&ApiError::Internal)
        }
    }
}

/// Hands the batch's new claims, committed already, to Kafka.
fn publish_new(deps: &AcceptDeps, batch: &[Pending], answers: &[Result<Reserved, ApiError>]) -> Vec<DeliveryFuture> {
    batch
        .iter()
        .zip(answers)
        .filter(|(_, answer)| matches!(answer, Ok(Reserved::New)))
        .filter_map(|(pending, _)| publish(deps, pending))
        .collect()
}

/// Awaits the acknowledgements of a batch's events, which feed the circuit
/// breaker; a claim Kafka did not take is counted and left to the sweeper.
async fn settle_deliveries(deps: &AcceptDeps, deliveries: Vec<DeliveryFuture>) {
    if deliveries.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    for delivered in join_all(deliveries).await {
        deps.metrics.produce_duration.observe(started.elapsed().as_secs_f64());
        match delivered {
            Ok(Ok(_)) => deps.kafka.record(true),
            Ok(Err((e, _))) => {
                tracing::warn!(error = %e, "ClaimRequested not acknowledged; the sweeper will decide its claim");
                deps.metrics.unpublished.inc();
                deps.kafka.record(false);
            }
            // The producer was dropped: the API is stopping.
            Err(_) => deps.metrics.unpublished.inc(),
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
            if matches!(e, QueueError::Refused(_)) {
                deps.kafka.record(false);
            }
            tracing::warn!(error = %e, claim_id = %event.claim_id, "ClaimRequested not queued; the sweeper will decide its claim");
            deps.metrics.unpublished.inc();
            None
        }
    }
}

/// How long to wait for the producer's queue to drain at shutdown.
pub(crate) const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(5);
