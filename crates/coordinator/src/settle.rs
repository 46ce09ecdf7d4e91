//! After the effects: announcements, and the offsets that say a batch is
//! done.
//!
//! Announcements are at least once and never hold up handling. A batch's
//! offset is stored once each of its announcements was either acknowledged
//! by Kafka or, failing that, owed by the announcer ([`Announcer::owe`], an
//! outbox in the handler's store), and each of its dead letters landed. If
//! the member dies before the offset is stored, the batch is redelivered,
//! and the handler reports events handled before as they stand, so they
//! are announced again: a reader of the announcements can see one twice,
//! never miss one.

use std::{
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    message::OwnedMessage,
    producer::DeliveryFuture,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use turnstile_bus::{GroupContext, KafkaHealth};

use crate::{dead_letter::DeadLetters, metrics::CoordinatorMetrics, waiting::Since};

/// Publishes what handling produced, after the effects, at least once.
pub trait Announcer<A>: Send + Sync + 'static {
    /// What names an announcement that is owed.
    type Id: Send + fmt::Display + 'static;

    /// Queues `announcements` in order, in a span under `parent` (the
    /// handling's), without waiting: one entry each, with its delivery, or
    /// `None` when it could not be queued (it is then owed).
    fn announce(&self, announcements: &[A], parent: &tracing::Span) -> Vec<(Self::Id, Option<DeliveryFuture>)>;

    /// Keeps the announcements Kafka did not take, so that they are sent
    /// later (an outbox). Tries until they are kept or `stop` fires;
    /// returns whether they were kept. A batch with an announcement not
    /// kept is not settled: it comes again after a restart.
    fn owe(&self, ids: Vec<Self::Id>, stop: &CancellationToken) -> impl Future<Output = bool> + Send;
}

/// The announcer of a handler that announces nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl<A: Send + 'static> Announcer<A> for Silent {
    type Id = std::convert::Infallible;

    fn announce(&self, _: &[A], _: &tracing::Span) -> Vec<(Self::Id, Option<DeliveryFuture>)> {
        Vec::new()
    }

    async fn owe(&self, _: Vec<Self::Id>, _: &CancellationToken) -> bool {
        true
    }
}

/// A batch's messages in flight, and the offset to store once they landed.
pub(crate) struct Settle<Id> {
    /// The partition, and the offset after its batch.
    pub(crate) offset: (i32, i64),
    /// Each announcement, with its delivery if it was queued.
    pub(crate) announced: Vec<(Id, Option<DeliveryFuture>)>,
    /// Dead letters in flight.
    pub(crate) dead_letters: Vec<DeliveryFuture>,
    /// When the batch was handed over.
    pub(crate) since: Instant,
}

/// Since when the settler has been working on a batch, for a readiness
/// report: a settler busy for long is stuck on Kafka or on the outbox.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SettleClock(Since);

impl SettleClock {
    fn started(&self) {
        self.0.begin();
    }

    fn idle(&self) {
        self.0.end();
    }

    /// How long the batch in hand has been settling (zero when idle).
    pub fn busy_for(&self) -> Duration {
        self.0.get().map_or(Duration::ZERO, |since| since.elapsed())
    }
}

/// What the settler needs.
pub(crate) struct Settler<X> {
    pub(crate) consumer: Arc<StreamConsumer<GroupContext>>,
    pub(crate) topic: String,
    pub(crate) announcer: Arc<X>,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) health: KafkaHealth,
    pub(crate) metrics: CoordinatorMetrics,
    pub(crate) clock: SettleClock,
}

impl<X> Settler<X> {
    /// Awaits each batch's acknowledgements in the order the batches were
    /// handed over, owes every announcement that Kafka did not take, sends
    /// refused dead letters again, then stores the batch's offset. Ends
    /// when every sender is dropped and everything handed over is settled.
    pub(crate) async fn run<A>(self, mut batches: mpsc::Receiver<Settle<X::Id>>, stop: CancellationToken)
    where
        X: Announcer<A>,
    {
        while let Some(settle) = batches.recv().await {
            self.clock.started();
            let mut landed = true;
            let mut owed = Vec::new();
            for (id, delivery) in settle.announced {
                match delivery {
                    Some(delivery) => match delivery.await {
                        Ok(Ok(_)) => self.health.reached(),
                        Ok(Err((e, _))) => {
                            debug!(id = %id, error = %e, "announcement not acknowledged; owing it");
                            self.health.lost();
                            owed.push(id);
                        }
                        // librdkafka dropped the message: only at shutdown.
                        Err(_) => owed.push(id),
                    },
                    None => owed.push(id),
                }
            }
            for delivery in settle.dead_letters {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, message))) => landed &= self.resend(e, message, &stop).await,
                    Err(_) => landed = false,
                }
            }
            if !owed.is_empty() {
                landed &= self.announcer.owe(owed, &stop).await;
            }
            self.metrics
                .settle_seconds
                .observe(settle.since.elapsed().as_secs_f64());
            let (partition, next) = settle.offset;
            if landed {
                if let Err(e) = self.consumer.store_offset(&self.topic, partition, next) {
                    // Lost the partition meanwhile: its new owner redoes the
                    // batch, and announces it again.
                    debug!(partition, error = %e, "could not store offset");
                }
            } else {
                warn!(
                    partition,
                    next, "batch not settled; its messages come again after a restart"
                );
            }
            self.clock.idle();
        }
    }

    /// Sends a refused dead letter again with backoff until Kafka takes it
    /// or `stop` fires. Returns whether it landed.
    async fn resend(&self, first: KafkaError, message: OwnedMessage, stop: &CancellationToken) -> bool {
        let mut error = first;
        let mut delay = Duration::from_millis(100);
        loop {
            warn!(error = %error, topic = message.topic(), "message not acknowledged; sending it again");
            self.metrics.announce_retries.inc();
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
            match self
                .dead_letters
                .publisher()
                .resend(&message, Duration::from_secs(5))
                .await
            {
                Ok(()) => return true,
                Err(e) => error = e,
            }
        }
    }
}
