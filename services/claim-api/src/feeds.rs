//! Background feeds: `ClaimDecided` events for `Prefer: wait`, and the
//! worker group's lag for load shedding.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use turnstile_claim::{ClaimDecided, ClaimId};

/// Requests waiting for their claim's decision.
#[derive(Debug, Clone, Default)]
pub struct DecisionWaiters {
    waiting: Arc<Mutex<HashMap<ClaimId, Vec<oneshot::Sender<ClaimDecided>>>>>,
}

/// Removes a waiter that gave up, so the map does not grow.
#[derive(Debug)]
pub struct Waiting {
    waiters: DecisionWaiters,
    claim_id: ClaimId,
    /// The decision, when it arrives.
    pub decided: oneshot::Receiver<ClaimDecided>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        if let Some(senders) = waiting.get_mut(&self.claim_id) {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                waiting.remove(&self.claim_id);
            }
        }
    }
}

impl DecisionWaiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClaimId, Vec<oneshot::Sender<ClaimDecided>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `claim_id`'s decision. Register before
    /// publishing the claim, so the decision cannot slip past.
    pub fn register(&self, claim_id: ClaimId) -> Waiting {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(claim_id).or_default().push(tx);
        Waiting {
            waiters: self.clone(),
            claim_id,
            decided: rx,
        }
    }

    fn deliver(&self, decided: ClaimDecided) {
        if let Some(senders) = self.lock().remove(&decided.claim_id) {
            for sender in senders {
                let _ = sender.send(decided.clone());
            }
        }
    }

    /// Follows the decided topic until `stop`, waking waiters.
    pub async fn follow(self, consumer: StreamConsumer, stop: CancellationToken) {
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = consumer.recv() => message,
            };
            match message {
                Ok(message) => match turnstile_bus::decode::<ClaimDecided>(message.payload()) {
                    Ok(decided) => self.deliver(decided),
                    Err(reason) => debug!(reason, "skipping undecodable ClaimDecided"),
                },
                Err(e) => warn!(error = %e, "decided feed error"),
            }
        }
    }
}

/// Watches how far the worker group trails the requested topic, once a
/// second, and raises `exceeded` above `max_lag`.
pub async fn watch_lag(
    brokers: String,
    group_id: String,
    topic: String,
    max_lag: i64,
    exceeded: Arc<AtomicBool>,
    gauge: prometheus::IntGauge,
    stop: CancellationToken,
) {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group_id)
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "lag watcher disabled");
            return;
        }
    };
    let consumer = Arc::new(consumer);
    loop {
        let c = Arc::clone(&consumer);
        let t = topic.clone();
        let lag = tokio::task::spawn_blocking(move || group_lag(&c, &t)).await;
        match lag {
            Ok(Some(lag)) => {
                gauge.set(lag);
                exceeded.store(max_lag > 0 && lag > max_lag, Ordering::Relaxed);
            }
            // Unknown lag never blocks traffic on its own.
            _ => exceeded.store(false, Ordering::Relaxed),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn group_lag(consumer: &BaseConsumer, topic: &str) -> Option<i64> {
    let timeout = Duration::from_secs(2);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).ok()?;
    let mut partitions = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            partitions.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(partitions, timeout).ok()?;
    let mut lag = 0i64;
    for element in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), timeout).ok()?;
        let position = match element.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lag += (high - position).max(0);
    }
    Some(lag)
}
