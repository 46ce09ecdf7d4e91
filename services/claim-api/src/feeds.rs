//! Background feeds: `ClaimDecided` events for `Prefer: wait`, the backlog
//! of undecided claims in the database for load shedding, and the worker
//! group's lag as a gauge.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use rdkafka::{Message, consumer::StreamConsumer};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use turnstile_bus::GroupLag;
use turnstile_claim::{ClaimDecided, ClaimId};

use crate::door::Door;

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

    /// Tails `topic` from its end, teaches each decision to `door` and wakes
    /// its waiters, until `stop` fires. A broker that is down (at start-up, say) or a
    /// topic not there yet is tried again with back-off: `Prefer: wait`
    /// answers from the database meanwhile, when its wait runs out.
    pub async fn follow_topic(
        self,
        kafka: turnstile_bus::KafkaConnection,
        topic: String,
        door: Door,
        stop: CancellationToken,
    ) {
        let mut delay = Duration::from_millis(500);
        loop {
            match turnstile_bus::tail_from_end(&kafka, &topic).await {
                Ok(consumer) => return self.follow(consumer, door, stop).await,
                Err(e) => warn!(topic, error = %e, "cannot tail the decisions yet; trying again"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Follows the decided topic until `stop`, teaching `door` and waking
    /// waiters.
    pub async fn follow(self, consumer: StreamConsumer, door: Door, stop: CancellationToken) {
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = consumer.recv() => message,
            };
            match message {
                Ok(message) => match turnstile_bus::decode::<ClaimDecided>(message.payload()) {
                    Ok(decided) => {
                        door.learn(&decided);
                        self.deliver(decided);
                    }
                    Err(reason) => debug!(reason, "skipping undecodable ClaimDecided"),
                },
                Err(e) => warn!(error = %e, "decided feed error"),
            }
        }
    }
}

/// How often [`watch_pending`] counts the undecided claims. At 5 000
/// claims/s a sample this old lets about 1 250 more in past the bound.
pub const PENDING_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Counts the claims pending in the database every [`PENDING_SAMPLE_EVERY`]
/// (up to `max_pending`, so a deep backlog costs no more than a full one),
/// and publishes the count to admission through `pending` and to `gauge`.
/// A count that fails leaves `pending` unknown (-1): with Postgres away no
/// claim is recorded anyway, and an unknown backlog never refuses alone.
pub async fn watch_pending(
    pool: sqlx::PgPool,
    max_pending: i64,
    pending: Arc<AtomicI64>,
    gauge: prometheus::IntGauge,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PENDING_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // One more than the bound tells "at the bound" from "past it".
        match turnstile_store::pending_claims(&pool, max_pending.saturating_add(1)).await {
            Ok(count) => {
                pending.store(count, Ordering::Relaxed);
                gauge.set(count);
            }
            Err(e) => {
                debug!(error = %e, "counting pending claims failed");
                pending.store(-1, Ordering::Relaxed);
                gauge.set(-1);
            }
        }
    }
}

/// Watches how far the worker group trails the requested topic, once a
/// second, for the `turnstile_kafka_consumer_lag` gauge. It never refuses a
/// claim: the database's backlog does ([`watch_pending`]).
pub async fn watch_lag(
    kafka: turnstile_bus::KafkaConnection,
    group_id: String,
    topic: String,
    gauge: prometheus::IntGauge,
    stop: CancellationToken,
) {
    let watcher = match GroupLag::new(&kafka, &group_id, &topic) {
        Ok(watcher) => Arc::new(watcher),
        Err(e) => {
            warn!(error = %e, "lag watcher disabled");
            return;
        }
    };
    loop {
        let w = Arc::clone(&watcher);
        if let Ok(Some(lag)) = tokio::task::spawn_blocking(move || w.read()).await {
            gauge.set(lag);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
