//! The dead-letter topic: messages that are no valid event, events the
//! handler refused, and poison. Each keeps its key, payload and headers,
//! with the reason (`dead-letter-reason`, from `turnstile-bus`) and the
//! cause (`dead-letter-cause`) added.

use std::time::Duration;

use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::DeliveryFuture,
};
use tracing::warn;
use turnstile_bus::{Publisher, QueueError};

use crate::metrics::CoordinatorMetrics;

/// The header naming a dead letter's cause.
pub const DEAD_LETTER_CAUSE_HEADER: &str = "dead-letter-cause";

/// Sends to the dead-letter topic. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    publisher: Publisher,
    topic: String,
    metrics: CoordinatorMetrics,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// Dead letters to `topic`, through `publisher`.
    pub fn new(publisher: Publisher, topic: impl Into<String>, metrics: CoordinatorMetrics) -> Self {
        Self {
            publisher,
            topic: topic.into(),
            metrics,
        }
    }

    /// Queues a message for the dead-letter topic, its headers extended by
    /// the cause (the reason is already among them), waiting for room
    /// while librdkafka's queue is full. `None` when it refused the
    /// message for good (the batch then settles without it). Dead letters
    /// are rare, and have no record but Kafka, so they may wait where
    /// announcements may not.
    pub async fn send(
        &self,
        cause: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Option<DeliveryFuture> {
        let headers = headers.insert(Header {
            key: DEAD_LETTER_CAUSE_HEADER,
            value: Some(cause),
        });
        self.metrics.dead_lettered.with_label_values(&[cause]).inc();
        for _ in 0..50 {
            match self.publisher.queue_message(&self.topic, key, payload, headers.clone()) {
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

    /// The producer it sends through, which an announcer may share.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
}
