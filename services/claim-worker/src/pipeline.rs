//! The consume → lock → fenced write → cache → offset loop.

use std::{collections::BTreeMap, time::Duration};

use futures::future::join_all;
use opentelemetry::trace::TraceContextExt;
use rdkafka::{
    Message, Offset,
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::BorrowedMessage,
    producer::{FutureProducer, FutureRecord, Producer},
};
use sqlx::PgPool;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use turnstile_bus::{GroupContext, Topics};
use turnstile_claim::{
    ClaimDecided, ClaimRequested, ClaimStatus, Decision, RejectReason, ResourceKey,
    cache::ResourceCache,
    store::{self, FencedOutcome, StoreError},
};
use turnstile_lock::{FencingToken, LockClient};

use crate::{WorkerMetrics, settings::Settings};

/// The longest pause after a dependency failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) struct Pipeline {
    pub(crate) settings: Settings,
    pub(crate) topics: Topics,
    pub(crate) consumer: StreamConsumer<GroupContext>,
    pub(crate) producer: FutureProducer,
    pub(crate) pool: PgPool,
    pub(crate) locks: LockClient,
    pub(crate) cache: ResourceCache,
    pub(crate) metrics: WorkerMetrics,
}

/// What the loop does next.
enum Next {
    Batch(Vec<Incoming>),
    Sweep,
    Stop,
}

/// One consumed message, decoded or not.
struct Incoming {
    partition: i32,
    offset: i64,
    event: Result<ClaimRequested, DeadLetter>,
    origin: Origin,
}

/// Where a claim came from: the producer's trace context and the request's
/// correlation id, both read from the message headers.
#[derive(Clone, Default)]
struct Origin {
    trace: opentelemetry::Context,
    correlation_id: Option<String>,
}

/// The claims of one resource within a batch, in arrival order.
struct ResourceGroup {
    resource: ResourceKey,
    events: Vec<ClaimRequested>,
    origins: Vec<Origin>,
}

impl ResourceGroup {
    /// Groups events by resource, keeping each resource's order.
    fn group(items: impl IntoIterator<Item = (ClaimRequested, Origin)>) -> Vec<Self> {
        let mut groups: Vec<Self> = Vec::new();
        for (event, origin) in items {
            match groups.iter_mut().find(|g| g.resource == event.resource) {
                Some(group) => {
                    group.events.push(event);
                    group.origins.push(origin);
                }
                None => groups.push(Self {
                    resource: event.resource.clone(),
                    events: vec![event],
                    origins: vec![origin],
                }),
            }
        }
        groups
    }
}

/// An undecodable message, kept whole for the dead-letter topic.
struct DeadLetter {
    reason: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: rdkafka::message::OwnedHeaders,
}

/// Why a partition's batch was not finished; it will be redelivered.
#[derive(Debug, thiserror::Error)]
enum BatchFailure {
    #[error("lock unavailable")]
    Lock(#[from] turnstile_lock::LockError),
    #[error("postgres unavailable")]
    Store(#[from] StoreError),
    #[error("kafka produce failed")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("fencing token {fence} is stale: the database already accepted {last_accepted}")]
    StaleFence { fence: u64, last_accepted: i64 },
}

impl BatchFailure {
    fn dependency(&self) -> &'static str {
        match self {
            Self::Lock(_) => "lock",
            Self::Store(_) => "postgres",
            Self::Kafka(_) => "kafka",
            Self::StaleFence { .. } => "fence",
        }
    }
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl Pipeline {
    pub(crate) async fn run(&self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut sweep = tokio::time::interval(self.settings.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = match self.next_batch(&shutdown, &mut sweep).await {
                Next::Stop => break,
                Next::Sweep => {
                    self.sweep().await;
                    continue;
                }
                Next::Batch(batch) => batch,
            };
            if batch.is_empty() {
                continue;
            }
            if self.process_batch(batch).await {
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
                self.back_off(failures, &shutdown).await;
            }
        }
        info!("shutting down: committing stored offsets and leaving the group");
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit is the usual reason.
            debug!(error = %e, "final offset commit");
        }
        self.consumer.unsubscribe();
        // Decision events still queued go out before the process ends.
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        if let Ok(Err(e)) = flushed {
            warn!(error = %e, "ClaimDecided events still queued at exit");
        }
    }

    /// Waits for the first message (or shutdown, or the sweep timer), then
    /// gathers more until the batch is full or the linger time has passed
    /// (with no linger, until nothing more is ready: the timeout polls the
    /// consumer once before it looks at the clock).
    /// Once a message is in hand nothing cancels the gathering: a message
    /// taken from the consumer and dropped would be skipped for good.
    async fn next_batch(&self, shutdown: &CancellationToken, sweep: &mut tokio::time::Interval) -> Next {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Next::Stop,
            _ = sweep.tick() => return Next::Sweep,
            first = self.consumer.recv() => first,
        };
        let mut batch = Vec::with_capacity(self.settings.batch_size.min(1024));
        match first {
            Ok(message) => batch.push(self.take(&message)),
            Err(e) => {
                warn!(error = %e, "kafka consume error");
                return Next::Batch(batch);
            }
        }
        let deadline = Instant::now() + self.settings.batch_linger;
        while batch.len() < self.settings.batch_size {
            match timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(self.take(&message)),
                Ok(Err(e)) => {
                    warn!(error = %e, "kafka consume error");
                    break;
                }
                Err(_) => break,
            }
        }
        Next::Batch(batch)
    }

    /// Decodes a message taken from the consumer and records how long it
    /// waited since its producer stamped it.
    fn take(&self, message: &BorrowedMessage<'_>) -> Incoming {
        if let Some(stamped_ms) = message.timestamp().to_millis() {
            self.metrics
                .message_age
                .observe(now_ms().saturating_sub(stamped_ms).max(0) as f64 / 1000.0);
        }
        decode(message)
    }

    /// Re-decides claims left pending too long. Kafka is the fast path, the
    /// claims table the record: a claim whose message a broker lost or
    /// skipped is still decided, under the same lock and fence, oldest first.
    async fn sweep(&self) {
        // One sweeper at a time across the group; the others skip this turn.
        let _turn = match store::sweep_turn(&self.pool).await {
            Ok(Some(turn)) => turn,
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "sweep turn unavailable");
                return;
            }
        };
        let stale = match store::stale_pending(&self.pool, self.settings.sweep_after, 500).await {
            Ok(stale) if stale.is_empty() => return,
            Ok(stale) => stale,
            Err(e) => {
                debug!(error = %e, "sweep query failed");
                return;
            }
        };
        warn!(
            claims = stale.len(),
            "re-deciding claims left pending; their messages never reached a worker"
        );
        self.metrics.swept.inc_by(stale.len() as u64);
        let groups = ResourceGroup::group(stale.into_iter().map(|event| (event, Origin::default())));
        for group in &groups {
            if let Err(e) = self.process_resource(group).await {
                debug!(resource = %group.resource, error = %e, "sweep of resource deferred");
            }
        }
    }

    /// Processes partitions concurrently (each in order) and stores the
    /// offsets of those that finished. Returns whether all did.
    async fn process_batch(&self, batch: Vec<Incoming>) -> bool {
        self.metrics.batches.inc();
        self.metrics.batch_size.observe(batch.len() as f64);
        let mut by_partition: BTreeMap<i32, Vec<Incoming>> = BTreeMap::new();
        for item in batch {
            by_partition.entry(item.partition).or_default().push(item);
        }
        let results = join_all(by_partition.into_iter().map(|(partition, items)| async move {
            let first = items.first().map_or(0, |i| i.offset);
            let next = items.last().map_or(0, |i| i.offset + 1);
            (partition, first, next, self.process_partition(items).await)
        }))
        .await;
        let mut all_done = true;
        for (partition, first, next, result) in results {
            match result {
                Ok(()) => {
                    debug!(
                        partition,
                        first_offset = first,
                        next_offset = next,
                        "partition batch done; storing offset"
                    );
                    if let Err(e) = self.consumer.store_offset(&self.topics.requested, partition, next) {
                        // Lost the partition meanwhile: its new owner redoes
                        // the batch, and already-decided claims are skipped.
                        warn!(partition, error = %e, "could not store offset");
                    }
                }
                Err(failure) => {
                    all_done = false;
                    self.metrics
                        .dependency_failures
                        .with_label_values(&[failure.dependency()])
                        .inc();
                    warn!(partition, offset = first, error = %failure, cause = ?failure, "batch not finished; rewinding");
                    if let Err(e) = self.consumer.seek(
                        &self.topics.requested,
                        partition,
                        Offset::Offset(first),
                        Duration::from_secs(5),
                    ) {
                        debug!(partition, error = %e, "rewind failed (partition probably revoked)");
                    }
                }
            }
        }
        all_done
    }

    async fn process_partition(&self, items: Vec<Incoming>) -> Result<(), BatchFailure> {
        let mut claims = Vec::with_capacity(items.len());
        for item in items {
            match item.event {
                Ok(event) => claims.push((event, item.origin)),
                Err(dead) => self.dead_letter(item.partition, item.offset, dead).await?,
            }
        }
        for group in &ResourceGroup::group(claims) {
            self.process_resource(group).await?;
        }
        Ok(())
    }

    async fn dead_letter(&self, partition: i32, offset: i64, dead: DeadLetter) -> Result<(), BatchFailure> {
        warn!(partition, offset, reason = %dead.reason, "dead-lettering undecodable message");
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topics.dead_letter).headers(dead.headers);
        if let Some(key) = dead.key.as_deref() {
            record = record.key(key);
        }
        if let Some(payload) = dead.payload.as_deref() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)?;
        self.metrics.dead_lettered.inc();
        Ok(())
    }

    /// One resource's claims under one lease and one fenced transaction, in
    /// a consumer span continuing the first claim's trace (and linking the
    /// others'), with child spans for the lock, the transaction, the cache
    /// update and the decision events.
    async fn process_resource(&self, group: &ResourceGroup) -> Result<(), BatchFailure> {
        use tracing::{Instrument, field::Empty};
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let topic = self.topics.requested.as_str();
        let correlation_id = group.origins.first().and_then(|o| o.correlation_id.as_deref());
        let span = tracing::info_span!(
            "process",
            otel.name = %format_args!("process {topic}"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = topic,
            messaging.batch.message_count = group.events.len(),
            turnstile.resource = %group.resource,
            correlation_id,
            fence = Empty,
            otel.status_code = Empty,
        );
        if let Some((first, rest)) = group.origins.split_first() {
            let _ = span.set_parent(first.trace.clone());
            for origin in rest {
                span.add_link(origin.trace.span().span_context().clone());
            }
        }
        let result = self.decide_group(group, correlation_id).instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn decide_group(&self, group: &ResourceGroup, correlation_id: Option<&str>) -> Result<(), BatchFailure> {
        use tracing::{Instrument, field::Empty, info_span};

        let started = Instant::now();
        let (resource, events) = (&group.resource, group.events.as_slice());
        let name = resource.to_string();
        let lock_span = info_span!(
            "lock",
            otel.name = "lock acquire",
            turnstile.lock.backend = self.locks.backend_name(),
            turnstile.lock.resource = %name,
            turnstile.lock.fence = Empty,
        );
        let lease = self
            .locks
            .acquire(&name, self.settings.lock_ttl, self.settings.lock_wait)
            .instrument(lock_span.clone())
            .await?;
        let fence = lease.token();
        lock_span.record("turnstile.lock.fence", fence.get());
        tracing::Span::current().record("fence", fence.get());
        hold_lease_before_write(&name, fence).await;
        let outcome = self
            .decide_with_retry(resource, fence, events)
            .instrument(info_span!(
                "db",
                otel.name = "decide_fenced claims",
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.name = "decide_fenced",
                db.collection.name = "claims",
            ))
            .await;
        // The write is fenced; the lease only needed to cover it. Releasing
        // overlaps with the cache update below: both are one round trip.
        let release = async {
            if let Err(e) = lease.release().await {
                debug!(resource = %name, error = %e, "lease release after batch");
            }
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                release.await;
                return Err(e.into());
            }
        };
        match outcome {
            FencedOutcome::Applied {
                decisions,
                remaining,
                total,
            } => {
                let granted = decisions.iter().filter(|d| matches!(d, Decision::Granted(_))).count();
                let cache_update = self
                    .cache
                    .update(resource, fence.as_i64(), remaining, total)
                    .instrument(info_span!(
                        "cache",
                        otel.name = "cache update",
                        otel.kind = "client",
                        db.system.name = "redis",
                        db.operation.name = "EVALSHA",
                    ));
                let ((), cached) = tokio::join!(release, cache_update);
                if let Err(e) = cached {
                    // The cache is a view; Postgres already holds the truth.
                    warn!(resource = %name, error = %e, "cache update failed");
                }
                self.announce(group, fence, &decisions).await;
                info!(
                    correlation_id,
                    resource = %name,
                    fence = fence.get(),
                    claims = decisions.len(),
                    granted,
                    remaining,
                    latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "batch decided"
                );
                Ok(())
            }
            FencedOutcome::UnknownResource { decisions } => {
                release.await;
                self.announce(group, fence, &decisions).await;
                Ok(())
            }
            FencedOutcome::StaleFence { last_accepted } => {
                release.await;
                self.metrics.fence_rejections.inc();
                warn!(
                    correlation_id,
                    resource = %name,
                    fence = fence.get(),
                    last_accepted,
                    "database refused a stale fencing token; another worker owns this resource now"
                );
                Err(BatchFailure::StaleFence {
                    fence: fence.get(),
                    last_accepted,
                })
            }
        }
    }

    /// Retries transient Postgres failures a few times with backoff before
    /// giving the batch up for redelivery.
    async fn decide_with_retry(
        &self,
        resource: &ResourceKey,
        fence: FencingToken,
        events: &[ClaimRequested],
    ) -> Result<FencedOutcome, StoreError> {
        use backon::{ExponentialBuilder, Retryable};
        (|| store::decide_fenced(&self.pool, resource, fence, events))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(20))
                    .with_max_delay(Duration::from_millis(500))
                    .with_max_times(3)
                    .with_jitter(),
            )
            .when(StoreError::is_transient)
            .notify(|e, after| warn!(error = %e, retry_in_ms = after.as_millis() as u64, "postgres write failed"))
            .await
    }

    /// Publishes a `ClaimDecided` per decision and records the outcomes.
    ///
    /// The events are queued in decision order, and their acknowledgements
    /// are awaited in a task of their own: the decisions are already
    /// committed in Postgres, so the next batch need not wait for Kafka.
    /// Only a full local queue makes this wait (up to five seconds).
    async fn announce(&self, group: &ResourceGroup, fence: FencingToken, decisions: &[Decision]) {
        use tracing::Instrument;

        let decided_at_ms = now_ms();
        let key = group.resource.to_string();
        let topic = self.topics.decided.as_str();
        let span = tracing::info_span!(
            "publish",
            otel.name = %format_args!("send {topic}"),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = topic,
            messaging.batch.message_count = decisions.len(),
        );
        let by_id: std::collections::HashMap<_, _> = group
            .events
            .iter()
            .zip(&group.origins)
            .map(|(e, o)| (e.claim_id, (e, o)))
            .collect();
        // The producer span covers queueing the events, not their delivery.
        let (deliveries, failed) = async {
            let mut deliveries = Vec::with_capacity(decisions.len());
            let mut failed = 0usize;
            for decision in decisions {
                let Some(&(event, origin)) = by_id.get(&decision.claim_id()) else {
                    continue;
                };
                let (status, reason) = match decision {
                    Decision::Granted(_) => (ClaimStatus::Granted, None),
                    Decision::Rejected(_, reason) => (ClaimStatus::Rejected, Some(*reason)),
                };
                let latency_ms = (decided_at_ms - event.accepted_at_ms).max(0);
                self.metrics
                    .decided
                    .with_label_values(&[reason.map_or("granted", |r| r.as_str())])
                    .inc();
                self.metrics.decide_latency.observe(latency_ms as f64 / 1000.0);
                debug!(
                    correlation_id = origin.correlation_id.as_deref(),
                    tenant_id = event.tenant_id.as_str(),
                    claim_id = %event.claim_id,
                    fence = fence.get(),
                    status = status.as_str(),
                    reason = reason.map(RejectReason::as_str),
                    latency_ms,
                    "claim decided"
                );
                let decided = ClaimDecided {
                    claim_id: event.claim_id,
                    tenant_id: event.tenant_id.clone(),
                    resource: group.resource.clone(),
                    status,
                    reason,
                    fence: fence.get(),
                    decided_at_ms,
                };
                let payload = turnstile_bus::encode(&decided);
                let record = FutureRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(turnstile_bus::event_headers("ClaimDecided"));
                match self.producer.send_result(record) {
                    Ok(delivery) => deliveries.push(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
                        // Back-pressure from librdkafka: wait for room.
                        if let Err((e, _)) = self.producer.send(record, Duration::from_secs(5)).await {
                            failed += 1;
                            debug!(error = %e, "ClaimDecided not queued");
                        }
                    }
                    Err((e, _)) => {
                        failed += 1;
                        debug!(error = %e, "ClaimDecided not queued");
                    }
                }
            }
            (deliveries, failed)
        }
        .instrument(span)
        .await;
        if failed > 0 {
            // Postgres holds the decisions; `GET /v1/claims/{id}` serves them.
            error!(resource = %key, failed, "publishing ClaimDecided failed");
        }
        tokio::spawn(async move {
            let failed = join_all(deliveries)
                .await
                .into_iter()
                .filter(|delivered| !matches!(delivered, Ok(Ok(_))))
                .count();
            if failed > 0 {
                error!(resource = %key, failed, "ClaimDecided not acknowledged by Kafka");
            }
        });
    }

    /// Pauses consumption while a dependency is failing, so a dead Postgres
    /// or Redis costs idle waiting rather than a hot redelivery loop.
    async fn back_off(&self, failures: u32, shutdown: &CancellationToken) {
        let delay = (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(6))).min(MAX_BACKOFF);
        let assignment = self.consumer.assignment().ok();
        if let Some(assignment) = &assignment {
            let _ = self.consumer.pause(assignment);
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = sleep(delay) => {}
        }
        if let Some(assignment) = &assignment {
            let _ = self.consumer.resume(assignment);
        }
    }
}

fn decode(message: &BorrowedMessage<'_>) -> Incoming {
    let event = turnstile_bus::decode::<ClaimRequested>(message.payload()).map_err(|reason| DeadLetter {
        headers: turnstile_bus::dead_letter_headers(message.headers(), &reason),
        reason,
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
    });
    let headers = message.headers();
    Incoming {
        partition: message.partition(),
        offset: message.offset(),
        event,
        origin: Origin {
            trace: turnstile_bus::trace_context(headers),
            correlation_id: headers
                .and_then(|h| turnstile_bus::header(h, turnstile_bus::CORRELATION_ID_HEADER))
                .map(str::to_owned),
        },
    }
}

/// Fault injection for the chaos tests: with `FAILPOINTS` set to
/// `hold-lease-before-write=1*return(MS)`,
/// the worker holds its lease MS milliseconds between taking the token and
/// writing, the window in which a stalled worker becomes a zombie.
async fn hold_lease_before_write(resource: &str, fence: FencingToken) {
    let hold_ms: Option<u64> = (|| {
        fail::fail_point!("hold-lease-before-write", |ms| ms.and_then(|v| v.parse().ok()));
        None
    })();
    if let Some(ms) = hold_ms {
        info!(
            resource,
            fence = fence.get(),
            hold_ms = ms,
            "failpoint: holding lease before write"
        );
        sleep(Duration::from_millis(ms)).await;
    }
}
