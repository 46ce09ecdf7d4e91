//! The consume loop: batch → per partition, per resource: decide → announce
//! → offset, with dead letters for what cannot be decided.
//!
//! No input can stall a partition for long. An invalid event is a dead
//! letter at once; an event naming no claim of its resource is one once the
//! decide step has looked; a resource whose claims fail the same
//! non-transient way [`POISON_ATTEMPTS`] times goes to the dead-letter topic
//! with the error, and the partition moves on. Transient failures (a
//! dependency down) rewind the partition and back off, without a bound:
//! they are not the input's fault, and the claims are still owed a decision.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::future::join_all;
use rdkafka::{
    Offset,
    consumer::{Consumer, StreamConsumer},
    producer::DeliveryFuture,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};
use turnstile_bus::GroupContext;
use turnstile_coordinator::{POISON_ATTEMPTS, PoisonCounter, Waiting, consumption::pause_after_failures};

use crate::{
    WorkerMetrics,
    announce::{Announced, Announcer, DeadLetterCause, Settle},
    consume::{self, Incoming},
    decide::{Announcing, DecideFailure, Decider, ResourceGroup},
};

pub(crate) struct Pipeline {
    pub(crate) consumer: Arc<StreamConsumer<GroupContext>>,
    pub(crate) topic: String,
    pub(crate) batch_size: usize,
    pub(crate) batch_linger: Duration,
    pub(crate) decider: Decider,
    pub(crate) announcer: Announcer,
    pub(crate) settle: mpsc::Sender<Settle>,
    pub(crate) metrics: WorkerMetrics,
    /// Whether the loop is waiting on the consumer, for the subscription
    /// keeper.
    pub(crate) waiting: Waiting,
    /// Non-transient failures so far.
    poison: PoisonCounter,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        consumer: Arc<StreamConsumer<GroupContext>>,
        topic: String,
        batch_size: usize,
        batch_linger: Duration,
        decider: Decider,
        announcer: Announcer,
        settle: mpsc::Sender<Settle>,
        metrics: WorkerMetrics,
    ) -> Self {
        Self {
            consumer,
            topic,
            batch_size,
            batch_linger,
            decider,
            announcer,
            settle,
            metrics,
            waiting: Waiting::default(),
            poison: PoisonCounter::default(),
        }
    }

    /// Consumes until `shutdown` fires. Returns once the batch in hand is
    /// handed to the settler.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let Some(batch) = consume::next_batch(
                &self.consumer,
                self.batch_size,
                self.batch_linger,
                &self.metrics,
                &self.waiting,
                &shutdown,
            )
            .await
            else {
                break;
            };
            if batch.is_empty() {
                continue;
            }
            if self.process_batch(batch).await {
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
                pause_after_failures(&self.consumer, failures, &shutdown).await;
            }
        }
    }

    /// Processes partitions concurrently (each in order) and hands those
    /// that finished to the settler, which stores their offsets once their
    /// messages landed. Returns whether all finished.
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
            (partition, first, next, self.process_partition(partition, items).await)
        }))
        .await;
        let mut all_done = true;
        for (partition, first, next, result) in results {
            match result {
                Ok((decisions, dead_letters)) => {
                    debug!(
                        partition,
                        first_offset = first,
                        next_offset = next,
                        "partition batch decided"
                    );
                    let since = std::time::Instant::now();
                    let settle = Settle {
                        offset: (partition, next),
                        decisions,
                        dead_letters,
                        since,
                    };
                    if self.settle.send(settle).await.is_err() {
                        warn!(partition, "settler gone; offset not stored");
                    }
                    self.metrics
                        .settle_blocked_seconds
                        .observe(since.elapsed().as_secs_f64());
                }
                Err(failure) => {
                    all_done = false;
                    self.metrics
                        .dependency_failures
                        .with_label_values(&[failure.dependency()])
                        .inc();
                    warn!(partition, offset = first, error = %failure, cause = ?failure, "batch not finished; rewinding");
                    if let Err(e) =
                        self.consumer
                            .seek(&self.topic, partition, Offset::Offset(first), Duration::from_secs(5))
                    {
                        debug!(partition, error = %e, "rewind failed (partition probably revoked)");
                    }
                }
            }
        }
        all_done
    }

    /// One partition's messages: dead letters for the invalid ones, then each
    /// resource's claims in order. Returns the announcements and the dead
    /// letters to settle.
    async fn process_partition(
        &self,
        partition: i32,
        items: Vec<Incoming>,
    ) -> Result<(Vec<Announced>, Vec<DeliveryFuture>), DecideFailure> {
        let mut decisions = Vec::new();
        let mut deliveries = Vec::new();
        let mut claims = Vec::with_capacity(items.len());
        let mut offsets = HashMap::with_capacity(items.len());
        for item in items {
            match item.event {
                Ok(event) => {
                    offsets.entry(event.resource.clone()).or_insert(item.offset);
                    claims.push((event, item.origin));
                }
                Err(dead) => {
                    warn!(partition, offset = item.offset, reason = %dead.reason, "dead-lettering an invalid message");
                    deliveries.extend(
                        self.announcer
                            .dead_letter(
                                DeadLetterCause::Invalid,
                                dead.key.as_deref(),
                                dead.payload.as_deref(),
                                dead.headers,
                            )
                            .await,
                    );
                }
            }
        }
        for group in &ResourceGroup::group(claims) {
            let first_offset = offsets.get(&group.resource).copied().unwrap_or(0);
            match self.decider.decide(group, Announcing::Now).await {
                Ok(decided) => {
                    self.poison.handled(partition, first_offset);
                    decisions.extend(self.announcer.announce(&decided.announcements, &decided.span));
                    for orphan in &decided.orphans {
                        if let Some(event) = group.events.iter().find(|e| e.claim_id == orphan.claim_id) {
                            deliveries.extend(
                                self.dead_letter_event(DeadLetterCause::Orphan, event, orphan.reason.as_str())
                                    .await,
                            );
                        }
                    }
                }
                Err(failure) if !failure.is_transient() && self.poison.failed(partition, first_offset) => {
                    error!(
                        partition,
                        offset = first_offset,
                        resource = %group.resource,
                        claims = group.events.len(),
                        error = %failure,
                        cause = ?failure,
                        "the same claims failed {POISON_ATTEMPTS} times; dead-lettering them"
                    );
                    let reason = format!("failed {POISON_ATTEMPTS} times: {failure}: {:?}", failure);
                    for event in &group.events {
                        deliveries.extend(self.dead_letter_event(DeadLetterCause::Poison, event, &reason).await);
                    }
                }
                Err(failure) => return Err(failure),
            }
        }
        Ok((decisions, deliveries))
    }

    /// Dead-letters a valid event, encoded again, keyed by its resource.
    async fn dead_letter_event(
        &self,
        cause: DeadLetterCause,
        event: &turnstile_claim::ClaimRequested,
        reason: &str,
    ) -> Option<DeliveryFuture> {
        let key = event.resource.to_string();
        let payload = turnstile_bus::encode(event);
        let headers = turnstile_bus::dead_letter_headers(None, reason);
        self.announcer
            .dead_letter(cause, Some(key.as_bytes()), Some(&payload), headers)
            .await
    }
}
