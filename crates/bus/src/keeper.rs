//! Topics that come back: a broker that restarted without its data, or an
//! operator's `DeleteTopics`, leaves a service with topics it needs and that
//! no longer exist.
//!
//! Nothing in the Kafka clients recreates them (the producers are told not
//! to auto-create topics, so a topic never comes back with the broker's
//! default layout instead of ours). A keeper in every service reads its
//! topics' metadata every few seconds and creates, with the configured
//! layout, those the broker does not know. A created topic is counted in
//! `turnstile_kafka_topics_recreated_total{topic}`, logged, and announced
//! to the service (a worker subscribes again, so the group assigns the new
//! partitions without a restart).
//!
//! The check is a metadata request, never a CreateTopics sent blind: an
//! admin request waits for the cluster's controller, and while no broker
//! answers librdkafka (2.12) retries the connection for it without its
//! reconnect back-off, in a loop between its main and broker threads that
//! took half a core per service during a broker outage (measured with the
//! broker down and claims arriving at 1 000/s: 181 decided/s, the
//! database starved of CPU). A metadata request waits with the back-off.

use std::{sync::Arc, time::Duration};

use prometheus::IntCounterVec;
use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    error::RDKafkaErrorCode,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{BusError, KafkaConnection, KafkaHealth, TopicLayout};

/// How often a service checks that its topics exist: one metadata request
/// per topic, and it is also how a service learns that the broker is back.
/// Every 5 s, a worker did not consume again after a broker returned empty
/// (its checks lost the race to claim-api's, which recreated the topics),
/// so it is 2 s.
pub const TOPIC_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long one check waits for the broker's metadata: under
/// [`TOPIC_CHECK_INTERVAL`], so checks never overlap.
const METADATA_WAIT: Duration = Duration::from_millis(1500);

/// How long a service's start-up waits for the broker to confirm its
/// topics before it goes on without (the keeper creates them later).
pub const STARTUP_TOPIC_CHECK: Duration = Duration::from_secs(5);

/// Recreates missing topics. See the module's documentation.
pub struct TopicKeeper {
    admin: Arc<AdminClient<DefaultClientContext>>,
    topics: Vec<String>,
    layout: TopicLayout,
    recreated: IntCounterVec,
    announce: watch::Sender<u64>,
    health: Option<KafkaHealth>,
}

impl std::fmt::Debug for TopicKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicKeeper")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl TopicKeeper {
    /// A keeper of `topics`, counting into `recreated` (label `topic`).
    pub fn new(
        kafka: &KafkaConnection,
        topics: &[&str],
        layout: TopicLayout,
        recreated: IntCounterVec,
    ) -> Result<Self, BusError> {
        for topic in topics {
            recreated.with_label_values(&[topic]);
        }
        let mut config = kafka.config();
        // A metadata request names the topics; it must never create one
        // with the broker's default layout.
        config.set("allow.auto.create.topics", "false");
        Ok(Self {
            admin: Arc::new(kafka.create(config)?),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            layout,
            recreated,
            announce: watch::channel(0).0,
            health: None,
        })
    }

    /// Also reports each pass to `health`: a broker that answered the
    /// check is reachable, one that did not is not.
    pub fn with_health(mut self, health: KafkaHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// The counter's name and help, for the services' registries.
    pub fn counter() -> Result<IntCounterVec, prometheus::Error> {
        IntCounterVec::new(
            prometheus::Opts::new(
                "turnstile_kafka_topics_recreated_total",
                "Topics this service found missing on the broker (restarted without its data, or deleted) and \
                 created again with the configured layout.",
            ),
            &["topic"],
        )
    }

    /// A receiver that changes each time a pass recreated a topic.
    pub fn recreations(&self) -> watch::Receiver<u64> {
        self.announce.subscribe()
    }

    /// One pass: creates whichever topics the broker does not know.
    /// Returns those it created; an error when the broker did not answer.
    pub async fn pass(&self) -> Result<Vec<String>, BusError> {
        let missing = self.missing().await?;
        if missing.is_empty() {
            return Ok(missing);
        }
        let min_insync = self.layout.min_insync_replicas.to_string();
        let new = crate::new_topics(missing.iter().map(String::as_str), &self.layout, &min_insync);
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(5)))
            .request_timeout(Some(Duration::from_secs(5)));
        let mut created = Vec::new();
        for result in self.admin.create_topics(new.iter(), &options).await? {
            match result {
                Ok(topic) => created.push(topic),
                // Another service's keeper was first.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(BusError::CreateTopic { topic, code }),
            }
        }
        if !created.is_empty() {
            for topic in &created {
                warn!(
                    topic,
                    partitions = self.layout.partitions,
                    "topic was missing on the broker; created it again"
                );
                self.recreated.with_label_values(&[topic]).inc();
            }
            self.announce.send_modify(|n| *n += 1);
        }
        Ok(created)
    }

    /// The kept topics the broker does not know, from their metadata (a
    /// blocking call in librdkafka, so on the blocking pool).
    async fn missing(&self) -> Result<Vec<String>, BusError> {
        let admin = Arc::clone(&self.admin);
        let topics = self.topics.clone();
        tokio::task::spawn_blocking(move || {
            let mut missing = Vec::new();
            for topic in topics {
                let metadata = admin.inner().fetch_metadata(Some(&topic), METADATA_WAIT)?;
                let known = metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
                if !known {
                    missing.push(topic);
                }
            }
            Ok(missing)
        })
        .await?
    }

    /// Runs a pass every `every` until `stop` fires. A failed pass (the
    /// broker is down) is logged at debug level and tried again.
    pub async fn run(self, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.pass().await {
                Ok(_) => {
                    if let Some(health) = &self.health {
                        health.reached();
                    }
                }
                Err(e) => {
                    debug!(error = %e, "topic check failed; will retry");
                    if let Some(health) = &self.health {
                        health.lost();
                    }
                }
            }
        }
    }
}
