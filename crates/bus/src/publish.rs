//! [`Publisher`]: the one way Turnstile's services put messages on Kafka.
//!
//! One call encodes an event, adds its `event-type` header (and, when asked,
//! the W3C trace context and correlation id) and hands it to librdkafka,
//! telling a full local queue (load to shed or wait out) from a refusal.

use std::time::Duration;

use rdkafka::{
    Message,
    error::{KafkaError, RDKafkaErrorCode},
    message::{OwnedHeaders, OwnedMessage},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
};
use serde::Serialize;

use crate::{BusError, ProducerTuning};

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// librdkafka's local queue is full: load to shed, or to wait out.
    #[error("the producer's local queue is full")]
    Full,
    /// librdkafka refused the message (a closed producer, an unknown topic).
    #[error("kafka refused the message")]
    Refused(#[source] KafkaError),
}

fn queue_error(e: KafkaError) -> QueueError {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => QueueError::Full,
        other => QueueError::Refused(other),
    }
}

/// The trace a message continues: the producing span's context and the
/// request's correlation id, carried in headers.
#[derive(Debug, Clone, Copy)]
pub struct TraceHeaders<'a> {
    /// The span the consumer's span will be a child of.
    pub context: &'a opentelemetry::Context,
    /// The id that ties one claim's log lines together.
    pub correlation_id: &'a str,
}

/// A producer (see [`crate::producer`] for its settings). Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher on the cluster `kafka` reaches.
    pub fn connect(kafka: &crate::KafkaConnection, tuning: &ProducerTuning) -> Result<Self, BusError> {
        Ok(Self {
            producer: crate::producer(kafka, tuning)?,
        })
    }

    /// Queues `event` (JSON) on `topic` under `key`, with its `event-type`
    /// header and, given `trace`, the trace context and correlation id.
    /// Returns the acknowledgement to await; never waits itself.
    pub fn queue_event<E: Serialize>(
        &self,
        topic: &str,
        key: &str,
        event_type: &str,
        event: &E,
        trace: Option<TraceHeaders<'_>>,
    ) -> Result<DeliveryFuture, QueueError> {
        let payload = crate::encode(event);
        let mut headers = crate::event_headers(event_type);
        if let Some(trace) = trace {
            headers = crate::with_trace(headers, trace.context, trace.correlation_id);
        }
        let record = FutureRecord::to(topic).key(key).payload(&payload).headers(headers);
        self.producer.send_result(record).map_err(|(e, _)| queue_error(e))
    }

    /// Queues a message as it is: for dead letters, which keep the bytes and
    /// headers they came with.
    pub fn queue_message(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<DeliveryFuture, QueueError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.producer.send_result(record).map_err(|(e, _)| queue_error(e))
    }

    /// Sends again a message whose delivery failed (its acknowledgement
    /// hands it back) and waits up to `timeout` for the new acknowledgement.
    pub async fn resend(&self, message: &OwnedMessage, timeout: Duration) -> Result<(), KafkaError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(message.topic());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(headers) = message.headers() {
            record = record.headers(headers.clone());
        }
        self.producer
            .send(record, timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Sends one message as it is (key and payload bytes, no headers) and
    /// waits for its acknowledgement: for tools and tests that put
    /// hand-made messages on a topic.
    pub async fn send_raw(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<(), BusError> {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| BusError::Kafka(e))
    }

    /// Messages queued or in flight, not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Whether the cluster answers a metadata request for `topic` within
    /// `timeout`. Blocks: call it from a blocking task.
    pub fn reaches(&self, topic: &str, timeout: Duration) -> bool {
        self.producer.client().fetch_metadata(Some(topic), timeout).is_ok()
    }

    /// Waits up to `timeout` for everything queued to be acknowledged.
    /// Blocks: call it from a blocking task.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
