//! Topics that come back: a broker that restarted without its data, or an
//! operator's `DeleteTopics`, leaves a service with topics it needs and that
//! no longer exist.
//!
//! Nothing in the Kafka clients recreates them (the producers are told not
//! to auto-create topics, so a topic never comes back with the broker's
//! default layout instead of ours). A keeper in every service asks the
//! broker to create each of its topics every few seconds, with the
//! configured layout: an existing topic answers `TopicAlreadyExists` and
//! costs one small admin request; a missing one is created, counted in
//! `turnstile_kafka_topics_recreated_total{topic}`, logged, and announced
//! to the service (a worker subscribes again, so the group assigns the new
//! partitions without a restart).

use std::time::Duration;

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

/// How often a service checks that its topics exist. Each check is one
/// CreateTopics request per service, and it is also how a service learns
/// that the broker is back. Checked every 2 s by three services, the
/// hot-coupon sale's send-to-decision p99 on tansu was 103-198 ms against
/// 61-89 ms without a keeper (5 000/s, two cores); every 30 s, 63 against
/// 52 ms in the one undisturbed pair of runs. Every 5 s, a worker did not
/// consume again after a broker returned empty (its checks lost the race
/// to claim-api's), so it stays at 2 s until that is understood.
pub const TOPIC_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long a service's start-up waits for the broker to confirm its
/// topics before it goes on without (the keeper creates them later).
pub const STARTUP_TOPIC_CHECK: Duration = Duration::from_secs(5);

/// Recreates missing topics. See the module's documentation.
pub struct TopicKeeper {
    admin: AdminClient<DefaultClientContext>,
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
        Ok(Self {
            admin: kafka.create(kafka.config())?,
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

    /// One pass: creates whichever topics are missing. Returns those it
    /// created.
    pub async fn pass(&self) -> Result<Vec<String>, BusError> {
        let min_insync = self.layout.min_insync_replicas.to_string();
        let new = crate::new_topics(self.topics.iter().map(String::as_str), &self.layout, &min_insync);
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(5)))
            .request_timeout(Some(Duration::from_secs(5)));
        let mut created = Vec::new();
        for result in self.admin.create_topics(new.iter(), &options).await? {
            match result {
                Ok(topic) => created.push(topic),
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
