//! The sweeper: claims left pending past the sweep window are decided from
//! the claims table, the record of what was accepted.
//!
//! Kafka is the fast path. A claim whose event was never published (the API
//! stopped, or Kafka failed, after the claim committed) or never consumed is
//! still pending in Postgres; the sweeper decides it under the same lock and
//! fence as the consume path, and announces it. It runs as its own task, so
//! it never holds up polling, and one worker at a time sweeps (a session
//! advisory lock on a connection of its own). A pass takes at most
//! [`SWEEP_LIMIT`] claims, oldest first. A row that is no valid claim is
//! rejected as `invalid_claim`, never skipped.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use turnstile_claim::ClaimId;
use turnstile_store::{self as store, StalePending, SweepTurn};

use crate::{
    announce::{Announcer, Settle},
    consume::Origin,
    decide::{Decider, ResourceGroup},
};

/// Most claims one pass decides.
pub(crate) const SWEEP_LIMIT: i64 = 500;

/// What the sweeper needs.
pub(crate) struct Sweeper {
    pub(crate) database_url: String,
    pub(crate) decider: Decider,
    pub(crate) announcer: Announcer,
    pub(crate) settle: mpsc::Sender<Settle>,
    /// How long a claim may stay pending before it is swept.
    pub(crate) after: Duration,
    /// How often to look.
    pub(crate) every: Duration,
}

impl Sweeper {
    /// Sweeps every `every` until `stop` fires.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut turn: Option<SweepTurn> = None;
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if turn.is_none() {
                match SweepTurn::connect(&self.database_url).await {
                    Ok(connected) => turn = Some(connected),
                    Err(e) => {
                        debug!(error = %e, "sweeper cannot connect to postgres; will retry");
                        continue;
                    }
                }
            }
            let Some(current) = turn.as_mut() else { continue };
            // Stopping abandons a pass midway: its transaction rolls back,
            // its lease expires, and the advisory lock goes with the
            // connection, which is dropped with the task.
            let swept = tokio::select! {
                () = stop.cancelled() => return,
                swept = current.run(self.pass()) => swept,
            };
            if let Err(e) = swept {
                // The connection is suspect: open a new one next time.
                debug!(error = %e, "sweep turn failed");
                turn = None;
            }
        }
    }

    /// One pass: the oldest stale claims, decided resource by resource.
    async fn pass(&self) {
        let stale = match store::stale_pending(&self.decider.pool, self.after, SWEEP_LIMIT).await {
            Ok(stale) => stale,
            Err(e) => {
                debug!(error = %e, "sweep query failed");
                return;
            }
        };
        if stale.is_empty() {
            return;
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
            match store::reject_invalid(&self.decider.pool, &invalid).await {
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
            return;
        }
        warn!(
            claims = claims.len(),
            "deciding claims left pending past the sweep window; their events never reached a worker"
        );
        self.decider.metrics.swept.inc_by(claims.len() as u64);
        for group in &ResourceGroup::group(claims) {
            match self.decider.decide(group).await {
                Ok(decided) => {
                    let deliveries = self.announcer.announce(&decided.announcements, &decided.span).await;
                    let _ = self
                        .settle
                        .send(Settle {
                            offset: None,
                            deliveries,
                            since: std::time::Instant::now(),
                        })
                        .await;
                }
                Err(e) => debug!(resource = %group.resource, error = %e, "sweep of resource deferred"),
            }
        }
    }
}
