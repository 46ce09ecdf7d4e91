//! What the worker tells Kafka: a `ClaimDecided` per decided claim, dead
//! letters, and the offsets that say a batch is done.
//!
//! Announcements are at least once. A batch's offset is stored only after
//! Kafka acknowledged every message the batch produced ([`settle_in_order`]);
//! a message Kafka refused is sent again until it is taken. If the worker
//! dies first, the batch is redelivered, and the decide step reports claims
//! decided before as they stand, so they are announced again. A consumer of
//! `ClaimDecided` can see a decision twice, never miss one.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    message::{Header, OwnedHeaders, OwnedMessage},
    producer::DeliveryFuture,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use turnstile_bus::{GroupContext, Publisher, QueueError, Topics};
use turnstile_claim::ClaimDecided;

use crate::WorkerMetrics;

/// Why a message went to the dead-letter topic (the `cause` label, and the
/// `dead-letter-cause` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterCause {
    /// Not a valid `ClaimRequested` under its resource's key.
    Invalid,
    /// A valid event naming no claim of its resource.
    Orphan,
    /// A valid event whose batch failed the same non-transient way too often.
    Poison,
}

impl DeadLetterCause {
    pub(crate) const ALL: [Self; 3] = [Self::Invalid, Self::Orphan, Self::Poison];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Orphan => "orphan",
            Self::Poison => "poison",
        }
    }
}

/// The header naming a dead letter's cause.
pub(crate) const DEAD_LETTER_CAUSE_HEADER: &str = "dead-letter-cause";

/// Produces the worker's messages. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Announcer {
    pub(crate) publisher: Publisher,
    pub(crate) topics: Topics,
    pub(crate) metrics: WorkerMetrics,
}

impl Announcer {
    /// Queues one `ClaimDecided` per decision, keyed by resource, in order,
    /// in a producer span under `parent` (it covers queueing, not delivery).
    /// Only a full local queue makes this wait.
    pub(crate) async fn announce(&self, decided: &[ClaimDecided], parent: &tracing::Span) -> Vec<DeliveryFuture> {
        use tracing::Instrument;

        let topic = self.topics.decided.as_str();
        let span = tracing::info_span!(
            parent: parent,
            "publish",
            otel.name = %format_args!("send {topic}"),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = topic,
            messaging.batch.message_count = decided.len(),
        );
        async {
            let mut deliveries = Vec::with_capacity(decided.len());
            for event in decided {
                let key = event.resource.to_string();
                let queued = self
                    .queue(|| self.publisher.queue_event(topic, &key, "ClaimDecided", event, None))
                    .await;
                deliveries.extend(queued);
            }
            deliveries
        }
        .instrument(span)
        .await
    }

    /// Queues a message for the dead-letter topic, its headers extended by
    /// the cause (the reason is already among them).
    pub(crate) async fn dead_letter(
        &self,
        cause: DeadLetterCause,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Option<DeliveryFuture> {
        let headers = headers.insert(Header {
            key: DEAD_LETTER_CAUSE_HEADER,
            value: Some(cause.as_str()),
        });
        self.metrics.dead_lettered.with_label_values(&[cause.as_str()]).inc();
        self.queue(|| {
            self.publisher
                .queue_message(&self.topics.dead_letter, key, payload, headers.clone())
        })
        .await
    }

    /// Queues through `send`, waiting for room while librdkafka's queue is
    /// full. `None` when it refused the message for good (the batch then
    /// settles without it; see [`settle_in_order`] for why that is rare).
    async fn queue(&self, send: impl Fn() -> Result<DeliveryFuture, QueueError>) -> Option<DeliveryFuture> {
        for _ in 0..50 {
            match send() {
                Ok(delivery) => return Some(delivery),
                Err(QueueError::Full) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    warn!(error = %e, "message not queued");
                    return None;
                }
            }
        }
        warn!("producer queue stayed full for 5 s; message not queued");
        None
    }
}

/// A batch's messages in flight, and the offset to store once they landed.
pub(crate) struct Settle {
    /// The partition, and the offset after its batch; `None` for work with
    /// no offset (the sweeper's).
    pub(crate) offset: Option<(i32, i64)>,
    pub(crate) deliveries: Vec<DeliveryFuture>,
    /// When the batch was handed over.
    pub(crate) since: std::time::Instant,
}

/// Awaits each batch's acknowledgements in the order the batches were
/// handed over, sends again whatever Kafka refused (until it is taken or the
/// worker stops), then stores the batch's offset. Ends when the sender is
/// dropped and everything handed over is settled.
pub(crate) async fn settle_in_order(
    mut batches: mpsc::Receiver<Settle>,
    consumer: Arc<StreamConsumer<GroupContext>>,
    announcer: Announcer,
    stop: CancellationToken,
) {
    while let Some(settle) = batches.recv().await {
        let mut landed = true;
        for delivery in settle.deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, message))) => landed &= resend(&announcer, e, message, &stop).await,
                // librdkafka dropped the message: only at shutdown.
                Err(_) => landed = false,
            }
        }
        announcer
            .metrics
            .settle_seconds
            .observe(settle.since.elapsed().as_secs_f64());
        match settle.offset {
            Some((partition, next)) if landed => {
                if let Err(e) = consumer.store_offset(&announcer.topics.requested, partition, next) {
                    // Lost the partition meanwhile: its new owner redoes the
                    // batch, and announces its decisions again.
                    debug!(partition, error = %e, "could not store offset");
                }
            }
            Some((partition, next)) => {
                warn!(
                    partition,
                    next, "batch not settled; its messages come again after a restart"
                );
            }
            None => {}
        }
    }
}

/// Sends a refused message again with backoff until Kafka takes it or the
/// worker stops. Returns whether it landed.
async fn resend(announcer: &Announcer, first: KafkaError, message: OwnedMessage, stop: &CancellationToken) -> bool {
    let mut error = first;
    let mut delay = Duration::from_millis(100);
    loop {
        warn!(error = %error, topic = message.topic(), "message not acknowledged; sending it again");
        announcer.metrics.announce_retries.inc();
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
        match announcer.publisher.resend(&message, Duration::from_secs(5)).await {
            Ok(()) => return true,
            Err(e) => error = e,
        }
    }
}
