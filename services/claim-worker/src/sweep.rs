//! Where the sweeper finds claims: those left pending past the sweep
//! window in the claims table, the record of what was accepted.
//!
//! Kafka is the fast path. A claim whose event was never published (the
//! API stopped, or Kafka failed, after the claim committed) or never
//! consumed is still pending in Postgres; `turnstile-coordinator`'s sweeper
//! takes it from here and decides it under the same lock and fence as the
//! consume path, owing its announcement in the same transaction (the
//! outbox, sent by [`crate::relay`]). One worker at a time sweeps, under a
//! session advisory lock on a connection of its own. A row that is no
//! valid claim is rejected as `invalid_claim` here, never skipped.

use std::time::Duration;

use sqlx::PgPool;
use tracing::{debug, warn};
use turnstile_claim::{ClaimId, ClaimRequested};
use turnstile_coordinator::{Stale, SweepSource, postgres::AdvisoryTurn, sweep::SweepError};
use turnstile_runtime::secret::ConnectionUrl;
use turnstile_store::{self as store, StalePending};

use crate::{WorkerMetrics, decide::Decider};

/// The advisory lock that makes one worker the sweeper at a time (an
/// arbitrary constant, "turnstil").
const SWEEP_LOCK: i64 = 0x7475_726e_7374_696c;

/// Pending claims in the claims table.
pub(crate) struct StaleClaims {
    pub(crate) database_url: ConnectionUrl,
    pub(crate) pool: PgPool,
    pub(crate) decided_topic: String,
    pub(crate) metrics: WorkerMetrics,
}

impl SweepSource<Decider> for StaleClaims {
    type Turn = AdvisoryTurn;

    async fn open_turn(&self) -> Result<AdvisoryTurn, SweepError> {
        Ok(AdvisoryTurn::connect(self.database_url.expose(), SWEEP_LOCK).await?)
    }

    /// The oldest claims still pending `after` past acceptance; rows that
    /// are no valid claim are rejected on the way.
    async fn stale(&self, after: Duration, limit: usize) -> Result<Stale<ClaimRequested>, SweepError> {
        let stale = store::stale_pending(&self.pool, after, i64::try_from(limit).unwrap_or(i64::MAX)).await?;
        let read = stale.len();
        let mut claims = Vec::with_capacity(stale.len());
        let mut invalid: Vec<ClaimId> = Vec::new();
        for found in stale {
            match found {
                StalePending::Claim(event) => claims.push(event),
                StalePending::Invalid(claim_id) => invalid.push(claim_id),
            }
        }
        if !invalid.is_empty() {
            warn!(claims = ?invalid, "rejecting pending claims whose rows are no valid claims");
            match store::reject_invalid(&self.pool, &invalid, &self.decided_topic).await {
                Ok(rejected) => self
                    .metrics
                    .decided
                    .with_label_values(&["invalid_claim"])
                    .inc_by(rejected),
                Err(e) => debug!(error = %e, "rejecting invalid claims failed"),
            }
        }
        Ok(Stale { events: claims, read })
    }
}
