//! The consume loop: batch → per partition, per resource: handle under the
//! lease → announce → settle the offset, with dead letters for what cannot
//! be handled.
//!
//! No input can stall a partition for long. An invalid message is a dead
//! letter at once; an event the handler refuses is one once it has looked;
//! a resource whose events fail the same non-transient way
//! [`POISON_ATTEMPTS`] times goes to the dead-letter topic with the error,
//! and the partition moves on. Transient failures (a dependency down)
//! rewind the partition and back off, without a bound: they are not the
//! input's fault, and the events are still owed their effects.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

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

use crate::{
    POISON_ATTEMPTS, PoisonCounter, Waiting,
    batch::group_by_resource,
    consume::{self, Incoming},
    consumption::pause_after_failures,
    dead_letter::DeadLetters,
    handler::{Handler, Origin, Source},
    lease::{HandleFailure, Leaseholder},
    metrics::CoordinatorMetrics,
    settle::{Announcer, Settle},
};

/// The loop's parts.
pub(crate) struct Pipeline<H: Handler, X: Announcer<H::Announcement>> {
    pub(crate) consumer: Arc<StreamConsumer<GroupContext>>,
    pub(crate) topic: String,
    pub(crate) batch_size: usize,
    pub(crate) batch_linger: Duration,
    pub(crate) handler: Arc<H>,
    pub(crate) leaseholder: Leaseholder,
    pub(crate) announcer: Arc<X>,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) settle: mpsc::Sender<Settle<X::Id>>,
    pub(crate) metrics: CoordinatorMetrics,
    /// Whether the loop is waiting on the consumer, for the subscription
    /// keeper.
    pub(crate) waiting: Waiting,
    /// Non-transient failures so far.
    pub(crate) poison: PoisonCounter,
}

/// What one partition's share of a batch produced.
struct PartitionDone<Id> {
    announced: Vec<(Id, Option<DeliveryFuture>)>,
    dead_letters: Vec<DeliveryFuture>,
}

impl<H: Handler, X: Announcer<H::Announcement>> Pipeline<H, X> {
    /// Consumes until `shutdown` fires. Returns once the batch in hand is
    /// handed to the settler.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let Some(batch) = consume::next_batch(
                &self.consumer,
                self.handler.as_ref(),
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
    async fn process_batch(&self, batch: Vec<Incoming<H::Event>>) -> bool {
        self.metrics.batches.inc();
        self.metrics.batch_size.observe(batch.len() as f64);
        let mut by_partition: BTreeMap<i32, Vec<Incoming<H::Event>>> = BTreeMap::new();
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
                Ok(done) => {
                    debug!(
                        partition,
                        first_offset = first,
                        next_offset = next,
                        "partition batch handled"
                    );
                    let since = std::time::Instant::now();
                    let settle = Settle {
                        offset: (partition, next),
                        announced: done.announced,
                        dead_letters: done.dead_letters,
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

    /// One partition's messages: dead letters for the invalid ones, then
    /// each resource's events in order.
    async fn process_partition(
        &self,
        partition: i32,
        items: Vec<Incoming<H::Event>>,
    ) -> Result<PartitionDone<X::Id>, HandleFailure<H::Error>> {
        let mut done = PartitionDone {
            announced: Vec::new(),
            dead_letters: Vec::new(),
        };
        let mut events = Vec::with_capacity(items.len());
        for item in items {
            match item.event {
                Ok(event) => events.push((event, item.origin, item.offset)),
                Err(invalid) => {
                    warn!(partition, offset = item.offset, reason = %invalid.reason, "dead-lettering an invalid message");
                    done.dead_letters.extend(
                        self.dead_letters
                            .send(
                                "invalid",
                                invalid.key.as_deref(),
                                invalid.payload.as_deref(),
                                invalid.headers,
                            )
                            .await,
                    );
                }
            }
        }
        let handler = self.handler.as_ref();
        for (resource, group) in group_by_resource(events, |(event, _, _)| handler.resource(event)) {
            // The poison count is kept by the resource's first offset.
            let first_offset = group.first().map_or(0, |(_, _, offset)| *offset);
            let (events, origins): (Vec<H::Event>, Vec<Origin>) =
                group.into_iter().map(|(event, origin, _)| (event, origin)).unzip();
            match self
                .leaseholder
                .handle(handler, &resource, &events, &origins, Source::Consumed)
                .await
            {
                Ok((handled, span)) => {
                    self.poison.handled(partition, first_offset);
                    done.announced
                        .extend(self.announcer.announce(&handled.announcements, &span));
                    for refusal in &handled.refused {
                        if let Some(event) = events.get(refusal.index) {
                            done.dead_letters
                                .extend(self.dead_letter_event(refusal.cause, event, &refusal.reason).await);
                        }
                    }
                }
                Err(failure) if !failure.is_transient() && self.poison.failed(partition, first_offset) => {
                    error!(
                        partition,
                        offset = first_offset,
                        resource = %resource,
                        events = events.len(),
                        error = %failure,
                        cause = ?failure,
                        "the same events failed {POISON_ATTEMPTS} times; dead-lettering them"
                    );
                    let reason = format!("failed {POISON_ATTEMPTS} times: {failure}: {failure:?}");
                    for event in &events {
                        done.dead_letters
                            .extend(self.dead_letter_event("poison", event, &reason).await);
                    }
                }
                Err(failure) => return Err(failure),
            }
        }
        Ok(done)
    }

    /// Dead-letters a valid event, encoded again, keyed by its resource.
    async fn dead_letter_event(&self, cause: &str, event: &H::Event, reason: &str) -> Option<DeliveryFuture> {
        let (key, payload) = self.handler.encode(event);
        let headers = turnstile_bus::dead_letter_headers(None, reason);
        self.dead_letters
            .send(cause, Some(key.as_bytes()), Some(&payload), headers)
            .await
    }
}
