//! Whether a service's Kafka clients reach a broker, as they last saw it.
//!
//! librdkafka reports losing every broker (`AllBrokersDown`) but never
//! reports getting one back; a broker is known reachable again when it
//! answers: a delivery acknowledged, or the [`crate::TopicKeeper`]'s check
//! every few seconds, which also reports a broker gone. What depends on
//! this is a hint, never correctness: the worker's sweeper shortens its
//! window while Kafka is down, and `turnstile_kafka_up` says so.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use prometheus::IntGauge;

/// Kafka's reachability, shared by a service's clients. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KafkaHealth {
    up: Arc<AtomicBool>,
    gauge: IntGauge,
    returns: tokio::sync::watch::Sender<u64>,
}

impl KafkaHealth {
    /// Starts as reachable (the service checked the topics at start-up),
    /// reporting into `gauge` (`turnstile_kafka_up`).
    pub fn new(gauge: IntGauge) -> Self {
        gauge.set(1);
        Self {
            up: Arc::new(AtomicBool::new(true)),
            gauge,
            returns: tokio::sync::watch::channel(0).0,
        }
    }

    /// A receiver that changes each time a broker answers again after
    /// every broker was lost: a broker that comes back may have lost its
    /// topics and groups with its data.
    pub fn returns(&self) -> tokio::sync::watch::Receiver<u64> {
        self.returns.subscribe()
    }

    /// The gauge's name and help, for the services' registries.
    pub fn gauge() -> Result<IntGauge, prometheus::Error> {
        IntGauge::new(
            "turnstile_kafka_up",
            "1 while this process's Kafka clients reach a broker, 0 since they lost every broker and until one \
             answers again (a topic check or a delivery acknowledged).",
        )
    }

    /// A broker answered.
    pub fn reached(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            tracing::info!("kafka reachable again");
            self.returns.send_modify(|n| *n += 1);
        }
    }

    /// Every broker is gone, or a send failed for want of one.
    pub fn lost(&self) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            tracing::warn!("kafka unreachable");
        }
    }

    /// Whether a broker answered since the last loss.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_follows_losses_and_answers() {
        let health = KafkaHealth::new(KafkaHealth::gauge().unwrap());
        assert!(health.is_up());
        health.lost();
        assert!(!health.is_up());
        assert_eq!(health.gauge.get(), 0);
        health.reached();
        assert!(health.is_up());
        assert_eq!(health.gauge.get(), 1);
    }
}
