//! What the worker tells Kafka: a `ClaimDecided` per decided claim, dead
//! letters, and the offsets that say a batch is done.
//!
//! Announcements are at least once and never hold up a decision. A batch's
//! offset is stored once each of its `ClaimDecided` messages was either
//! acknowledged by Kafka or, failing that, owed in the database's outbox
//! ([`settle_in_order`], [`crate::relay`]): a message Kafka refuses, or
//! that finds the local queue full, costs one insert, not a wait. If the
//! worker dies before the offset is stored, the batch is redelivered, and
//! the decide step reports claims decided before as they stand, so they are
//! announced again. A consumer of `ClaimDecided` can see a decision twice,
//! never miss one.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;

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
use turnstile_bus::{GroupContext, KafkaHealth, Publisher, QueueError, Topics};
use turnstile_claim::{ClaimDecided, ClaimId};
use turnstile_store::outbox;

use crate::{WorkerMetrics, readiness::SettleClock};

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
    pub(crate) health: KafkaHealth,
}

/// One decision's announcement: its delivery, or `None` when it could not
/// be queued (it is then owed at once).
pub(crate) type Announced = (ClaimId, Option<DeliveryFuture>);

impl Announcer {
    /// Queues one `ClaimDecided` per decision, keyed by resource, in order,
    /// in a producer span under `parent` (it covers queueing, not delivery).
    /// Never waits: a message the local queue cannot take is owed instead.
    pub(crate) fn announce(&self, decided: &[ClaimDecided], parent: &tracing::Span) -> Vec<Announced> {
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
        let _entered = span.enter();
        // Fault injection for the tests and chaos: `announce-refused` makes
        // every ClaimDecided fail to queue, as when its topic is unwritable.
        let refused = (|| {
            fail::fail_point!("announce-refused", |_| true);
            false
        })();
        decided
            .iter()
            .map(|event| {
                let key = event.resource.to_string();
                let queued = if refused {
                    Err(QueueError::Refused(KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed,
                    )))
                } else {
                    self.publisher.queue_event(topic, &key, "ClaimDecided", event, None)
                };
                if let Err(e) = &queued {
                    debug!(claim_id = %event.claim_id, error = %e, "ClaimDecided not queued; owing it");
                }
                (event.claim_id, queued.ok())
            })
            .collect()
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

    /// Queues a dead letter through `send`, waiting for room while
    /// librdkafka's queue is full. `None` when it refused the message for
    /// good (the batch then settles without it). Dead letters are rare, and
    /// have no record but Kafka, so they may wait where decisions may not.
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
    /// The partition, and the offset after its batch.
    pub(crate) offset: (i32, i64),
    /// Each decision's announcement.
    pub(crate) decisions: Vec<Announced>,
    /// Dead letters in flight.
    pub(crate) dead_letters: Vec<DeliveryFuture>,
    /// When the batch was handed over.
    pub(crate) since: std::time::Instant,
}

/// How long the settler keeps trying to owe announcements while Postgres
/// refuses, between attempts, at most.
const OWE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Awaits each batch's acknowledgements in the order the batches were
/// handed over, owes in the outbox every `ClaimDecided` that Kafka did not
/// take, sends refused dead letters again, then stores the batch's offset.
/// Ends when the sender is dropped and everything handed over is settled.
pub(crate) async fn settle_in_order(
    mut batches: mpsc::Receiver<Settle>,
    consumer: Arc<StreamConsumer<GroupContext>>,
    announcer: Announcer,
    pool: PgPool,
    clock: SettleClock,
    stop: CancellationToken,
) {
    while let Some(settle) = batches.recv().await {
        clock.started();
        let mut landed = true;
        let mut owed = Vec::new();
        for (claim_id, delivery) in settle.decisions {
            match delivery {
                Some(delivery) => match delivery.await {
                    Ok(Ok(_)) => announcer.health.reached(),
                    Ok(Err((e, _))) => {
                        debug!(claim_id = %claim_id, error = %e, "ClaimDecided not acknowledged; owing it");
                        announcer.health.lost();
                        owed.push(claim_id);
                    }
                    // librdkafka dropped the message: only at shutdown.
                    Err(_) => owed.push(claim_id),
                },
                None => owed.push(claim_id),
            }
        }
        for delivery in settle.dead_letters {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, message))) => landed &= resend(&announcer, e, message, &stop).await,
                Err(_) => landed = false,
            }
        }
        if !owed.is_empty() {
            landed &= owe(&pool, &announcer.topics.decided, &owed, &stop).await;
        }
        announcer
            .metrics
            .settle_seconds
            .observe(settle.since.elapsed().as_secs_f64());
        let (partition, next) = settle.offset;
        if landed {
            if let Err(e) = consumer.store_offset(&announcer.topics.requested, partition, next) {
                // Lost the partition meanwhile: its new owner redoes the
                // batch, and announces its decisions again.
                debug!(partition, error = %e, "could not store offset");
            }
        } else {
            warn!(
                partition,
                next, "batch not settled; its messages come again after a restart"
            );
        }
        clock.idle();
    }
}

/// Owes `claims` in the outbox, trying again with backoff while Postgres
/// refuses, until it takes them or the worker stops. Returns whether it
/// took them.
async fn owe(pool: &PgPool, topic: &str, claims: &[ClaimId], stop: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(50);
    loop {
        match outbox::owe(pool, topic, claims).await {
            Ok(()) => return true,
            Err(e) => warn!(claims = claims.len(), error = %e, "could not owe announcements; trying again"),
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(OWE_BACKOFF_MAX);
    }
}

/// Sends a refused dead letter again with backoff until Kafka takes it or
/// the worker stops. Returns whether it landed.
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
