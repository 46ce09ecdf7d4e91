//! What a user of the coordinator supplies: how a message becomes an event,
//! which resource an event is about, and how one resource's events are
//! applied under the lease's fencing token.

use std::{fmt, future::Future, pin::Pin};

use tokio_util::sync::CancellationToken;
pub use turnstile_lock::FencingToken;

/// A future to run once the effects committed, overlapping the lease's
/// release: a cache update, say. Its failure is the handler's to log.
pub type AfterEffects = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Per-resource event handling. The coordinator calls [`Handler::handle`]
/// with one resource's events at a time, in the order they were written
/// to the partition, under a lease on the resource; every write the
/// handler makes must carry the lease's token and be refused by its store
/// when an older or equal token than the last accepted one comes
/// ([`crate::postgres::advance_fence`] does that for Postgres). The
/// handler must be idempotent per event: a batch whose offset was not
/// stored is handed over again, and an event handled before must then be
/// reported as it stands, not applied twice.
pub trait Handler: Send + Sync + 'static {
    /// The event, decoded and validated.
    type Event: Send + Sync + 'static;
    /// What an event is about, and what its message is keyed by.
    type Resource: Clone + PartialEq + fmt::Display + Send + Sync + 'static;
    /// What handling produced for the announcer (use `()` without one).
    type Announcement: Send + 'static;
    /// Why handling failed; see [`HandlerError`].
    type Error: HandlerError;

    /// The causes a [`Refusal`] may name, so that their dead-letter counts
    /// exist (at 0) from the start.
    const REFUSAL_CAUSES: &'static [&'static str] = &[];

    /// The dependencies a handler's errors may blame, so that their
    /// failure counts exist (at 0) from the start.
    const DEPENDENCIES: &'static [&'static str] = &[];

    /// Whether the lease is renewed while [`Handler::handle`] runs (every
    /// third of its ttl), with [`Work::lease_lost`] firing if a renewal
    /// fails. A handler whose work always ends well within the ttl (one
    /// transaction of milliseconds) can save the renewal task: the fence,
    /// not the lease, is what refuses a late write.
    const KEEP_LEASE_ALIVE: bool = true;

    /// A message's event, or why it is none: the message then goes to the
    /// dead-letter topic (cause `invalid`) and the partition moves on.
    fn decode(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Self::Event, String>;

    /// The resource `event` is about. Its messages are keyed by it, so one
    /// resource's events share a partition.
    fn resource<'e>(&self, event: &'e Self::Event) -> &'e Self::Resource;

    /// A valid event as a message again (its key and payload), for the
    /// dead-letter topic.
    fn encode(&self, event: &Self::Event) -> (String, Vec<u8>);

    /// Applies `work`'s events, in order, every write fenced by `token`.
    /// [`Fenced::Stale`] says the store refused the token: the coordinator
    /// then raises the lock's counter above `last_accepted` and calls again
    /// once with a new lease.
    fn handle(
        &self,
        work: Work<'_, Self>,
        token: FencingToken,
    ) -> impl Future<Output = Result<Fenced<Handled<Self>>, Self::Error>> + Send;
}

/// One resource's events, and what the coordinator knows of them.
pub struct Work<'a, H: Handler + ?Sized> {
    /// The resource.
    pub resource: &'a H::Resource,
    /// Its events, in partition order.
    pub events: &'a [H::Event],
    /// Where each event came from (same order).
    pub origins: &'a [Origin],
    /// Whether they came from the topic or the sweeper.
    pub source: Source,
    /// Fires if the lease is lost meanwhile, for a handler that keeps it
    /// alive ([`Handler::KEEP_LEASE_ALIVE`]; otherwise nothing watches it
    /// and it never fires): a handler with several steps should stop
    /// between them (its writes would be refused anyway).
    pub lease_lost: CancellationToken,
}

impl<H: Handler + ?Sized> fmt::Debug for Work<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Work")
            .field("resource", &self.resource.to_string())
            .field("events", &self.events.len())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Where a batch of events came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Consumed from the topic: the offset waits for the announcements.
    Consumed,
    /// Found by the sweeper: no offset waits, so announcements must be
    /// owed in the same transaction as the effects (an outbox) if the
    /// handler has an announcer.
    Swept,
}

/// Where an event came from: the producer's trace context and the
/// request's correlation id, both read from the message's headers.
#[derive(Clone, Default)]
pub struct Origin {
    /// The producer's trace context (empty without a `traceparent`).
    pub trace: opentelemetry::Context,
    /// The `correlation-id` header.
    pub correlation_id: Option<String>,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

/// What the store said of a fenced write.
#[derive(Debug)]
pub enum Fenced<T> {
    /// The token was accepted; the effects are committed.
    Applied(T),
    /// The token was refused: the store had already accepted
    /// `last_accepted`, which is not older.
    Stale {
        /// The newest token the store accepted.
        last_accepted: u64,
    },
}

/// What handling one resource's events produced.
pub struct Handled<H: Handler + ?Sized> {
    /// To announce, in order, once the effects committed.
    pub announcements: Vec<H::Announcement>,
    /// Events that no effect could apply to: to the dead-letter topic.
    pub refused: Vec<Refusal>,
    /// Run after the commit while the lease is released.
    pub after: Option<AfterEffects>,
}

impl<H: Handler + ?Sized> fmt::Debug for Handled<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handled")
            .field("announcements", &self.announcements.len())
            .field("refused", &self.refused)
            .field("after", &self.after.is_some())
            .finish()
    }
}

impl<H: Handler + ?Sized> Handled<H> {
    /// Nothing to announce, refuse or run after.
    pub fn nothing() -> Self {
        Self {
            announcements: Vec::new(),
            refused: Vec::new(),
            after: None,
        }
    }
}

/// An event the handler could apply nothing for (an event naming a record
/// that does not exist, say), for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Its index in [`Work::events`].
    pub index: usize,
    /// The `cause` label and `dead-letter-cause` header: one of
    /// [`Handler::REFUSAL_CAUSES`].
    pub cause: &'static str,
    /// Why, for the `dead-letter-reason` header.
    pub reason: String,
}

/// A handler's failure, classed so the coordinator knows what to do: a
/// transient one (a dependency down) rewinds the partition and backs off
/// without a bound, since the events are still owed their effects; any
/// other is the input's, and after [`crate::POISON_ATTEMPTS`] the events
/// go to the dead-letter topic.
pub trait HandlerError: std::error::Error + Send + Sync + 'static {
    /// Whether trying again later may succeed.
    fn is_transient(&self) -> bool;

    /// The dependency to blame, for `turnstile_worker_dependency_failures_total`.
    fn dependency(&self) -> &'static str;
}
