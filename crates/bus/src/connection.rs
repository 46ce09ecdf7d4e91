//! How every Kafka client of a process reaches the cluster: the bootstrap
//! servers, and whatever librdkafka properties the deployment adds (TLS,
//! SASL, timeouts, ...), passed through from `TURNSTILE_KAFKA_<PROPERTY>`
//! variables. They are applied after Turnstile's own client settings, so a
//! deployment can override any of them.

use std::fmt;

use rdkafka::{ClientConfig, config::FromClientConfig};

use crate::BusError;

/// The prefix of a passed-through property's variable:
/// `TURNSTILE_KAFKA_SECURITY_PROTOCOL` sets `security.protocol`.
pub const PROPERTY_PREFIX: &str = "TURNSTILE_KAFKA_";

/// Variables under [`PROPERTY_PREFIX`] that are the services' own settings,
/// not librdkafka properties.
pub const OWN_SETTINGS: [&str; 4] = [
    "TURNSTILE_KAFKA_BROKERS",
    "TURNSTILE_KAFKA_IDEMPOTENCE",
    "TURNSTILE_KAFKA_REPLICATION_FACTOR",
    "TURNSTILE_KAFKA_MIN_INSYNC_REPLICAS",
];

/// The bootstrap servers and the extra client properties.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaConnection {
    brokers: String,
    properties: Vec<(String, String)>,
}

impl fmt::Debug for KafkaConnection {
    /// Values of secrets (`sasl.password`, `ssl.key.password`, ...) are not
    /// shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("brokers", &self.brokers)
            .field("properties", &shown_properties(&self.properties))
            .finish()
    }
}

/// librdkafka properties as they may be shown: the values of secrets
/// (passwords, SASL secrets and JAAS or OAUTHBEARER configs, and TLS keys,
/// whether a key's contents or its path) replaced by `<redacted>`.
pub(crate) fn shown_properties(properties: &[(String, String)]) -> Vec<(&str, &str)> {
    const SECRET: [&str; 6] = [
        "password",
        "secret",
        "jaas",
        "oauthbearer.config",
        "ssl.key",
        "keystore",
    ];
    properties
        .iter()
        .map(|(name, value)| {
            let secret = SECRET.iter().any(|s| name.contains(s));
            (name.as_str(), if secret { "<redacted>" } else { value.as_str() })
        })
        .collect()
}

impl KafkaConnection {
    /// The cluster at `brokers` (`host:port[,host:port...]`), with no extra
    /// properties.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: Vec::new(),
        }
    }

    /// Adds librdkafka properties (`name`, `value`), applied last.
    pub fn with_properties(mut self, properties: impl IntoIterator<Item = (String, String)>) -> Self {
        self.properties.extend(properties);
        self
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The extra properties, in the order they are applied.
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }

    /// A client configuration with the bootstrap servers set.
    pub(crate) fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// Applies the extra properties to `config` and creates the client.
    pub(crate) fn create<C: FromClientConfig>(&self, mut config: ClientConfig) -> Result<C, BusError> {
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        Ok(config.create()?)
    }

    /// Checks every extra property against librdkafka, so that a misspelt
    /// one stops a service at start-up, named by its variable.
    pub fn check(&self) -> Result<(), BusError> {
        for (name, value) in &self.properties {
            let mut config = ClientConfig::new();
            config.set(name, value);
            config
                .create::<rdkafka::producer::BaseProducer>()
                .map_err(|source| BusError::Property {
                    variable: variable_of(name),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The librdkafka properties among `vars` (a process's environment):
/// every `TURNSTILE_KAFKA_<PROPERTY>` except [`OWN_SETTINGS`], with
/// `<PROPERTY>` lowercased and `_` read as `.`. An empty value counts as
/// unset, as for every setting.
pub fn properties_from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, value)| !value.is_empty() && !OWN_SETTINGS.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            let property = name.strip_prefix(PROPERTY_PREFIX)?;
            (!property.is_empty()).then(|| (property.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect();
    // The environment has no order; a stable one makes runs repeatable.
    properties.sort();
    properties
}

/// The variable that sets librdkafka property `name`.
pub fn variable_of(name: &str) -> String {
    format!("{PROPERTY_PREFIX}{}", name.replace('.', "_").to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn prefixed_variables_become_properties_and_the_services_own_settings_do_not() {
        let properties = properties_from_env(vars(&[
            ("TURNSTILE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("TURNSTILE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("TURNSTILE_KAFKA_BROKERS", "b:9092"),
            ("TURNSTILE_KAFKA_IDEMPOTENCE", "true"),
            ("TURNSTILE_KAFKA_REPLICATION_FACTOR", "3"),
            ("TURNSTILE_KAFKA_MIN_INSYNC_REPLICAS", "2"),
            ("TURNSTILE_KAFKA_SSL_CA_LOCATION", ""),
            ("TURNSTILE_KAFKA_", "x"),
            ("TURNSTILE_REDIS_URL", "redis://r"),
            ("KAFKA_SASL_PASSWORD", "not ours"),
        ]));
        assert_eq!(
            properties,
            vec![
                ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned()),
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ]
        );
    }

    #[test]
    fn a_property_maps_back_to_its_variable() {
        assert_eq!(variable_of("ssl.ca.location"), "TURNSTILE_KAFKA_SSL_CA_LOCATION");
        for (name, _) in properties_from_env(vars(&[("TURNSTILE_KAFKA_SASL_USERNAME", "u")])) {
            assert_eq!(variable_of(&name), "TURNSTILE_KAFKA_SASL_USERNAME");
        }
    }

    #[test]
    fn secrets_are_not_shown() {
        let kafka = KafkaConnection::new("b:9092").with_properties(vars(&[
            ("sasl.password", "hunter2"),
            ("sasl.oauthbearer.client.secret", "hunter2"),
            ("sasl.oauthbearer.config", "principal=x secret=hunter2"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY----- hunter2"),
            ("ssl.key.location", "/secrets/hunter2.key"),
            ("ssl.keystore.password", "hunter2"),
            ("sasl.username", "turnstile"),
            ("ssl.ca.location", "/etc/ca.pem"),
        ]));
        let shown = format!("{kafka:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("turnstile") && shown.contains("/etc/ca.pem"), "{shown}");
    }

    #[test]
    fn librdkafka_refuses_an_unknown_property_named_by_its_variable() {
        let kafka = KafkaConnection::new("b:9092").with_properties(vars(&[("no.such.property", "1")]));
        let error = kafka.check().unwrap_err();
        assert!(
            error.to_string().contains("TURNSTILE_KAFKA_NO_SUCH_PROPERTY"),
            "{error}"
        );
        let fine = KafkaConnection::new("b:9092").with_properties(vars(&[("socket.timeout.ms", "30000")]));
        fine.check().unwrap();
    }
}
