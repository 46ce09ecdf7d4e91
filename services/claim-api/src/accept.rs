//! Group commit for claim admission.
//!
//! Every accepted claim needs its idempotency key and pending row committed
//! in Postgres, and its event acknowledged by Kafka before that commit (a
//! claim is never acknowledged unpublished). One transaction per claim puts
//! a commit (and a WAL flush) on every request; under a flash sale that is
//! the API's ceiling. So requests queue here, and whoever is free takes
//! everything waiting: one statement records the whole batch
//! ([`store::reserve_claims`]), the new events are published together, and
//! one commit acknowledges them all. At low load a batch is one request and
//! nothing waits; under load batches grow by themselves, with no linger.
//!
//! A publish that fails takes only its own claim out of the batch (its rows
//! are deleted before the commit), so a `429` or `503` still means nothing
//! was recorded for that request.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord},
};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use turnstile_bus::Topics;
use turnstile_claim::store::{self, Admission, Reserved};

use crate::{
    metrics::ApiMetrics,
    problem::ApiError,
    resilience::Breaker,
    routes::claims::{AcceptJob, Admitted},
};

/// Most claims recorded by one transaction.
const MAX_BATCH: usize = 256;

/// What a batch needs to record and publish claims.
#[derive(Clone)]
pub struct AcceptDeps {
    pub(crate) write_pool: PgPool,
    pub(crate) read_pool: PgPool,
    pub(crate) producer: FutureProducer,
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
    /// Starts the batcher: at most `concurrent_batches` transactions at once
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
    let answers = record_and_publish(deps, &batch).instrument(span).await;
    for (pending, answer) in batch.into_iter().zip(answers) {
        let _ = pending.reply.send(answer);
    }
}

/// One transaction for the batch: record, publish the new claims, take out
/// the ones whose publish failed, commit. Returns one answer per job.
async fn record_and_publish(deps: &AcceptDeps, batch: &[Pending]) -> Vec<Result<Admitted, ApiError>> {
    let fail_all = |e: &ApiError| batch.iter().map(|_| Err(e.clone())).collect();
    if let Err(e) = deps.postgres.permit() {
        return fail_all(&e);
    }
    let admissions: Vec<Admission<'_>> = batch
        .iter()
        .map(|p| Admission {
            fingerprint: &p.job.fingerprint,
            event: &p.job.event,
        })
        .collect();
    let reserved = store::reserve_claims(&deps.write_pool, &admissions).await;
    deps.postgres
        .record(reserved.as_ref().map_or_else(|e| !e.is_transient(), |_| true));
    let (mut tx, reserved) = match reserved {
        Ok(reserved) => reserved,
        Err(e) if e.is_transient() => return fail_all(&deps.postgres.unavailable()),
        Err(e) => {
            tracing::error!(error = %e, cause = ?e, "reserving claims failed");
            return fail_all(&ApiError::Internal);
        }
    };

    let new: Vec<usize> = (0..batch.len()).filter(|&i| reserved[i] == Reserved::New).collect();
    let published = if new.is_empty() {
        Vec::new()
    } else if let Err(e) = deps.kafka.permit() {
        new.iter().map(|_| Err(e.clone())).collect()
    } else {
        join_all(new.iter().map(|&i| publish(deps, &batch[i]))).await
    };
    let failed: Vec<Admission<'_>> = new
        .iter()
        .zip(&published)
        .filter(|(_, result)| result.is_err())
        .map(|(&i, _)| admissions[i])
        .collect();
    if !failed.is_empty()
        && let Err(e) = store::forget_claims(&mut tx, &failed).await
    {
        tracing::warn!(error = %e, "taking unpublished claims out of the batch failed; rolling it back");
        deps.postgres.record(false);
        return fail_all(&deps.postgres.unavailable());
    }
    if let Err(e) = tx.commit().await {
        tracing::warn!(error = %e, claims = new.len(), "commit after publish failed");
        deps.postgres.record(false);
        return fail_all(&deps.postgres.unavailable());
    }

    // A retry of a claim this batch failed to publish shares its failure:
    // answering it "accepted" would promise a claim that does not exist.
    let unpublished: std::collections::HashMap<_, ApiError> = new
        .iter()
        .zip(&published)
        .filter_map(|(&i, result)| result.as_ref().err().map(|e| (batch[i].job.event.claim_id, e.clone())))
        .collect();
    let mut published = new
        .iter()
        .copied()
        .zip(published)
        .collect::<std::collections::HashMap<_, _>>();
    let mut answers = Vec::with_capacity(batch.len());
    for (i, reserved) in reserved.into_iter().enumerate() {
        answers.push(match reserved {
            Reserved::New => match published.remove(&i) {
                Some(Ok(())) => {
                    deps.metrics.accepted.inc();
                    Ok(Admitted::Accepted)
                }
                Some(Err(e)) => Err(e),
                None => Err(ApiError::Internal),
            },
            Reserved::Replay(claim_id) if unpublished.contains_key(&claim_id) => Err(unpublished[&claim_id].clone()),
            Reserved::Replay(claim_id) => {
                deps.metrics.replays.inc();
                Ok(Admitted::Replayed(
                    store::claim(&deps.read_pool, claim_id).await.ok().flatten(),
                ))
            }
            Reserved::KeyReused => Err(ApiError::IdempotencyKeyReused),
            Reserved::UnknownResource => Err(ApiError::UnknownResource(batch[i].job.event.resource.to_string())),
        });
    }
    answers
}

/// Publishes one claim, in a producer span under its request's span whose
/// context travels in the message headers (W3C `traceparent`).
async fn publish(deps: &AcceptDeps, pending: &Pending) -> Result<(), ApiError> {
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
        otel.status_code = tracing::field::Empty,
    );
    let payload = turnstile_bus::encode(event);
    let key = event.resource.to_string();
    let headers = turnstile_bus::with_trace(
        turnstile_bus::event_headers("ClaimRequested"),
        &span.context(),
        &pending.job.correlation_id,
    );
    let record = FutureRecord::to(topic).key(&key).payload(&payload).headers(headers);
    let started = std::time::Instant::now();
    // A zero queue timeout: a full local queue is load to shed, not to wait on.
    let sent = deps
        .producer
        .send(record, Duration::ZERO)
        .instrument(span.clone())
        .await;
    deps.metrics.produce_duration.observe(started.elapsed().as_secs_f64());
    match sent {
        Ok(_) => {
            deps.kafka.record(true);
            Ok(())
        }
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
            span.record("otel.status_code", "ERROR");
            deps.metrics.throttled.with_label_values(&["producer_queue"]).inc();
            Err(ApiError::Overloaded {
                cause: "producer_queue",
                retry_after: 1,
            })
        }
        Err((e, _)) => {
            span.record("otel.status_code", "ERROR");
            tracing::warn!(error = %e, "publishing ClaimRequested failed");
            deps.kafka.record(false);
            Err(deps.kafka.unavailable())
        }
    }
}
