//! Taking messages from the consumer: batches, decoding, validation.
//!
//! A message becomes either an event to handle or a dead letter, here and
//! nowhere later: the handler's [`Handler::decode`] decides which.

use rdkafka::{
    Message,
    consumer::StreamConsumer,
    message::{BorrowedMessage, OwnedHeaders},
};
use tokio::time::{Duration, Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use turnstile_bus::GroupContext;

use crate::{
    handler::{Handler, Origin},
    metrics::CoordinatorMetrics,
    waiting::Waiting,
};

/// One consumed message, decoded or not.
pub struct Incoming<E> {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The event, or the message kept whole for the dead-letter topic.
    pub event: Result<E, InvalidMessage>,
    /// Its trace context and correlation id.
    pub origin: Origin,
}

impl<E> std::fmt::Debug for Incoming<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("valid", &self.event.is_ok())
            .finish_non_exhaustive()
    }
}

/// A message that is no valid event, kept whole for the dead-letter topic
/// (cause `invalid`).
#[derive(Debug)]
pub struct InvalidMessage {
    /// Why it is none.
    pub reason: String,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its payload.
    pub payload: Option<Vec<u8>>,
    /// Its headers, with the reason added.
    pub headers: OwnedHeaders,
}

/// Waits for the first message (or shutdown), then gathers more until the
/// batch holds `max` or `linger` has passed (with no linger, until nothing
/// more is ready: the timeout polls the consumer once before it looks at
/// the clock). `None` on shutdown.
///
/// Once a message is in hand nothing cancels the gathering: a message taken
/// from the consumer and dropped would be skipped for good.
pub(crate) async fn next_batch<H: Handler>(
    consumer: &StreamConsumer<GroupContext>,
    handler: &H,
    max: usize,
    linger: Duration,
    metrics: &CoordinatorMetrics,
    waiting: &Waiting,
    shutdown: &CancellationToken,
) -> Option<Vec<Incoming<H::Event>>> {
    waiting.begin();
    let first = tokio::select! {
        () = shutdown.cancelled() => None,
        first = consumer.recv() => Some(first),
    };
    waiting.end();
    let first = first?;
    let mut batch = Vec::with_capacity(max.min(1024));
    match first {
        Ok(message) => batch.push(take(&message, handler, metrics)),
        Err(e) => {
            warn!(error = %e, "kafka consume error");
            return Some(batch);
        }
    }
    let deadline = Instant::now() + linger;
    while batch.len() < max {
        match timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(take(&message, handler, metrics)),
            Ok(Err(e)) => {
                warn!(error = %e, "kafka consume error");
                break;
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Decodes a message taken from the consumer and records how long it
/// waited since its producer stamped it.
fn take<H: Handler>(message: &BorrowedMessage<'_>, handler: &H, metrics: &CoordinatorMetrics) -> Incoming<H::Event> {
    if let Some(stamped_ms) = message.timestamp().to_millis() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let age_ms = now_ms.saturating_sub(stamped_ms).max(0);
        metrics.message_age.observe(age_ms as f64 / 1000.0);
    }
    let headers = message.headers();
    let event = handler
        .decode(message.key(), message.payload())
        .map_err(|reason| InvalidMessage {
            headers: turnstile_bus::dead_letter_headers(headers, &reason),
            reason,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        });
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
