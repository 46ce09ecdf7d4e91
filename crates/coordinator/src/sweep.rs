//! The sweeper: records whose events never arrived are handled from the
//! store, the record of what was accepted.
//!
//! Kafka is the fast path. An event that was never published (its producer
//! stopped, or Kafka failed, after the record committed) or never consumed
//! leaves its record waiting in the store; the sweeper hands it to the
//! handler under the same lease and fence as the consume path, with
//! [`Source::Swept`], so that its announcements are owed in the same
//! transaction as its effects and sweeping never waits on Kafka. It runs as
//! its own task, so it never holds up polling, and one member at a time
//! sweeps ([`SweepTurn`]). A pass takes at most [`SWEEP_LIMIT`] records,
//! oldest first, and a full pass is followed by the next at once: with the
//! broker down, the sweeper is how events are handled, at the rate they
//! arrive. While this member's Kafka clients reach no broker, the window
//! shrinks to [`SweepTerms::after_without_kafka`].

use std::{future::Future, sync::Arc, time::Duration};

use futures::future::join_all;
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use turnstile_bus::KafkaHealth;

use crate::{
    batch::group_by_resource,
    handler::{Handler, Origin, Source},
    lease::Leaseholder,
};

/// Most records one pass takes.
pub const SWEEP_LIMIT: usize = 2000;

/// How many resources a pass handles at once.
const SWEEP_CONCURRENCY: usize = 8;

/// An error of the store behind a sweep source.
pub type SweepError = Box<dyn std::error::Error + Send + Sync>;

/// Where the sweeper finds records whose events never arrived.
pub trait SweepSource<H: Handler>: Send + Sync + 'static {
    /// The group's one sweeping turn.
    type Turn: SweepTurn;

    /// Opens what the turn is taken through (a connection of its own).
    fn open_turn(&self) -> impl Future<Output = Result<Self::Turn, SweepError>> + Send;

    /// The records still waiting `after` past their acceptance, oldest
    /// first, at most `limit`, as events. A record that makes no valid
    /// event is the source's to settle (reject it), never to skip
    /// silently.
    fn stale(&self, after: Duration, limit: usize) -> impl Future<Output = Result<Stale<H::Event>, SweepError>> + Send;
}

/// What a sweep source found.
#[derive(Debug)]
pub struct Stale<E> {
    /// The events of the valid records.
    pub events: Vec<E>,
    /// The records read, valid or not: a full page (`limit`) means more
    /// may be waiting, and the next pass follows at once.
    pub read: usize,
}

/// Makes one member of the group the sweeper at a time.
pub trait SweepTurn: Send + 'static {
    /// Runs `pass` if no other member is sweeping; returns whether it ran.
    fn run<F: Future<Output = ()> + Send>(&mut self, pass: F) -> impl Future<Output = Result<bool, SweepError>> + Send;
}

/// When the sweeper looks, and how long a record may wait.
#[derive(Debug, Clone, Copy)]
pub struct SweepTerms {
    /// How long a record may wait for its event before it is swept.
    pub after: Duration,
    /// The same while this member's Kafka clients reach no broker: no
    /// event is coming, so waiting only delays the answer.
    pub after_without_kafka: Duration,
    /// How often to look.
    pub every: Duration,
}

/// The sweeper's counters; the user names them (the claim worker's are
/// `turnstile_claims_swept_total` and
/// `turnstile_claims_decided_without_kafka_total`).
#[derive(Debug, Clone)]
pub struct SweepMetrics {
    /// Records found waiting too long and handled from the store.
    pub swept: IntCounter,
    /// Events handled by the sweeper while Kafka was unreachable.
    pub handled_without_kafka: IntCounter,
}

pub(crate) struct Sweeper<H: Handler, S> {
    pub(crate) source: S,
    pub(crate) handler: Arc<H>,
    pub(crate) leaseholder: Leaseholder,
    pub(crate) health: KafkaHealth,
    pub(crate) terms: SweepTerms,
    pub(crate) metrics: SweepMetrics,
}

impl<H: Handler, S: SweepSource<H>> Sweeper<H, S> {
    /// Sweeps every `every` (more often while Kafka is unreachable) until
    /// `stop` fires.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut turn: Option<S::Turn> = None;
        loop {
            let wait = if self.health.is_up() {
                self.terms.every
            } else {
                self.terms.every.min(self.terms.after_without_kafka)
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if turn.is_none() {
                match self.source.open_turn().await {
                    Ok(opened) => turn = Some(opened),
                    Err(e) => {
                        debug!(error = %e, "sweeper cannot reach its store; will retry");
                        continue;
                    }
                }
            }
            let Some(current) = turn.as_mut() else { continue };
            // Full passes follow each other at once, under one turn.
            let passes = async { while self.pass().await >= SWEEP_LIMIT && !stop.is_cancelled() {} };
            // Stopping abandons a pass midway: its transaction rolls back,
            // its lease expires, and the turn goes with its connection,
            // which is dropped with the task.
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

    /// One pass: the oldest stale records, handled resource by resource.
    /// Returns how many records it read.
    async fn pass(&self) -> usize {
        let kafka_up = self.health.is_up();
        let after = if kafka_up {
            self.terms.after
        } else {
            self.terms.after_without_kafka
        };
        let Stale { events: stale, read } = match self.source.stale(after, SWEEP_LIMIT).await {
            Ok(stale) => stale,
            Err(e) => {
                debug!(error = %e, "sweep query failed");
                return 0;
            }
        };
        let found = stale.len();
        if stale.is_empty() {
            return read;
        }
        if kafka_up {
            warn!(
                events = found,
                "handling records left waiting past the sweep window; their events never reached a worker"
            );
        } else {
            info!(
                events = found,
                "kafka unreachable: handling waiting records from the store"
            );
        }
        self.metrics.swept.inc_by(found as u64);
        let handler = self.handler.as_ref();
        // Resources are independent: several are handled at once, each
        // under its own lease and fence.
        let groups = group_by_resource(stale, |event| handler.resource(event));
        for chunk in groups.chunks(SWEEP_CONCURRENCY) {
            let handled = join_all(chunk.iter().map(|(resource, events)| async move {
                let origins = vec![Origin::default(); events.len()];
                self.leaseholder
                    .handle(handler, resource, events, &origins, Source::Swept)
                    .await
            }))
            .await;
            for ((resource, events), handled) in chunk.iter().zip(handled) {
                match handled {
                    Ok((handled, _)) if !kafka_up => self
                        .metrics
                        .handled_without_kafka
                        .inc_by(events.len().saturating_sub(handled.refused.len()) as u64),
                    Ok(_) => {}
                    Err(e) => debug!(resource = %resource, error = %e, "sweep of resource deferred"),
                }
            }
        }
        read
    }
}
