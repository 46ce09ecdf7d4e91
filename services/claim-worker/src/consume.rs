//! Taking messages from the consumer: batches, decoding, validation.
//!
//! A message becomes either a claim event to decide or a dead letter, here
//! and nowhere later: an event decodes only into valid domain values (the
//! same rules the API applies), and its key must be the resource it names,
//! the key every claim of that resource is partitioned by.

use rdkafka::{
    Message,
    consumer::StreamConsumer,
    message::{BorrowedMessage, OwnedHeaders},
};
use tokio::time::{Duration, Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use turnstile_bus::GroupContext;
use turnstile_claim::{ClaimRequested, UnixMillis};
use turnstile_coordinator::Waiting;

use crate::WorkerMetrics;

/// One consumed message, decoded or not.
pub(crate) struct Incoming {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) event: Result<ClaimRequested, DeadLetter>,
    pub(crate) origin: Origin,
}

/// Where a claim came from: the producer's trace context and the request's
/// correlation id, both read from the message headers.
#[derive(Clone, Default)]
pub(crate) struct Origin {
    pub(crate) trace: opentelemetry::Context,
    pub(crate) correlation_id: Option<String>,
}

/// A message that is no valid claim event, kept whole for the dead-letter
/// topic (cause `invalid`).
pub(crate) struct DeadLetter {
    pub(crate) reason: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: OwnedHeaders,
}

/// Waits for the first message (or shutdown), then gathers more until the
/// batch holds `max` or `linger` has passed (with no linger, until nothing
/// more is ready: the timeout polls the consumer once before it looks at
/// the clock). `None` on shutdown.
///
/// Once a message is in hand nothing cancels the gathering: a message taken
/// from the consumer and dropped would be skipped for good.
pub(crate) async fn next_batch(
    consumer: &StreamConsumer<GroupContext>,
    max: usize,
    linger: Duration,
    metrics: &WorkerMetrics,
    waiting: &Waiting,
    shutdown: &CancellationToken,
) -> Option<Vec<Incoming>> {
    waiting.begin();
    let first = tokio::select! {
        () = shutdown.cancelled() => None,
        first = consumer.recv() => Some(first),
    };
    waiting.end();
    let first = first?;
    let mut batch = Vec::with_capacity(max.min(1024));
    match first {
        Ok(message) => batch.push(take(&message, metrics)),
        Err(e) => {
            warn!(error = %e, "kafka consume error");
            return Some(batch);
        }
    }
    let deadline = Instant::now() + linger;
    while batch.len() < max {
        match timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(take(&message, metrics)),
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
fn take(message: &BorrowedMessage<'_>, metrics: &WorkerMetrics) -> Incoming {
    if let Some(stamped_ms) = message.timestamp().to_millis() {
        let age_ms = UnixMillis::now().get().saturating_sub(stamped_ms).max(0);
        metrics.message_age.observe(age_ms as f64 / 1000.0);
    }
    decode(message)
}

fn decode(message: &BorrowedMessage<'_>) -> Incoming {
    let headers = message.headers();
    let event = check(message.key(), message.payload()).map_err(|reason| DeadLetter {
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

/// A message's event, or why it is none: its payload must decode into a
/// valid event, and its key must name the event's resource: `tenant/kind:id`,
/// or `kind:id` as an API from before resources had tenants keyed it (such
/// a message may sit in the topic across an upgrade; the fence, not the
/// partition, is what keeps its decision safe).
fn check(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<ClaimRequested, String> {
    let event: ClaimRequested = turnstile_bus::decode(payload)?;
    let expected = event.resource.to_string();
    let legacy = event.resource.local_name();
    if key != Some(expected.as_bytes()) && key != Some(legacy.as_bytes()) {
        return Err(format!("message key is not the event's resource {expected}"));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(quantity: i64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "claim_id": "5f0c6f5e-8d7a-5b8e-9c1d-2e3f4a5b6c7d",
            "tenant_id": "default",
            "resource": {"kind": "coupon", "id": "SPRING"},
            "user_id": "u1",
            "quantity": quantity,
            "accepted_at_ms": 1_795_000_000_000_i64,
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_event_under_its_resource_key_is_taken() {
        assert!(check(Some(b"default/coupon:SPRING"), Some(&payload(1))).is_ok());
        assert!(
            check(Some(b"coupon:SPRING"), Some(&payload(1))).is_ok(),
            "the key before tenants"
        );
    }

    #[test]
    fn invalid_events_and_wrong_keys_are_dead_letters() {
        let refused = [
            (Some(&b"coupon:SPRING"[..]), Some(payload(0))),
            (Some(&b"coupon:SPRING"[..]), Some(b"not json".to_vec())),
            (Some(&b"coupon:SPRING"[..]), None),
            (Some(&b"coupon:OTHER"[..]), Some(payload(1))),
            (Some(&b"other/coupon:SPRING"[..]), Some(payload(1))),
            (None, Some(payload(1))),
        ];
        for (key, body) in refused {
            let reason = check(key, body.as_deref()).unwrap_err();
            assert!(!reason.is_empty());
        }
    }
}
