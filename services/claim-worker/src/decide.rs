//! Deciding one resource's claims: lease, fenced write, cache.
//!
//! Under the resource's lease, the claims are decided in one Postgres
//! transaction that first moves the resource's fence to the lease's token
//! ([`store::decide_fenced`]). The database refuses a token that is not
//! newer than the last it accepted. That refusal has two causes: a newer
//! holder exists (this worker is a zombie), or the lock store's counter fell
//! behind the database (restored from an older snapshot, a failover to a
//! lagging replica, a switch of lock backend). Either way the worker raises
//! the lock's counter above the database's fence and tries once more at
//! once: for a zombie that changes nothing (the claims were decided by the
//! newer holder and are reported as such), and a counter that fell behind
//! is repaired by the first refused write.

use std::{collections::HashMap, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use opentelemetry::trace::TraceContextExt;
use sqlx::PgPool;
use tokio::time::{Instant, sleep};
use tracing::{Instrument, debug, field::Empty, info, info_span, warn};
use turnstile_claim::{ClaimDecided, ClaimId, ClaimRequested, Decision, RejectReason, ResourceKey, UnixMillis};
use turnstile_coordinator::batch::group_by_resource;
use turnstile_lock::{FencingToken, LockClient};
use turnstile_store::{self as store, FencedOutcome, Orphan, StoreError, cache::ResourceCache};

use crate::{WorkerMetrics, consume::Origin};

/// The claims of one resource within a batch, in arrival order.
pub(crate) struct ResourceGroup {
    pub(crate) resource: ResourceKey,
    pub(crate) events: Vec<ClaimRequested>,
    pub(crate) origins: Vec<Origin>,
}

impl ResourceGroup {
    /// Groups events by resource, keeping each resource's order.
    pub(crate) fn group(items: impl IntoIterator<Item = (ClaimRequested, Origin)>) -> Vec<Self> {
        group_by_resource(items, |(event, _)| &event.resource)
            .into_iter()
            .map(|(resource, items)| {
                let (events, origins) = items.into_iter().unzip();
                Self {
                    resource,
                    events,
                    origins,
                }
            })
            .collect()
    }
}

/// Who announces a group's decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Announcing {
    /// The caller, at once: the consume path, whose offset waits for them.
    Now,
    /// The relay, from the outbox row written with each decision: the
    /// sweeper, which has no offset to hold them back.
    Owed,
}

/// Why a resource's claims were not decided this time.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecideFailure {
    #[error("lock unavailable")]
    Lock(#[from] turnstile_lock::LockError),
    #[error("postgres failed")]
    Store(#[from] StoreError),
    #[error("fencing token {fence} is stale: the database already accepted {last_accepted}")]
    StaleFence { fence: u64, last_accepted: i64 },
}

impl DecideFailure {
    /// The dependency to blame, for metrics.
    pub(crate) fn dependency(&self) -> &'static str {
        match self {
            Self::Lock(_) => "lock",
            Self::Store(_) => "postgres",
            Self::StaleFence { .. } => "fence",
        }
    }

    /// Whether trying again later may succeed. Anything else is a property of
    /// the input, which no retry fixes.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Lock(e) => e.is_retryable(),
            Self::Store(e) => e.is_transient(),
            Self::StaleFence { .. } => true,
        }
    }
}

/// What deciding one resource's claims produced.
pub(crate) struct GroupDecided {
    /// One `ClaimDecided` per claim of the group, decided now or before.
    pub(crate) announcements: Vec<ClaimDecided>,
    /// Events that name no claim of the resource: to the dead-letter topic.
    pub(crate) orphans: Vec<Orphan>,
    /// The consumer span the group was decided in, which the announcement
    /// continues.
    pub(crate) span: tracing::Span,
}

/// Decides resource groups. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Decider {
    pub(crate) pool: PgPool,
    pub(crate) locks: LockClient,
    pub(crate) cache: ResourceCache,
    pub(crate) metrics: WorkerMetrics,
    pub(crate) lock_ttl: Duration,
    pub(crate) lock_wait: Duration,
    /// The topic the claims came from, for the consumer span.
    pub(crate) topic: String,
    /// The topic their decisions go to, for those owed in the outbox.
    pub(crate) decided_topic: String,
}

impl Decider {
    /// One resource's claims under one lease and one fenced transaction, in
    /// a consumer span continuing the first claim's trace (and linking the
    /// others'), with child spans for the lock, the transaction and the
    /// cache update.
    pub(crate) async fn decide(
        &self,
        group: &ResourceGroup,
        announcing: Announcing,
    ) -> Result<GroupDecided, DecideFailure> {
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let topic = self.topic.as_str();
        let correlation_id = group.origins.first().and_then(|o| o.correlation_id.as_deref());
        let span = info_span!(
            "process",
            otel.name = %format_args!("process {topic}"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = topic,
            messaging.batch.message_count = group.events.len(),
            turnstile.resource = %group.resource,
            correlation_id,
            fence = Empty,
            otel.status_code = Empty,
        );
        if let Some((first, rest)) = group.origins.split_first() {
            let _ = span.set_parent(first.trace.clone());
            for origin in rest {
                span.add_link(origin.trace.span().span_context().clone());
            }
        }
        let result = self
            .decide_repairing(group, correlation_id, announcing)
            .instrument(span.clone())
            .await;
        match result {
            Ok((announcements, orphans)) => Ok(GroupDecided {
                announcements,
                orphans,
                span,
            }),
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                Err(e)
            }
        }
    }

    /// Decides, and after a stale-token refusal raises the lock's counter
    /// above the database's fence and decides again, once.
    async fn decide_repairing(
        &self,
        group: &ResourceGroup,
        correlation_id: Option<&str>,
        announcing: Announcing,
    ) -> Result<(Vec<ClaimDecided>, Vec<Orphan>), DecideFailure> {
        match self.decide_once(group, correlation_id, announcing).await {
            Err(DecideFailure::StaleFence { fence, last_accepted }) => {
                let name = group.resource.to_string();
                let floor = FencingToken::new(u64::try_from(last_accepted).unwrap_or(0));
                self.locks.raise_floor(&name, floor).await?;
                self.metrics.fence_repairs.inc();
                info!(resource = %name, fence, last_accepted, "raised the lock's token counter above the database's fence");
                self.decide_once(group, correlation_id, announcing).await
            }
            other => other,
        }
    }

    async fn decide_once(
        &self,
        group: &ResourceGroup,
        correlation_id: Option<&str>,
        announcing: Announcing,
    ) -> Result<(Vec<ClaimDecided>, Vec<Orphan>), DecideFailure> {
        let started = Instant::now();
        let (resource, events) = (&group.resource, group.events.as_slice());
        let name = resource.to_string();
        let lock_span = info_span!(
            "lock",
            otel.name = "lock acquire",
            turnstile.lock.backend = self.locks.backend_name(),
            turnstile.lock.resource = %name,
            turnstile.lock.fence = Empty,
        );
        let lease = self
            .locks
            .acquire(&name, self.lock_ttl, self.lock_wait)
            .instrument(lock_span.clone())
            .await?;
        let fence = lease.token();
        lock_span.record("turnstile.lock.fence", fence.get());
        tracing::Span::current().record("fence", fence.get());
        hold_lease_before_write(&name, fence).await;
        let outcome = self
            .decide_with_retry(resource, fence, events, announcing)
            .instrument(info_span!(
                "db",
                otel.name = "decide_fenced claims",
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.name = "decide_fenced",
                db.collection.name = "claims",
            ))
            .await;
        // The write is fenced; the lease only needed to cover it. Releasing
        // overlaps with the cache update below: both are one round trip.
        let release = async {
            if let Err(e) = lease.release().await {
                debug!(resource = %name, error = %e, "lease release after batch");
            }
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                release.await;
                return Err(e.into());
            }
        };
        let (decided, stock) = match outcome {
            FencedOutcome::Applied { decided, stock } => (decided, stock),
            FencedOutcome::StaleFence { last_accepted } => {
                release.await;
                self.metrics.fence_rejections.inc();
                warn!(
                    correlation_id,
                    resource = %name,
                    fence = fence.get(),
                    last_accepted,
                    "database refused a stale fencing token"
                );
                return Err(DecideFailure::StaleFence {
                    fence: fence.get(),
                    last_accepted,
                });
            }
        };
        match stock {
            Some((remaining, total)) => {
                let cache_update = self
                    .cache
                    .update(resource, fence.as_i64(), remaining, total)
                    .instrument(info_span!(
                        "cache",
                        otel.name = "cache update",
                        otel.kind = "client",
                        db.system.name = "redis",
                        db.operation.name = "EVALSHA",
                    ));
                let ((), cached) = tokio::join!(release, cache_update);
                if let Err(e) = cached {
                    // The cache is a view; Postgres already holds the truth.
                    warn!(resource = %name, error = %e, "cache update failed");
                }
            }
            None => release.await,
        }
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
        let announcements = self.announcements(group, fence, &decided);
        Ok((announcements, decided.orphans))
    }

    /// The `ClaimDecided` events of a decided group, and the decision
    /// metrics of the claims decided now.
    fn announcements(
        &self,
        group: &ResourceGroup,
        fence: FencingToken,
        decided: &store::BatchDecided,
    ) -> Vec<ClaimDecided> {
        let decided_at_ms = UnixMillis::now().get();
        let by_id: HashMap<ClaimId, (&ClaimRequested, &Origin)> = group
            .events
            .iter()
            .zip(&group.origins)
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
                resource: group.resource.clone(),
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
                resource: group.resource.clone(),
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
        announcing: Announcing,
    ) -> Result<FencedOutcome, StoreError> {
        // Fault injection for the tests: a statement the database refuses
        // whatever is retried, the way a poison batch fails.
        fail::fail_point!("decide-refused", |_| Err(StoreError::Query(sqlx::Error::RowNotFound)));
        (|| async {
            match announcing {
                Announcing::Now => store::decide_fenced(&self.pool, resource, fence, events).await,
                Announcing::Owed => {
                    store::decide_fenced_owing(&self.pool, resource, fence, events, &self.decided_topic).await
                }
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

/// Fault injection for the chaos tests: with `FAILPOINTS` set to
/// `hold-lease-before-write=1*return(MS)`,
/// the worker holds its lease MS milliseconds between taking the token and
/// writing, the window in which a stalled worker becomes a zombie.
async fn hold_lease_before_write(resource: &str, fence: FencingToken) {
    let hold_ms: Option<u64> = (|| {
        fail::fail_point!("hold-lease-before-write", |ms| ms.and_then(|v| v.parse().ok()));
        None
    })();
    if let Some(ms) = hold_ms {
        info!(
            resource,
            fence = fence.get(),
            hold_ms = ms,
            "failpoint: holding lease before write"
        );
        sleep(Duration::from_millis(ms)).await;
    }
}
