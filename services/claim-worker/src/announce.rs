//! What the worker tells Kafka of its decisions: a `ClaimDecided` per
//! decided claim, queued by the coordinator after the commit, and owed in
//! the database's outbox when Kafka does not take it ([`crate::relay`]
//! sends those later). A message Kafka refuses, or that finds the local
//! queue full, costs one insert, not a wait. A consumer of `ClaimDecided`
//! can see a decision twice, never miss one.

use std::time::Duration;

use rdkafka::{error::KafkaError, producer::DeliveryFuture};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use turnstile_bus::{KafkaHealth, Publisher, QueueError, Topics};
use turnstile_claim::{ClaimDecided, ClaimId};
use turnstile_coordinator::Announcer;
use turnstile_store::outbox;

/// Produces `ClaimDecided` events, and owes those Kafka did not take.
/// Cheap to clone.
#[derive(Clone)]
pub(crate) struct ClaimAnnouncer {
    pub(crate) publisher: Publisher,
    pub(crate) topics: Topics,
    pub(crate) health: KafkaHealth,
    /// The claims database, whose outbox holds what is owed.
    pub(crate) pool: PgPool,
}

impl Announcer<ClaimDecided> for ClaimAnnouncer {
    type Id = ClaimId;

    /// Queues one `ClaimDecided` per decision, keyed by resource, in order,
    /// in a producer span under `parent` (it covers queueing, not
    /// delivery). Never waits: a message the local queue cannot take is
    /// owed instead.
    fn announce(&self, decided: &[ClaimDecided], parent: &tracing::Span) -> Vec<(ClaimId, Option<DeliveryFuture>)> {
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

    async fn owe(&self, ids: Vec<ClaimId>, stop: &CancellationToken) -> bool {
        owe(&self.pool, &self.topics.decided, &ids, stop).await
    }
}

/// How long the settler keeps trying to owe announcements while Postgres
/// refuses, between attempts, at most.
const OWE_BACKOFF_MAX: Duration = Duration::from_secs(5);

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
