//! The Kafka settings every service shares, as one clap group.

use std::fmt;

use crate::{KafkaConnection, TopicLayout, Topics, connection::shown_properties, properties_from_env};

/// Where the cluster is and how the services' topics are laid out on it.
/// Any librdkafka property can be added as `TURNSTILE_KAFKA_<PROPERTY>`
/// (`TURNSTILE_KAFKA_SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`);
/// `Debug` shows the values of secret ones as `<redacted>`.
#[derive(Clone, PartialEq, Eq, clap::Args)]
pub struct KafkaSettings {
    /// Kafka's bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        env = "TURNSTILE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Copies of each partition of the topics a service creates: 1 for one
    /// broker, usually 3 for a cluster.
    #[arg(long, env = "TURNSTILE_KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,

    /// `min.insync.replicas` of the topics a service creates: with
    /// `acks=all`, a write succeeds once this many replicas have it.
    #[arg(long, env = "TURNSTILE_KAFKA_MIN_INSYNC_REPLICAS", default_value_t = 1)]
    pub kafka_min_insync_replicas: i32,

    /// The idempotent producer: on with Apache Kafka, off with tansu 0.6,
    /// which does not implement it.
    #[arg(
        long = "kafka-idempotence",
        env = "TURNSTILE_KAFKA_IDEMPOTENCE",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub idempotence: bool,

    /// Prefix of the topic names (claims.requested, claims.decided,
    /// claims.requested.dlq), so that several pipelines share a cluster.
    #[arg(long, env = "TURNSTILE_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Partitions of the topics a service creates; a topic with fewer gets
    /// more where the broker can add them.
    #[arg(long, env = "TURNSTILE_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,

    /// The `TURNSTILE_KAFKA_<PROPERTY>` variables, read by
    /// [`KafkaSettings::read_properties`].
    #[arg(skip)]
    pub properties: Vec<(String, String)>,
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("kafka_replication_factor", &self.kafka_replication_factor)
            .field("kafka_min_insync_replicas", &self.kafka_min_insync_replicas)
            .field("idempotence", &self.idempotence)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("properties", &shown_properties(&self.properties))
            .finish()
    }
}

impl KafkaSettings {
    /// Settings for the cluster at `brokers` with one copy of each
    /// partition, the defaults otherwise.
    pub fn single_broker(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            kafka_replication_factor: 1,
            kafka_min_insync_replicas: 1,
            idempotence: false,
            topic_prefix: String::new(),
            partitions: 6,
            properties: Vec::new(),
        }
    }

    /// The services' topics, under the prefix.
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    /// Takes the librdkafka properties from `vars` (the process's
    /// environment) and checks them, so a misspelt one stops the service
    /// at start-up.
    pub fn read_properties(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), crate::BusError> {
        self.properties = properties_from_env(vars);
        self.connection().check()
    }

    /// How the clients reach the cluster.
    pub fn connection(&self) -> KafkaConnection {
        KafkaConnection::new(&self.brokers).with_properties(self.properties.iter().cloned())
    }

    /// How the services' topics are laid out.
    pub fn layout(&self) -> TopicLayout {
        TopicLayout {
            partitions: self.partitions,
            replication_factor: self.kafka_replication_factor,
            min_insync_replicas: self.kafka_min_insync_replicas,
        }
    }

    /// The rules between these settings, as (variable, value, problem).
    pub fn check(&self) -> Result<(), (&'static str, i32, String)> {
        if self.partitions < 1 {
            return Err(("TURNSTILE_PARTITIONS", self.partitions, "must be at least 1".to_owned()));
        }
        if self.kafka_replication_factor < 1 {
            return Err((
                "TURNSTILE_KAFKA_REPLICATION_FACTOR",
                self.kafka_replication_factor,
                "must be at least 1".to_owned(),
            ));
        }
        if !(1..=self.kafka_replication_factor).contains(&self.kafka_min_insync_replicas) {
            return Err((
                "TURNSTILE_KAFKA_MIN_INSYNC_REPLICAS",
                self.kafka_min_insync_replicas,
                format!(
                    "must be between 1 and TURNSTILE_KAFKA_REPLICATION_FACTOR ({})",
                    self.kafka_replication_factor
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_insync_replicas_stay_within_the_replication_factor() {
        let mut settings = KafkaSettings::single_broker("b:9092");
        assert!(settings.check().is_ok());
        settings.kafka_replication_factor = 3;
        settings.kafka_min_insync_replicas = 2;
        assert!(settings.check().is_ok());
        settings.kafka_min_insync_replicas = 4;
        assert_eq!(settings.check().unwrap_err().0, "TURNSTILE_KAFKA_MIN_INSYNC_REPLICAS");
        settings.kafka_replication_factor = 0;
        assert_eq!(settings.check().unwrap_err().0, "TURNSTILE_KAFKA_REPLICATION_FACTOR");
        settings.partitions = 0;
        assert_eq!(settings.check().unwrap_err().0, "TURNSTILE_PARTITIONS");
    }

    #[test]
    fn the_layout_carries_the_replication_settings() {
        let mut settings = KafkaSettings::single_broker("b:9092");
        settings.kafka_replication_factor = 3;
        settings.kafka_min_insync_replicas = 2;
        settings.partitions = 12;
        let layout = settings.layout();
        assert_eq!(
            (layout.partitions, layout.replication_factor, layout.min_insync_replicas),
            (12, 3, 2)
        );
    }
}
