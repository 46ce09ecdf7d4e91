//! One resource's events under its lease: take the lease and its fencing
//! token, hand the events to the handler with the token, release.
//!
//! The store refuses a token that is not newer than the last it accepted.
//! That refusal has two causes: a newer holder exists (this member is a
//! zombie), or the lock store's counter fell behind the store (restored
//! from an older snapshot, a failover to a lagging replica, a switch of
//! lock backend). Either way the coordinator raises the lock's counter
//! above the store's fence and tries once more at once: for a zombie that
//! changes nothing (the events were handled by the newer holder, and the
//! handler reports them as they stand), and a counter that fell behind is
//! repaired by the first refused write.
//!
//! The lease is kept alive while the handler runs (unless the handler says
//! its work is short: [`crate::Handler::KEEP_LEASE_ALIVE`]), and the
//! handler is told when it is lost ([`crate::Work::lease_lost`]);
//! correctness never rests on that signal, which a pause between the last
//! check and a write defeats, but on the fence.

use std::time::Duration;

use opentelemetry::trace::TraceContextExt as _;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field::Empty, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use turnstile_lock::{FencingToken, LockClient, LockError};

use crate::{
    handler::{Fenced, Handled, Handler, HandlerError, Origin, Source, Work},
    metrics::CoordinatorMetrics,
};

/// How a resource's lease is taken.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTerms {
    /// How long the lease lasts without renewal: how long a resource stays
    /// locked when its holder dies.
    pub ttl: Duration,
    /// How long to wait for a contended lease before the batch is retried.
    pub wait: Duration,
}

/// Why a resource's events were not handled this time.
#[derive(Debug, thiserror::Error)]
pub enum HandleFailure<E> {
    /// The lease could not be taken.
    #[error("lock unavailable")]
    Lock(#[from] LockError),
    /// The handler failed.
    #[error("handler failed")]
    Handler(#[source] E),
    /// The store refused the token again after the lock's counter was
    /// raised above its fence.
    #[error("fencing token {fence} is stale: the store already accepted {last_accepted}")]
    StaleFence {
        /// The refused token.
        fence: u64,
        /// The newest token the store accepted.
        last_accepted: u64,
    },
}

impl<E: HandlerError> HandleFailure<E> {
    /// The dependency to blame, for metrics.
    pub fn dependency(&self) -> &'static str {
        match self {
            Self::Lock(_) => "lock",
            Self::Handler(e) => e.dependency(),
            Self::StaleFence { .. } => "fence",
        }
    }

    /// Whether trying again later may succeed. Anything else is a property
    /// of the input, which no retry fixes.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Lock(e) => e.is_retryable(),
            Self::Handler(e) => e.is_transient(),
            Self::StaleFence { .. } => true,
        }
    }
}

/// Takes leases and hands resources' events to the handler. Cheap to clone.
#[derive(Clone)]
pub struct Leaseholder {
    pub(crate) locks: LockClient,
    pub(crate) terms: LeaseTerms,
    pub(crate) metrics: CoordinatorMetrics,
    /// The topic the events come from, for the consumer span.
    pub(crate) topic: String,
}

impl std::fmt::Debug for Leaseholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaseholder")
            .field("backend", &self.locks.backend_name())
            .field("terms", &self.terms)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Leaseholder {
    /// Leases from `locks` on `terms`, for events from `topic`.
    pub fn new(locks: LockClient, terms: LeaseTerms, metrics: CoordinatorMetrics, topic: impl Into<String>) -> Self {
        Self {
            locks,
            terms,
            metrics,
            topic: topic.into(),
        }
    }

    /// One resource's events under one lease, in a consumer span that
    /// continues the first event's trace (and links the others'), with a
    /// child span for the lock. Returns the span with what was handled: the
    /// announcements continue it.
    pub async fn handle<H: Handler>(
        &self,
        handler: &H,
        resource: &H::Resource,
        events: &[H::Event],
        origins: &[Origin],
        source: Source,
    ) -> Result<(Handled<H>, tracing::Span), HandleFailure<H::Error>> {
        let topic = self.topic.as_str();
        let correlation_id = origins.first().and_then(|o| o.correlation_id.as_deref());
        let span = info_span!(
            "process",
            otel.name = %format_args!("process {topic}"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = topic,
            messaging.batch.message_count = events.len(),
            turnstile.resource = %resource,
            correlation_id,
            fence = Empty,
            otel.status_code = Empty,
        );
        if let Some((first, rest)) = origins.split_first() {
            let _ = span.set_parent(first.trace.clone());
            for origin in rest {
                span.add_link(origin.trace.span().span_context().clone());
            }
        }
        let result = self
            .handle_repairing(handler, resource, events, origins, source, correlation_id)
            .instrument(span.clone())
            .await;
        match result {
            Ok(handled) => Ok((handled, span)),
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                Err(e)
            }
        }
    }

    /// Handles, and after a stale-token refusal raises the lock's counter
    /// above the store's fence and handles again, once.
    async fn handle_repairing<H: Handler>(
        &self,
        handler: &H,
        resource: &H::Resource,
        events: &[H::Event],
        origins: &[Origin],
        source: Source,
        correlation_id: Option<&str>,
    ) -> Result<Handled<H>, HandleFailure<H::Error>> {
        let name = resource.to_string();
        let once = || self.handle_once(handler, &name, resource, events, origins, source, correlation_id);
        match once().await {
            Err(HandleFailure::StaleFence { fence, last_accepted }) => {
                self.locks.raise_floor(&name, FencingToken::new(last_accepted)).await?;
                self.metrics.fence_repairs.inc();
                info!(resource = %name, fence, last_accepted, "raised the lock's token counter above the store's fence");
                once().await
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn handle_once<H: Handler>(
        &self,
        handler: &H,
        name: &str,
        resource: &H::Resource,
        events: &[H::Event],
        origins: &[Origin],
        source: Source,
        correlation_id: Option<&str>,
    ) -> Result<Handled<H>, HandleFailure<H::Error>> {
        let lock_span = info_span!(
            "lock",
            otel.name = "lock acquire",
            turnstile.lock.backend = self.locks.backend_name(),
            turnstile.lock.resource = name,
            turnstile.lock.fence = Empty,
        );
        let mut lease = self
            .locks
            .acquire(name, self.terms.ttl, self.terms.wait)
            .instrument(lock_span.clone())
            .await?;
        let fence = lease.token();
        lock_span.record("turnstile.lock.fence", fence.get());
        tracing::Span::current().record("fence", fence.get());
        // Watching the lease is a task per lease: only for handlers that
        // want it.
        let lease_lost = if H::KEEP_LEASE_ALIVE {
            lease.keep_alive()
        } else {
            CancellationToken::new()
        };
        hold_lease_before_write(name, fence).await;
        let work = Work {
            resource,
            events,
            origins,
            source,
            lease_lost,
        };
        let outcome = handler.handle(work, fence).await;
        // The writes are fenced; the lease only needed to cover them.
        // Releasing overlaps with the after-effects: both are one round trip.
        let release = async {
            if let Err(e) = lease.release().await {
                debug!(resource = name, error = %e, "lease release after batch");
            }
        };
        match outcome {
            Ok(Fenced::Applied(mut handled)) => {
                match handled.after.take() {
                    Some(after) => {
                        tokio::join!(release, after);
                    }
                    None => release.await,
                }
                Ok(handled)
            }
            Ok(Fenced::Stale { last_accepted }) => {
                release.await;
                self.metrics.fence_rejections.inc();
                warn!(
                    correlation_id,
                    resource = name,
                    fence = fence.get(),
                    last_accepted,
                    "database refused a stale fencing token"
                );
                Err(HandleFailure::StaleFence {
                    fence: fence.get(),
                    last_accepted,
                })
            }
            Err(e) => {
                release.await;
                Err(HandleFailure::Handler(e))
            }
        }
    }
}

/// Fault injection for the chaos tests: with `FAILPOINTS` set to
/// `hold-lease-before-write=1*return(MS)`, the member holds its lease MS
/// milliseconds between taking the token and handing the events over: the
/// window in which a member stopped (SIGSTOP) becomes a zombie. A lease
/// kept alive stays its own through a hold of a running member.
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
