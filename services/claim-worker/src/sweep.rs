//! The sweeper: claims left pending past the sweep window are decided from
//! the claims table, the record of what was accepted.
//!
//! Kafka is the fast path. A claim whose event was never published (the API
//! stopped, or Kafka failed, after the claim committed) or never consumed is
//! still pending in Postgres; the sweeper decides it under the same lock and
//! fence as the consume path, and owes its announcement in the same
//! transaction (the outbox, sent by [`crate::relay`]), so sweeping never
//! waits on Kafka. It runs as its own task, so it never holds up polling,
//! and one worker at a time sweeps (a session advisory lock on a connection
//! of its own). A pass takes at most [`SWEEP_LIMIT`] claims, oldest first,
//! and a full pass is followed by the next at once: with the broker down,
//! the sweeper is how claims are decided, at the rate they arrive. While
//! this worker's Kafka clients reach no broker, the window shrinks to
//! [`Sweeper::after_without_kafka`]. A row that is no valid claim is
//! rejected as `invalid_claim`, never skipped.

use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use turnstile_bus::KafkaHealth;
use turnstile_claim::ClaimId;
use turnstile_runtime::secret::ConnectionUrl;
use turnstile_store::{self as store, StalePending, SweepTurn};

use crate::{
    consume::Origin,
    decide::{Announcing, Decider, ResourceGroup},
};

/// Most claims one pass decides.
pub(crate) const SWEEP_LIMIT: i64 = 2000;

/// How many resources a pass decides at once.
const SWEEP_CONCURRENCY: usize = 8;

/// What the sweeper needs.
pub(crate) struct Sweeper {
    pub(crate) database_url: ConnectionUrl,
    pub(crate) decider: Decider,
    pub(crate) health: KafkaHealth,
    /// How long a claim may stay pending before it is swept.
    pub(crate) after: Duration,
    /// The same while this worker's Kafka clients reach no broker: no event
    /// is coming, so waiting only delays the answer.
    pub(crate) after_without_kafka: Duration,
    /// How often to look.
    pub(crate) every: Duration,
}

impl Sweeper {
    /// Sweeps every `every` (more often while Kafka is unreachable) until
    /// `stop` fires.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut turn: Option<SweepTurn> = None;
        loop {
            let wait = if self.health.is_up() {
                self.every
            } else {
                self.every.min(self.after_without_kafka)
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if turn.is_none() {
                match SweepTurn::connect(self.database_url.expose()).await {
                    Ok(connected) => turn = Some(connected),
                    Err(e) => {
                        debug!(error = %e, "sweeper cannot connect to postgres; will retry");
                        continue;
                    }
                }
            }
            let Some(current) = turn.as_mut() else { continue };
            // Full passes follow each other at once, under one turn.
            let passes = async { while self.pass().await >= SWEEP_LIMIT as usize && !stop.is_cancelled() {} };
            // Stopping abandons a pass midway: its transaction rolls back,
            // its lease expires, and the advisory lock goes with the
            // connection, which is dropped with the task.
            let swept = tokio::select! {
                () = stop.cancelled() => return,
                swept = current.run(passes) => swept,
            };
            if let Err(e) = swept {
                // The connection is suspect: open a new one next time.
                debug!(error = %e, "sweep turn failed");
                turn = None;
            }
        }
    }

    /// One pass: the oldest stale claims, decided resource by resource.
    /// Returns how many it found.
    async fn pass(&self) -> usize {
        let kafka_up = self.health.is_up();
        let after = if kafka_up { self.after } else { self.after_without_kafka };
        let stale = match store::stale_pending(&self.decider.pool, after, SWEEP_LIMIT).await {
            Ok(stale) => stale,
            Err(e) => {
                debug!(error = %e, "sweep query failed");
                return 0;
            }
        };
        let found = stale.len();
        if stale.is_empty() {
            return 0;
        }
        let mut claims = Vec::with_capacity(stale.len());
        let mut invalid: Vec<ClaimId> = Vec::new();
        for found in stale {
            match found {
                StalePending::Claim(event) => claims.push((event, Origin::default())),
                StalePending::Invalid(claim_id) => invalid.push(claim_id),
            }
        }
        if !invalid.is_empty() {
            warn!(claims = ?invalid, "rejecting pending claims whose rows are no valid claims");
            match store::reject_invalid(&self.decider.pool, &invalid, &self.decider.decided_topic).await {
                Ok(rejected) => self
                    .decider
                    .metrics
                    .decided
                    .with_label_values(&["invalid_claim"])
                    .inc_by(rejected),
                Err(e) => debug!(error = %e, "rejecting invalid claims failed"),
            }
        }
        if claims.is_empty() {
            return found;
        }
        if kafka_up {
            warn!(
                claims = claims.len(),
                "deciding claims left pending past the sweep window; their events never reached a worker"
            );
        } else {
            info!(
                claims = claims.len(),
                "kafka unreachable: deciding pending claims from the database"
            );
        }
        self.decider.metrics.swept.inc_by(claims.len() as u64);
        // Resources are independent: several are decided at once, each
        // under its own lease and fence.
        let groups = ResourceGroup::group(claims);
        for chunk in groups.chunks(SWEEP_CONCURRENCY) {
            let decided = join_all(chunk.iter().map(|group| self.decider.decide(group, Announcing::Owed))).await;
            for (group, decided) in chunk.iter().zip(decided) {
                match decided {
                    Ok(decided) if !kafka_up => self
                        .decider
                        .metrics
                        .decided_without_kafka
                        .inc_by(decided.announcements.len() as u64),
                    Ok(_) => {}
                    Err(e) => debug!(resource = %group.resource, error = %e, "sweep of resource deferred"),
                }
            }
        }
        found
    }
}
