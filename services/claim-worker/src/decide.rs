//! Deciding one resource's claims: the claim worker's handler.
//!
//! `turnstile-coordinator` hands the [`Decider`] one resource's claims at a
//! time, in partition order, under the resource's lease. They are decided
//! in one Postgres transaction that first moves the resource's fence to
//! the lease's token ([`store::decide_fenced`]); the database refuses a
//! token that is not newer than the last it accepted, and the coordinator
//! then repairs the lock's counter and tries once more. The cache is
//! updated after the commit, while the lease is released.
//!
//! A message becomes a claim event only if it decodes into valid domain
//! values (the same rules the API applies) and its key is the resource it
//! names, the key every claim of that resource is partitioned by.

use std::{collections::HashMap, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};
use turnstile_claim::{ClaimDecided, ClaimId, ClaimRequested, Decision, RejectReason, ResourceKey, UnixMillis};
use turnstile_coordinator::{Fenced, Handled, Handler, HandlerError, Origin, Refusal, Source, Work};
use turnstile_lock::FencingToken;
use turnstile_store::{self as store, FencedOutcome, StoreError, cache::ResourceCache};

use crate::WorkerMetrics;

/// The dead-letter cause of a valid event naming no claim of its resource.
pub(crate) const ORPHAN: &str = "orphan";

/// Why a resource's claims were not decided this time: Postgres failed.
#[derive(Debug, thiserror::Error)]
#[error("postgres failed")]
pub(crate) struct DecideFailure(#[from] StoreError);

impl HandlerError for DecideFailure {
    /// Anything but a transient failure is a property of the input, which
    /// no retry fixes.
    fn is_transient(&self) -> bool {
        self.0.is_transient()
    }

    fn dependency(&self) -> &'static str {
        "postgres"
    }
}

/// Decides claims. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Decider {
    pub(crate) pool: PgPool,
    pub(crate) cache: ResourceCache,
    pub(crate) metrics: WorkerMetrics,
    /// The topic their decisions go to, for those owed in the outbox.
    pub(crate) decided_topic: String,
}

impl Handler for Decider {
    type Event = ClaimRequested;
    type Resource = ResourceKey;
    type Announcement = ClaimDecided;
    type Error = DecideFailure;

    const REFUSAL_CAUSES: &'static [&'static str] = &[ORPHAN];
    const DEPENDENCIES: &'static [&'static str] = &["postgres"];
    /// One transaction of milliseconds under a lease of seconds: a renewal
    /// task per batch would cost more than it could save, and the fence
    /// refuses a write that outlived its lease.
    const KEEP_LEASE_ALIVE: bool = false;

    fn decode(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<ClaimRequested, String> {
        check(key, payload)
    }

    fn resource<'e>(&self, event: &'e ClaimRequested) -> &'e ResourceKey {
        &event.resource
    }

    fn encode(&self, event: &ClaimRequested) -> (String, Vec<u8>) {
        (event.resource.to_string(), turnstile_bus::encode(event))
    }

    /// One resource's claims in one fenced transaction, in a child span of
    /// the coordinator's; the cache update (its own span) runs after the
    /// commit. A swept batch owes its announcements in the transaction.
    async fn handle(&self, work: Work<'_, Self>, fence: FencingToken) -> Result<Fenced<Handled<Self>>, DecideFailure> {
        let started = Instant::now();
        let correlation_id = work.origins.first().and_then(|o| o.correlation_id.as_deref());
        let owe = work.source == Source::Swept;
        let outcome = self
            .decide_with_retry(work.resource, fence, work.events, owe)
            .instrument(info_span!(
                "db",
                otel.name = "decide_fenced claims",
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.name = "decide_fenced",
                db.collection.name = "claims",
            ))
            .await?;
        let (decided, stock) = match outcome {
            FencedOutcome::Applied { decided, stock } => (decided, stock),
            FencedOutcome::StaleFence { last_accepted } => {
                return Ok(Fenced::Stale {
                    last_accepted: u64::try_from(last_accepted).unwrap_or(0),
                });
            }
        };
        let name = work.resource.to_string();
        let after = stock.map(|(remaining, total)| {
            let (cache, resource, name) = (self.cache.clone(), work.resource.clone(), name.clone());
            let update = async move {
                if let Err(e) = cache.update(&resource, fence.as_i64(), remaining, total).await {
                    // The cache is a view; Postgres already holds the truth.
                    warn!(resource = %name, error = %e, "cache update failed");
                }
            };
            Box::pin(update.instrument(info_span!(
                "cache",
                otel.name = "cache update",
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = "EVALSHA",
            ))) as turnstile_coordinator::AfterEffects
        });
        for orphan in &decided.orphans {
            warn!(
                resource = %name,
                claim_id = %orphan.claim_id,
                reason = orphan.reason.as_str(),
                "event names no claim of its resource; dead-lettering it"
            );
        }
        let granted = decided
            .decisions
            .iter()
            .filter(|d| matches!(d, Decision::Granted(_)))
            .count();
        info!(
            correlation_id,
            resource = %name,
            fence = fence.get(),
            claims = decided.decisions.len(),
            granted,
            decided_before = decided.earlier.len(),
            orphans = decided.orphans.len(),
            remaining = stock.map(|(remaining, _)| remaining),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "batch decided"
        );
        let announcements = self.announcements(&work, fence, &decided);
        // Orphans go to the dead-letter topic from the consume path only:
        // a swept claim has a row, so it is never one.
        let refused = decided
            .orphans
            .iter()
            .filter_map(|orphan| {
                let index = work.events.iter().position(|e| e.claim_id == orphan.claim_id)?;
                Some(Refusal {
                    index,
                    cause: ORPHAN,
                    reason: orphan.reason.as_str().to_owned(),
                })
            })
            .collect();
        Ok(Fenced::Applied(Handled {
            announcements,
            refused,
            after,
        }))
    }
}

impl Decider {
    /// The `ClaimDecided` events of a decided group, and the decision
    /// metrics of the claims decided now.
    fn announcements(
        &self,
        work: &Work<'_, Self>,
        fence: FencingToken,
        decided: &store::BatchDecided,
    ) -> Vec<ClaimDecided> {
        let decided_at_ms = UnixMillis::now().get();
        let by_id: HashMap<ClaimId, (&ClaimRequested, &Origin)> = work
            .events
            .iter()
            .zip(work.origins)
            .map(|(e, o)| (e.claim_id, (e, o)))
            .collect();
        let mut out = Vec::with_capacity(decided.decisions.len() + decided.earlier.len());
        for decision in &decided.decisions {
            let Some(&(event, origin)) = by_id.get(&decision.claim_id()) else {
                continue;
            };
            let (status, reason) = decision.outcome();
            let latency_ms = (decided_at_ms - event.accepted_at_ms.get()).max(0);
            self.metrics
                .decided
                .with_label_values(&[reason.map_or("granted", |r| r.as_str())])
                .inc();
            self.metrics.decide_latency.observe(latency_ms as f64 / 1000.0);
            debug!(
                correlation_id = origin.correlation_id.as_deref(),
                tenant_id = event.tenant().as_str(),
                claim_id = %event.claim_id,
                fence = fence.get(),
                status = status.as_str(),
                reason = reason.map(RejectReason::as_str),
                latency_ms,
                "claim decided"
            );
            out.push(ClaimDecided {
                claim_id: event.claim_id,
                resource: work.resource.clone(),
                status,
                reason,
                fence: fence.get(),
                decided_at_ms,
                door: decided.facts.get(&event.claim_id).cloned(),
            });
        }
        for earlier in &decided.earlier {
            if !by_id.contains_key(&earlier.claim_id) {
                continue;
            }
            out.push(ClaimDecided {
                claim_id: earlier.claim_id,
                resource: work.resource.clone(),
                status: earlier.status,
                reason: earlier.reason,
                fence: earlier.fence,
                decided_at_ms: earlier.decided_at_ms,
                door: None,
            });
        }
        out
    }

    /// Retries transient Postgres failures a few times with backoff before
    /// giving the batch up for redelivery.
    async fn decide_with_retry(
        &self,
        resource: &ResourceKey,
        fence: FencingToken,
        events: &[ClaimRequested],
        owe: bool,
    ) -> Result<FencedOutcome, StoreError> {
        // Fault injection for the tests: a statement the database refuses
        // whatever is retried, the way a poison batch fails.
        fail::fail_point!("decide-refused", |_| Err(StoreError::Query(sqlx::Error::RowNotFound)));
        (|| async {
            if owe {
                store::decide_fenced_owing(&self.pool, resource, fence, events, &self.decided_topic).await
            } else {
                store::decide_fenced(&self.pool, resource, fence, events).await
            }
        })
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_millis(500))
                .with_max_times(3)
                .with_jitter(),
        )
        .when(StoreError::is_transient)
        .notify(|e, after| warn!(error = %e, retry_in_ms = after.as_millis() as u64, "postgres write failed"))
        .await
    }
}

/// A message's event, or why it is none: its payload must decode into a
/// valid event, and its key must name the event's resource: `tenant/kind:id`,
/// or `kind:id` as an API from before resources had tenants keyed it (such
/// a message may sit in the topic across an upgrade; the fence, not the
/// partition, is what keeps its decision safe).
fn check(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<ClaimRequested, String> {
    let event: ClaimRequested = turnstile_bus::decode(payload)?;
    let expected = event.resource.to_string();
    let legacy = event.resource.local_name();
    if key != Some(expected.as_bytes()) && key != Some(legacy.as_bytes()) {
        return Err(format!("message key is not the event's resource {expected}"));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(quantity: i64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "claim_id": "5f0c6f5e-8d7a-5b8e-9c1d-2e3f4a5b6c7d",
            "tenant_id": "default",
            "resource": {"kind": "coupon", "id": "SPRING"},
            "user_id": "u1",
            "quantity": quantity,
            "accepted_at_ms": 1_795_000_000_000_i64,
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_event_under_its_resource_key_is_taken() {
        assert!(check(Some(b"default/coupon:SPRING"), Some(&payload(1))).is_ok());
        assert!(
            check(Some(b"coupon:SPRING"), Some(&payload(1))).is_ok(),
            "the key before tenants"
        );
    }

    #[test]
    fn invalid_events_and_wrong_keys_are_dead_letters() {
        let refused = [
            (Some(&b"coupon:SPRING"[..]), Some(payload(0))),
            (Some(&b"coupon:SPRING"[..]), Some(b"not json".to_vec())),
            (Some(&b"coupon:SPRING"[..]), None),
            (Some(&b"coupon:OTHER"[..]), Some(payload(1))),
            (Some(&b"other/coupon:SPRING"[..]), Some(payload(1))),
            (None, Some(payload(1))),
        ];
        for (key, body) in refused {
            let reason = check(key, body.as_deref()).unwrap_err();
            assert!(!reason.is_empty());
        }
    }
}
