//! Kafka plumbing for Turnstile: how the claim services talk to the broker.
//!
//! claim-api produces `ClaimRequested` events keyed by resource, so one
//! resource's claims share a partition and arrive in order; claim-worker
//! consumes them in the `claim-workers` group
//! and produces `ClaimDecided` events, which
//! the API tails to answer `Prefer: wait`. Undecodable messages go to a
//! dead-letter topic with the reason in a header. Everything here is
//! configuration and encoding of any serde event; the claim types and the
//! decisions live elsewhere, so a library with other events (the
//! coordinator) uses it without them.

mod connection;
mod health;
mod keeper;
mod publish;
mod settings;

use std::time::Duration;

pub use connection::{KafkaConnection, OWN_SETTINGS, PROPERTY_PREFIX, properties_from_env, variable_of};
pub use health::KafkaHealth;
pub use keeper::{STARTUP_TOPIC_CHECK, TOPIC_CHECK_INTERVAL, TopicKeeper};
use prometheus::{IntCounter, IntGaugeVec};
pub use publish::{Publisher, QueueError, TraceHeaders};
pub use settings::KafkaSettings;

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Headers, OwnedHeaders},
    producer::FutureProducer,
    statistics::Statistics,
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{info, warn};

/// Header naming the event type of a message.
pub const EVENT_TYPE_HEADER: &str = "event-type";
/// Header on dead-lettered messages saying why they could not be used.
pub const DEAD_LETTER_REASON_HEADER: &str = "dead-letter-reason";
/// Header carrying the id that ties one claim's log lines together across
/// services (the trace id, or a random id in the same format).
pub const CORRELATION_ID_HEADER: &str = "correlation-id";

/// Errors from the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The client library refused a setting or the broker failed.
    #[error("kafka operation failed")]
    Kafka(#[from] KafkaError),
    /// The broker named no partition of a topic (it is missing, or the
    /// broker is not answering).
    #[error("no partitions found for topic {topic}")]
    NoPartitions {
        /// The topic.
        topic: String,
    },
    /// Creating a topic, or adding partitions to it, failed.
    #[error("creating topic {topic} failed: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// A blocking librdkafka call, run on tokio's blocking pool, panicked
    /// or was cancelled.
    #[error("a blocking kafka call did not finish")]
    Blocking(#[from] tokio::task::JoinError),
    /// librdkafka refused a passed-through property.
    #[error("{variable} is not a property librdkafka accepts")]
    Property {
        /// The variable that set it.
        variable: String,
        /// librdkafka's answer.
        #[source]
        source: KafkaError,
    },
}

/// How the services' topics are laid out on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLayout {
    /// Partitions per topic: a topic with fewer gets more (see
    /// [`ensure_topics`]); one with more keeps them.
    pub partitions: i32,
    /// Copies of each partition. 1 suits a single broker; 3 is usual for a
    /// cluster.
    pub replication_factor: i32,
    /// `min.insync.replicas` of each topic: with `acks=all`, a write
    /// succeeds only once this many replicas have it.
    pub min_insync_replicas: i32,
}

impl TopicLayout {
    /// `partitions` on one broker.
    pub fn single_broker(partitions: i32) -> Self {
        Self {
            partitions,
            replication_factor: 1,
            min_insync_replicas: 1,
        }
    }
}

/// The topics of one deployment. A prefix lets tests and tenants share a
/// broker without sharing topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `ClaimRequested` events, keyed by resource.
    pub requested: String,
    /// `ClaimDecided` events, keyed by resource.
    pub decided: String,
    /// Messages that could not be decoded.
    pub dead_letter: String,
}

impl Topics {
    /// The topics under `prefix` (`""` for the plain names).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            requested: format!("{prefix}claims.requested"),
            decided: format!("{prefix}claims.decided"),
            dead_letter: format!("{prefix}claims.requested.dlq"),
        }
    }
}

impl Topics {
    /// Creates all three topics as `layout` says, or grows them to its
    /// partitions (see [`ensure_topics`]).
    pub async fn ensure(&self, kafka: &KafkaConnection, layout: &TopicLayout) -> Result<(), BusError> {
        ensure_topics(kafka, &[&self.requested, &self.decided, &self.dead_letter], layout).await
    }

    /// [`Topics::ensure`], for a service starting while the broker may be
    /// down: Kafka is the fast path, so a service starts without it. Gives
    /// up after `within`, saying so; the [`TopicKeeper`] creates whatever
    /// is missing once the broker answers. Returns whether the topics were
    /// ensured now.
    pub async fn ensure_or_defer(&self, kafka: &KafkaConnection, layout: &TopicLayout, within: Duration) -> bool {
        match tokio::time::timeout(within, self.ensure(kafka, layout)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                warn!(error = %e, "could not ensure the topics at start-up; starting anyway, the topic keeper will create them");
                false
            }
            Err(_) => {
                warn!(
                    within_ms = within.as_millis() as u64,
                    "kafka did not answer at start-up; starting anyway, the topic keeper will create the topics"
                );
                false
            }
        }
    }
}

/// Producer tuning. Linger trades a few milliseconds of latency for batches,
/// which is where a Kafka producer's throughput comes from.
#[derive(Debug, Clone)]
pub struct ProducerTuning {
    /// How long to wait for more messages before sending a batch: 5 ms by
    /// default, Apache Kafka 4's default.
    pub linger: Duration,
    /// How long a message may take to be acknowledged before it fails.
    pub delivery_timeout: Duration,
    /// The most messages the local queue may hold.
    pub queue_limit: u32,
    /// `enable.idempotence`: off unless asked for (see [`producer`]).
    pub idempotence: bool,
}

impl Default for ProducerTuning {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(10),
            queue_limit: 100_000,
            idempotence: false,
        }
    }
}

/// A producer for events whose order per key matters (the services use it
/// through [`Publisher`]).
///
/// - `enable.idempotence` when [`ProducerTuning::idempotence`] asks for it
///   (`TURNSTILE_KAFKA_IDEMPOTENCE`; docker-compose's Apache Kafka turns it
///   on): librdkafka retries a send the broker may already have stored with
///   the same producer id and sequence number, and the broker drops the
///   duplicate. Without it a retry after a failed request can store a
///   message twice, or behind a later one of its partition. Neither breaks
///   a claim: a worker decides a claim once whatever it reads (the database
///   row is the claim), and a reordered claim is still decided under a
///   fence, only in a different place in the queue. It is off by default
///   because the native stack's broker, tansu 0.6, cannot bump an
///   idempotent producer's epoch: after one delivery timeout librdkafka
///   asks for a bump, tansu refuses, and every later send of that producer
///   fails with `ProducerFenced` until the process restarts (seen under
///   load on one core: 5 974 answers 503 in a 10-second sale).
/// - `acks=all`: a message counts as sent once every in-sync replica has it.
/// - `linger.ms` and lz4: batches, which is where a producer's throughput
///   comes from; `message.timeout.ms` bounds how long a send may be retried.
pub fn producer(kafka: &KafkaConnection, tuning: &ProducerTuning) -> Result<FutureProducer, BusError> {
    let mut config = kafka.config();
    config
        .set("enable.idempotence", if tuning.idempotence { "true" } else { "false" })
        .set("acks", "all")
        .set("linger.ms", tuning.linger.as_millis().to_string())
        .set("message.timeout.ms", tuning.delivery_timeout.as_millis().to_string())
        .set("queue.buffering.max.messages", tuning.queue_limit.to_string())
        .set("compression.type", "lz4")
        .set("socket.nagle.disable", "true")
        // A missing topic comes back with our layout ([`TopicKeeper`]),
        // never with the broker's default.
        .set("allow.auto.create.topics", "false")
        .set_log_level(RDKafkaLogLevel::Warning);
    kafka.create(config)
}

/// Consumer tuning.
#[derive(Debug, Clone)]
pub struct ConsumerTuning {
    /// How long the group waits for a silent member before reassigning its
    /// partitions. Short sessions hand over faster after a crash or a stall.
    pub session_timeout: Duration,
    /// Heartbeat cadence (a third of the session or less).
    pub heartbeat_interval: Duration,
    /// `fetch.wait.max.ms`: how long the broker may hold a fetch that finds
    /// no new data. Kafka answers as soon as data arrives, so this only
    /// bounds idle polling; a broker that always holds the fetch this long
    /// (tansu 0.6 does) adds it to every message's delivery.
    pub fetch_wait: Duration,
}

impl Default for ConsumerTuning {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            fetch_wait: Duration::from_millis(10),
        }
    }
}

/// The consumer's context: logs assignment changes, counts rebalances and
/// exports each assigned partition's lag from librdkafka's statistics
/// (emitted every [`STATISTICS_INTERVAL`]).
#[derive(Debug, Clone)]
pub struct GroupContext {
    rebalances: IntCounter,
    partition_lag: IntGaugeVec,
    health: Option<KafkaHealth>,
}

/// How often librdkafka reports statistics (and so partition lag).
pub const STATISTICS_INTERVAL: Duration = Duration::from_secs(2);

impl GroupContext {
    /// A context reporting into `rebalances` and `partition_lag` (labels
    /// `topic`, `partition`).
    pub fn new(rebalances: IntCounter, partition_lag: IntGaugeVec) -> Self {
        Self {
            rebalances,
            partition_lag,
            health: None,
        }
    }

    /// Also reports losing every broker to `health`.
    pub fn with_health(mut self, health: KafkaHealth) -> Self {
        self.health = Some(health);
        self
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if let (Some(health), KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) = (&self.health, &error) {
            health.lost();
        }
        warn!(error = %error, reason, "librdkafka: error");
    }

    fn stats(&self, statistics: Statistics) {
        // Replace the whole set: partitions revoked since the last report
        // must not linger with a stale lag.
        self.partition_lag.reset();
        for (name, topic) in &statistics.topics {
            for (id, partition) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag
                // of -1 means not known yet (nothing fetched or committed).
                if *id >= 0 && partition.consumer_lag >= 0 {
                    self.partition_lag
                        .with_label_values(&[name.as_str(), &id.to_string()])
                        .set(partition.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.inc();
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = ?partitions_of(tpl), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = ?partitions_of(tpl), "partitions revoked"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// A group member with manual offset storing: offsets are stored by the
/// application after its writes commit, and committed in the background.
/// `cooperative-sticky` keeps untouched partitions flowing during a rebalance.
pub fn group_consumer(
    kafka: &KafkaConnection,
    group_id: &str,
    tuning: &ConsumerTuning,
    context: GroupContext,
) -> Result<StreamConsumer<GroupContext>, BusError> {
    let mut config = kafka.config();
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", tuning.session_timeout.as_millis().to_string())
        .set(
            "heartbeat.interval.ms",
            tuning.heartbeat_interval.as_millis().to_string(),
        )
        // Claims are latency-sensitive: do not let the broker sit on a fetch
        // for librdkafka's default 500 ms waiting for more bytes.
        .set("fetch.wait.max.ms", tuning.fetch_wait.as_millis().to_string())
        .set("statistics.interval.ms", STATISTICS_INTERVAL.as_millis().to_string())
        .set("socket.nagle.disable", "true")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (name, value) in kafka.properties() {
        config.set(name, value);
    }
    Ok(config.create_with_context(context)?)
}

/// `fetch.wait.max.ms` of [`tail_from_end`]. Its events only wake clients
/// that asked to wait for a decision, so it need not poll as eagerly as a
/// worker. Kafka answers a fetch as soon as data arrives and this only
/// bounds idle polling; tansu 0.6 holds every fetch this long, so there it
/// is also the most a notification can be late. At 10 ms, the API's idle
/// tail of six partitions cost tansu about a tenth of a core.
pub const TAIL_FETCH_WAIT: Duration = Duration::from_millis(50);

/// A consumer outside any group that reads every partition of `topic` from
/// its end: for following events live (no offsets, no rebalances).
pub async fn tail_from_end(kafka: &KafkaConnection, topic: &str) -> Result<StreamConsumer, BusError> {
    let mut config = kafka.config();
    config
        .set("group.id", "turnstile-tail-unused")
        .set("enable.auto.commit", "false")
        .set("socket.nagle.disable", "true")
        .set("fetch.wait.max.ms", TAIL_FETCH_WAIT.as_millis().to_string())
        .set("statistics.interval.ms", STATISTICS_INTERVAL.as_millis().to_string())
        .set_log_level(RDKafkaLogLevel::Warning);
    let consumer: StreamConsumer = kafka.create(config)?;
    let metadata = tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(10)))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::End)?;
        }
    }
    if assignment.count() == 0 {
        return Err(BusError::NoPartitions {
            topic: topic.to_owned(),
        });
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// How far a consumer group trails a topic, read from outside the group
/// (its committed offsets against the partitions' high watermarks).
pub struct GroupLag {
    consumer: BaseConsumer,
    topic: String,
}

impl std::fmt::Debug for GroupLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupLag")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl GroupLag {
    /// A reader of `group_id`'s lag on `topic`. It never joins the group.
    pub fn new(kafka: &KafkaConnection, group_id: &str, topic: &str) -> Result<Self, BusError> {
        let mut config = kafka.config();
        config.set("group.id", group_id).set("enable.auto.commit", "false");
        let consumer: BaseConsumer = kafka.create(config)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// Messages the group has not committed yet, summed over partitions;
    /// `None` when the broker did not say. Blocks: call it from a blocking
    /// task.
    pub fn read(&self) -> Option<i64> {
        let timeout = Duration::from_secs(2);
        let topic = self.topic.as_str();
        let metadata = self.consumer.fetch_metadata(Some(topic), timeout).ok()?;
        let mut partitions = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                partitions.add_partition(topic, p.id());
            }
        }
        let committed = self.consumer.committed_offsets(partitions, timeout).ok()?;
        let mut lag = 0i64;
        for element in committed.elements() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, element.partition(), timeout)
                .ok()?;
            let position = match element.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            lag += (high - position).max(0);
        }
        Some(lag)
    }
}

/// A consumer in a group of its own that reads topics from their start:
/// for tools and tests that inspect what was produced (the dead-letter
/// topic, the decisions).
pub fn reader_from_start(kafka: &KafkaConnection, group_id: &str) -> Result<StreamConsumer, BusError> {
    let mut config = kafka.config();
    config
        .set("group.id", group_id)
        .set("auto.offset.reset", "earliest")
        .set_log_level(RDKafkaLogLevel::Warning);
    kafka.create(config)
}

/// Creates `topics` as `layout` says, if they do not exist yet, and adds
/// partitions to any that has fewer than `layout.partitions`.
///
/// Adding partitions moves keys: a resource whose key now hashes to a new
/// partition has its next claims in another stream than its earlier ones,
/// which another worker may still be deciding. Order per resource is then
/// only what the lock and the fence make it: each batch is decided under
/// the resource's lease and written under a newer fencing token, so nothing
/// is granted twice or beyond stock, but two claims sent just apart across
/// the change may be decided out of their arrival order. Existing topics
/// keep their replication factor and configuration.
pub async fn ensure_topics(kafka: &KafkaConnection, topics: &[&str], layout: &TopicLayout) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = kafka.create(kafka.config())?;
    let min_insync = layout.min_insync_replicas.to_string();
    let new = new_topics(topics.iter().copied(), layout, &min_insync);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut existing = Vec::new();
    for result in admin.create_topics(new.iter(), &options).await? {
        match result {
            Ok(_) => {}
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(topic),
            Err((topic, code)) => return Err(BusError::CreateTopic { topic, code }),
        }
    }
    if existing.is_empty() {
        return Ok(());
    }
    let mut counts = Vec::with_capacity(existing.len());
    for topic in &existing {
        let metadata =
            tokio::task::block_in_place(|| admin.inner().fetch_metadata(Some(topic), Duration::from_secs(10)))?;
        counts.push((
            topic.as_str(),
            metadata.topics().first().map_or(0, |t| t.partitions().len()),
        ));
    }
    let wanted = usize::try_from(layout.partitions).unwrap_or(0);
    let grow: Vec<NewPartitions<'_>> = topics_short_of(&counts, wanted)
        .into_iter()
        .map(|topic| NewPartitions::new(topic, wanted))
        .collect();
    if grow.is_empty() {
        return Ok(());
    }
    // A topic left with fewer partitions still works, with less
    // parallelism: say so loudly, and go on.
    match admin.create_partitions(grow.iter(), &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(topic) => info!(topic, partitions = wanted, "partitions added"),
                    Err((topic, code)) => {
                        warn!(topic, %code, "adding partitions failed; the topic keeps its partitions")
                    }
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "adding partitions failed (is it supported by the broker?); the topics keep their partitions")
        }
    }
    Ok(())
}

/// `topics` as `layout` lays them out, for a CreateTopics request
/// (`min_insync` is the layout's `min.insync.replicas`, as text the specs
/// borrow).
fn new_topics<'a>(
    topics: impl IntoIterator<Item = &'a str>,
    layout: &TopicLayout,
    min_insync: &'a str,
) -> Vec<NewTopic<'a>> {
    topics
        .into_iter()
        .map(|t| {
            NewTopic::new(t, layout.partitions, TopicReplication::Fixed(layout.replication_factor))
                .set("min.insync.replicas", min_insync)
        })
        .collect()
}

/// The topics among `counts` (name, partitions) with fewer than `wanted`.
fn topics_short_of<'a>(counts: &[(&'a str, usize)], wanted: usize) -> Vec<&'a str> {
    counts.iter().filter(|(_, n)| *n < wanted).map(|(t, _)| *t).collect()
}

/// Encodes an event as JSON.
pub fn encode<T: Serialize>(event: &T) -> Vec<u8> {
    // Our event types serialize infallibly (no maps with non-string keys).
    serde_json::to_vec(event).unwrap_or_default()
}

/// Decodes an event, saying why not when the payload is unusable.
pub fn decode<T: DeserializeOwned>(payload: Option<&[u8]>) -> Result<T, String> {
    let payload = payload.ok_or_else(|| "empty payload".to_owned())?;
    serde_json::from_slice(payload).map_err(|e| format!("undecodable payload: {e}"))
}

/// Headers for an event of `event_type`.
pub fn event_headers(event_type: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(rdkafka::message::Header {
        key: EVENT_TYPE_HEADER,
        value: Some(event_type),
    })
}

/// Adds the W3C trace context of `context` (`traceparent`, `tracestate`) and
/// the correlation id to `headers`, so a consumer can continue the trace.
pub fn with_trace(headers: OwnedHeaders, context: &opentelemetry::Context, correlation_id: &str) -> OwnedHeaders {
    let mut carrier = HeaderCarrier(Vec::new());
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(context, &mut carrier));
    let mut headers = headers.insert(rdkafka::message::Header {
        key: CORRELATION_ID_HEADER,
        value: Some(correlation_id),
    });
    for (key, value) in &carrier.0 {
        headers = headers.insert(rdkafka::message::Header {
            key,
            value: Some(value.as_str()),
        });
    }
    headers
}

/// The trace context a producer put in `headers` (an empty context when it
/// put none), for the consumer's span to continue.
pub fn trace_context<H: Headers>(headers: Option<&H>) -> opentelemetry::Context {
    struct Reader<'a, H>(&'a H);
    impl<H: Headers> opentelemetry::propagation::Extractor for Reader<'_, H> {
        fn get(&self, key: &str) -> Option<&str> {
            header(self.0, key)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|h| h.key).collect()
        }
    }
    match headers {
        Some(headers) => {
            opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&Reader(headers)))
        }
        None => opentelemetry::Context::new(),
    }
}

struct HeaderCarrier(Vec<(String, String)>);

impl opentelemetry::propagation::Injector for HeaderCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// Copies `headers` and adds the dead-letter reason.
pub fn dead_letter_headers(headers: Option<&rdkafka::message::BorrowedHeaders>, reason: &str) -> OwnedHeaders {
    let mut owned = headers.map(|h| h.detach()).unwrap_or_default();
    owned = owned.insert(rdkafka::message::Header {
        key: DEAD_LETTER_REASON_HEADER,
        value: Some(reason),
    });
    owned
}

/// Reads a header's value as UTF-8.
pub fn header<'a, H: Headers>(headers: &'a H, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_topics_with_fewer_partitions_than_wanted_grow() {
        let counts = [("a", 2), ("b", 6), ("c", 8)];
        assert_eq!(topics_short_of(&counts, 6), vec!["a"]);
        assert!(topics_short_of(&counts, 1).is_empty());
    }
}
