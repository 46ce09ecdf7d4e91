//! The relay: announcements owed in the outbox, sent until Kafka takes them.
//!
//! Every worker runs one. A pass takes what is due (rows another relay holds
//! are skipped), sends each `ClaimDecided`, deletes what Kafka acknowledged
//! and pushes the rest back with backoff and jitter, kept in the database
//! so that a restart does not reset it. A full pass is followed by the next
//! at once, so a backlog drains as fast as Kafka takes it; otherwise the
//! relay looks every [`Relay::every`]. Nothing else waits on it: decisions
//! are committed before they are owed, and an owed announcement holds up no
//! offset, no consumption and no sweep.

use std::time::Duration;

use futures::future::join_all;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use turnstile_claim::ClaimId;
use turnstile_store::outbox::{self, OwedAnnouncement};

use turnstile_coordinator::Announcer as _;

use crate::{WorkerMetrics, announce::ClaimAnnouncer};

/// Most announcements one pass takes.
pub(crate) const RELAY_LIMIT: i64 = 1000;
/// How long a relay holds what it took: past the producer's delivery
/// timeout, so another relay takes it only if this one died.
const HOLD: Duration = Duration::from_secs(30);
/// The first retry's delay, doubled with each attempt up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the relay needs.
pub(crate) struct Relay {
    pub(crate) pool: PgPool,
    pub(crate) announcer: ClaimAnnouncer,
    /// `turnstile_announce_retries_total`.
    pub(crate) retries: prometheus::IntCounter,
    /// The outbox's gauges.
    pub(crate) metrics: WorkerMetrics,
    /// How often to look when the last pass was not full.
    pub(crate) every: Duration,
}

impl Relay {
    /// Relays until `stop` fires.
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            let full = match self.pass().await {
                Ok(taken) => taken >= RELAY_LIMIT as usize,
                Err(e) => {
                    debug!(error = %e, "relay pass failed; will retry");
                    false
                }
            };
            self.observe_backlog().await;
            if !full {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(self.every) => {}
                }
            } else if stop.is_cancelled() {
                return;
            }
        }
    }

    /// One pass. Returns how many announcements it took.
    async fn pass(&self) -> Result<usize, turnstile_store::StoreError> {
        let due = outbox::take_due(&self.pool, &self.announcer.topics.decided, RELAY_LIMIT, HOLD).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let taken = due.len();
        let mut done: Vec<ClaimId> = Vec::with_capacity(taken);
        let mut decided = Vec::with_capacity(taken);
        for owed in due {
            match owed {
                OwedAnnouncement::Decided(event) => decided.push(event),
                OwedAnnouncement::Unannounceable(claim_id) => {
                    warn!(claim_id = %claim_id, "owed announcement names no valid resource; dropping it");
                    done.push(claim_id);
                }
            }
        }
        let span = tracing::info_span!("relay", owed = decided.len());
        let announced = self.announcer.announce(&decided, &span);
        let outcomes = join_all(announced.into_iter().map(|(claim_id, delivery)| async move {
            let landed = match delivery {
                Some(delivery) => matches!(delivery.await, Ok(Ok(_))),
                None => false,
            };
            (claim_id, landed)
        }))
        .await;
        let mut failed = Vec::new();
        for (claim_id, landed) in outcomes {
            if landed {
                done.push(claim_id);
            } else {
                failed.push(claim_id);
            }
        }
        if !done.is_empty() {
            outbox::settle(&self.pool, &done).await?;
        }
        if failed.is_empty() {
            if !decided.is_empty() {
                self.announcer.health.reached();
                info!(announced = done.len(), "owed announcements sent");
            }
        } else {
            self.retries.inc_by(failed.len() as u64);
            debug!(
                failed = failed.len(),
                sent = done.len(),
                "owed announcements not taken; retrying later"
            );
            outbox::retry_later(&self.pool, &failed, RETRY_BASE, RETRY_MAX).await?;
        }
        Ok(taken)
    }

    async fn observe_backlog(&self) {
        match outbox::backlog(&self.pool, &self.announcer.topics.decided).await {
            Ok(backlog) => {
                self.metrics.announce_backlog.set(backlog.owed);
                self.metrics.announce_oldest_seconds.set(backlog.oldest_seconds);
            }
            Err(e) => debug!(error = %e, "reading the outbox backlog failed"),
        }
    }
}
