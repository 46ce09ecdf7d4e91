//! [`LockClient`]: waiting, renewal and lease-lost signalling on top of any
//! [`LockBackend`]. This is where a lease becomes a [`LeaseGuard`].

use std::{
    fmt,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    Attempt, FencingToken, LockBackend, LockError, LockErrorKind, LockMetrics, OwnerId, Turn,
    lease::{self, PollBackoff},
};

/// One attempt's outcome once the client has checked the grant is still
/// worth having.
enum Outcome {
    Granted { token: FencingToken, validity: Duration },
    Busy { retry_after: Option<Duration> },
}

/// Settings shared by every lease a [`LockClient`] hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LockConfig {
    /// Delays between attempts on a busy lock when no release wake-up comes.
    pub poll: PollBackoff,
}

/// Takes leases from one backend. Cheap to clone; clones share the backend.
#[derive(Clone)]
pub struct LockClient {
    backend: Arc<dyn LockBackend>,
    config: LockConfig,
    metrics: Arc<LockMetrics>,
}

impl fmt::Debug for LockClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockClient")
            .field("backend", &self.backend)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LockClient {
    /// A client over `backend` whose metrics are not exported.
    pub fn new(backend: Arc<dyn LockBackend>) -> Self {
        let metrics = LockMetrics::unregistered(backend.name());
        Self::with_metrics(backend, LockConfig::default(), metrics)
    }

    /// A client over `backend` reporting into `metrics`.
    pub fn with_metrics(backend: Arc<dyn LockBackend>, config: LockConfig, metrics: LockMetrics) -> Self {
        Self {
            backend,
            config,
            metrics: Arc::new(metrics),
        }
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Takes `resource` for `ttl`, waiting up to `wait` for the current holder.
    ///
    /// Waiters sleep until the backend announces a release (Redis pub/sub),
    /// falling back to polling with full jitter bounded by the holder's
    /// remaining ttl, so a crowd of waiters does not hammer the store. Backend
    /// failures are retried within `wait`; if the wait ends on a failure, that
    /// failure is returned rather than a bare timeout.
    pub async fn acquire(&self, resource: &str, ttl: Duration, wait: Duration) -> Result<LeaseGuard, LockError> {
        validate(resource, ttl)?;
        let asked_at = Instant::now();
        let deadline = asked_at + wait;
        let owner = OwnerId::random();
        if let Some(turn) = self.backend.acquire_in_turn(resource, &owner, ttl, deadline).await {
            // For a queueing store the whole wait in line is the attempt.
            self.metrics.attempt_seconds.observe(asked_at.elapsed().as_secs_f64());
            return self.queued(resource, owner, ttl, asked_at, turn).await;
        }
        let mut attempt_no: u32 = 0;
        let mut releases = None;
        let mut last_failure = None;
        loop {
            // Arm the wake-up before the attempt: a release that lands between
            // a refused attempt and the wait below must still wake us.
            let notify = releases
                .as_ref()
                .map(|s: &crate::ReleaseSubscription| Arc::clone(s.notify()));
            let notified = notify.as_ref().map(|n| n.notified());
            tokio::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let retry_after = match self.attempt(resource, &owner, ttl).await {
                Ok(Outcome::Granted { token, validity }) => {
                    self.metrics.wait_seconds.observe(asked_at.elapsed().as_secs_f64());
                    return Ok(self.guard(resource, owner, token, ttl, validity));
                }
                Ok(Outcome::Busy { retry_after }) => {
                    if releases.is_none() {
                        match self.backend.watch_releases(resource).await {
                            Ok(Some(sub)) => {
                                // Retry at once, now that a release cannot slip by.
                                releases = Some(sub);
                                continue;
                            }
                            Ok(None) => {}
                            Err(e) => debug!(resource, error = %e, "release wake-ups unavailable, polling"),
                        }
                    }
                    retry_after
                }
                Err(e) if e.is_retryable() => {
                    last_failure = Some(e);
                    None
                }
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if now >= deadline {
                self.metrics.timeouts.inc();
                return Err(last_failure.unwrap_or_else(|| LockError::Timeout {
                    resource: resource.to_owned(),
                    waited: now - asked_at,
                }));
            }
            let delay = self.config.poll.delay(attempt_no, retry_after, rand::random::<f64>());
            let wake_at = (now + delay).min(deadline);
            match notified.as_pin_mut() {
                Some(n) => {
                    tokio::select! {
                        () = n => {}
                        () = sleep_until(wake_at) => {}
                    }
                }
                None => sleep_until(wake_at).await,
            }
            attempt_no = attempt_no.saturating_add(1);
        }
    }

    /// Makes every token issued for `resource` from now on greater than
    /// `floor` (see [`LockBackend::raise_floor`]). A fenced writer whose
    /// token was refused calls this with the last token the store accepted,
    /// then acquires again.
    pub async fn raise_floor(&self, resource: &str, floor: FencingToken) -> Result<(), LockError> {
        if resource.is_empty() {
            return Err(LockError::InvalidRequest("resource name is empty"));
        }
        let raised = self.backend.raise_floor(resource, floor).await;
        if raised.is_err() {
            self.metrics.backend_errors.inc();
        }
        raised
    }

    /// Takes `resource` for `ttl` if it is free right now, in one round trip.
    pub async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<LeaseGuard, LockError> {
        validate(resource, ttl)?;
        let owner = OwnerId::random();
        match self.attempt(resource, &owner, ttl).await? {
            Outcome::Granted { token, validity } => Ok(self.guard(resource, owner, token, ttl, validity)),
            Outcome::Busy { retry_after } => Err(LockError::Busy {
                resource: resource.to_owned(),
                retry_after,
            }),
        }
    }

    /// One attempt. A grant that answered too late to leave any validity is
    /// given back and reported busy: every backend gets this rule here.
    async fn attempt(&self, resource: &str, owner: &OwnerId, ttl: Duration) -> Result<Outcome, LockError> {
        let sent = Instant::now();
        let result = self.backend.try_acquire(resource, owner, ttl).await;
        self.metrics.attempt_seconds.observe(sent.elapsed().as_secs_f64());
        match result {
            Ok(Attempt::Acquired { token }) => match lease::validity(ttl, sent.elapsed()) {
                Some(validity) => {
                    self.metrics.acquired.inc();
                    Ok(Outcome::Granted { token, validity })
                }
                None => {
                    self.give_back(resource, owner, token).await;
                    self.metrics.contended.inc();
                    Ok(Outcome::Busy { retry_after: None })
                }
            },
            Ok(Attempt::Busy { retry_after }) => {
                self.metrics.contended.inc();
                Ok(Outcome::Busy { retry_after })
            }
            Err(e) => {
                self.metrics.backend_errors.inc();
                Err(e)
            }
        }
    }

    /// The end of a wait in the backend's own queue.
    async fn queued(
        &self,
        resource: &str,
        owner: OwnerId,
        ttl: Duration,
        asked_at: Instant,
        turn: Result<Turn, LockError>,
    ) -> Result<LeaseGuard, LockError> {
        match turn {
            Ok(Turn::Granted { token, since, queued }) => match lease::validity(ttl, since.elapsed()) {
                Some(validity) => {
                    if queued {
                        self.metrics.contended.inc();
                    }
                    self.metrics.acquired.inc();
                    self.metrics.wait_seconds.observe(asked_at.elapsed().as_secs_f64());
                    Ok(self.guard(resource, owner, token, ttl, validity))
                }
                None => {
                    self.give_back(resource, &owner, token).await;
                    self.metrics.timeouts.inc();
                    Err(LockError::Timeout {
                        resource: resource.to_owned(),
                        waited: asked_at.elapsed(),
                    })
                }
            },
            Ok(Turn::TimedOut) => {
                self.metrics.timeouts.inc();
                Err(LockError::Timeout {
                    resource: resource.to_owned(),
                    waited: asked_at.elapsed(),
                })
            }
            Err(e) => {
                self.metrics.backend_errors.inc();
                Err(e)
            }
        }
    }

    async fn give_back(&self, resource: &str, owner: &OwnerId, token: FencingToken) {
        if let Err(e) = self.backend.release(resource, owner, token).await {
            debug!(resource, error = %e, "giving back a late grant failed; it expires at its ttl");
        }
    }

    fn guard(
        &self,
        resource: &str,
        owner: OwnerId,
        token: FencingToken,
        ttl: Duration,
        validity: Duration,
    ) -> LeaseGuard {
        let granted_at = Instant::now();
        LeaseGuard {
            shared: Arc::new(LeaseShared {
                resource: resource.to_owned(),
                owner,
                token,
                ttl,
                granted_at,
                deadline_nanos: AtomicU64::new(nanos(validity)),
                lost: AtomicBool::new(false),
                lost_signal: OnceLock::new(),
                backend: Arc::clone(&self.backend),
                metrics: Arc::clone(&self.metrics),
            }),
            keeper: None,
            released: false,
        }
    }
}

fn validate(resource: &str, ttl: Duration) -> Result<(), LockError> {
    if resource.is_empty() {
        return Err(LockError::InvalidRequest("resource name is empty"));
    }
    if ttl < Duration::from_millis(10) {
        return Err(LockError::InvalidRequest("ttl must be at least 10ms"));
    }
    Ok(())
}

/// How soon a failed renewal is tried again.
const RENEWAL_RETRY: Duration = Duration::from_millis(10);

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a guard and its keeper task share. Kept allocation-light: a lease
/// that nobody watches costs one `Arc` and no task.
#[derive(Debug)]
struct LeaseShared {
    resource: String,
    owner: OwnerId,
    token: FencingToken,
    ttl: Duration,
    granted_at: Instant,
    /// The instant (as nanoseconds after `granted_at`) after which the lease
    /// must not be relied on; moved forward by each successful renewal.
    deadline_nanos: AtomicU64,
    /// Set once, when the lease is known or presumed lost.
    lost: AtomicBool,
    /// The signal handed to holders, created on first request.
    lost_signal: OnceLock<CancellationToken>,
    backend: Arc<dyn LockBackend>,
    metrics: Arc<LockMetrics>,
}

impl LeaseShared {
    fn deadline(&self) -> Instant {
        self.granted_at + Duration::from_nanos(self.deadline_nanos.load(Ordering::Acquire))
    }

    fn renewed(&self, sent_at: Instant, validity: Duration) {
        let until = nanos((sent_at + validity).saturating_duration_since(self.granted_at));
        self.deadline_nanos.fetch_max(until, Ordering::AcqRel);
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    fn lost_signal(&self) -> CancellationToken {
        let signal = self.lost_signal.get_or_init(CancellationToken::new);
        // The lease may have been lost before anyone asked for the signal.
        if self.is_lost() {
            signal.cancel();
        }
        signal.child_token()
    }

    fn mark_lost(&self, why: &str) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            warn!(resource = %self.resource, fence = self.token.get(), why, "lease lost");
            self.metrics.leases_lost.inc();
        }
        if let Some(signal) = self.lost_signal.get() {
            signal.cancel();
        }
    }
}

#[derive(Debug)]
struct Keeper {
    stop: CancellationToken,
    renewing: bool,
}

/// A held lease. Release it with [`LeaseGuard::release`]; dropping it instead
/// stops its watchdog and releases in the background without blocking.
#[must_use = "dropping a lease guard releases the lock"]
pub struct LeaseGuard {
    shared: Arc<LeaseShared>,
    keeper: Option<Keeper>,
    released: bool,
}

impl fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("resource", &self.shared.resource)
            .field("token", &self.shared.token)
            .field("valid_for", &self.valid_for())
            .finish_non_exhaustive()
    }
}

impl LeaseGuard {
    /// The locked resource.
    pub fn resource(&self) -> &str {
        &self.shared.resource
    }

    /// The fencing token to send with every write made under this lease.
    pub fn token(&self) -> FencingToken {
        self.shared.token
    }

    /// How much longer the lease may be relied on (zero once it may not).
    pub fn valid_for(&self) -> Duration {
        self.shared.deadline().saturating_duration_since(Instant::now())
    }

    /// Whether the lease is still believed held: not reported lost and not
    /// past its validity.
    pub fn is_valid(&self) -> bool {
        !self.shared.is_lost() && !self.valid_for().is_zero()
    }

    /// A signal that fires as soon as the lease is lost: a renewal found it
    /// gone or taken, or its validity (ttl minus clock drift) ran out without
    /// a successful renewal. Work under the lease should stop when it fires.
    ///
    /// Cancelling the returned token yourself does not affect the lease.
    pub fn lost(&mut self) -> CancellationToken {
        self.start_keeper(false);
        self.shared.lost_signal()
    }

    /// Starts renewing the lease in the background every ttl/3 until it is
    /// released, dropped or lost. Returns the lease-lost signal.
    pub fn keep_alive(&mut self) -> CancellationToken {
        self.start_keeper(true);
        self.shared.lost_signal()
    }

    fn start_keeper(&mut self, renew: bool) {
        if let Some(keeper) = &self.keeper {
            if keeper.renewing || !renew {
                return;
            }
            keeper.stop.cancel();
        }
        let stop = CancellationToken::new();
        tokio::spawn(keep_lease(Arc::clone(&self.shared), renew, stop.clone()));
        self.keeper = Some(Keeper { stop, renewing: renew });
    }

    /// Pushes the lease's expiry to `ttl` from now.
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        validate(&self.shared.resource, ttl)?;
        extend_once(&self.shared, ttl).await
    }

    /// Releases the lease. Fails with [`LockError::Expired`] or
    /// [`LockError::HeldByOther`] if it was no longer ours; another owner's
    /// lease is never removed.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        if let Some(keeper) = self.keeper.take() {
            keeper.stop.cancel();
        }
        let s = &self.shared;
        s.metrics.hold_seconds.observe(s.granted_at.elapsed().as_secs_f64());
        let result = s.backend.release(&s.resource, &s.owner, s.token).await;
        if let Err(e) = &result
            && e.kind() == LockErrorKind::LeaseLost
        {
            s.mark_lost("release found the lease gone");
        }
        result
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Some(keeper) = self.keeper.take() {
            keeper.stop.cancel();
        }
        self.shared
            .metrics
            .hold_seconds
            .observe(self.shared.granted_at.elapsed().as_secs_f64());
        // Release off the caller's path; without a runtime the lease simply
        // expires at its ttl.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = Arc::clone(&self.shared);
            runtime.spawn(async move {
                if let Err(e) = shared
                    .backend
                    .release(&shared.resource, &shared.owner, shared.token)
                    .await
                {
                    debug!(resource = %shared.resource, error = %e, "release of dropped lease failed");
                }
            });
        }
    }
}

async fn extend_once(shared: &LeaseShared, ttl: Duration) -> Result<(), LockError> {
    let sent_at = Instant::now();
    match shared
        .backend
        .extend(&shared.resource, &shared.owner, shared.token, ttl)
        .await
    {
        Ok(()) => match lease::validity(ttl, sent_at.elapsed()) {
            Some(validity) => {
                shared.metrics.renewals_ok.inc();
                shared.renewed(sent_at, validity);
                Ok(())
            }
            None => {
                shared.metrics.renewals_failed.inc();
                shared.mark_lost("renewal answered after the new lease would have ended");
                Err(LockError::Expired {
                    resource: shared.resource.clone(),
                })
            }
        },
        Err(e) => {
            shared.metrics.renewals_failed.inc();
            if e.kind() == LockErrorKind::LeaseLost {
                shared.mark_lost("extend found the lease gone");
            }
            Err(e)
        }
    }
}

/// Watches one lease: fires its lost signal at the validity deadline and,
/// when `renew` is set, renews it every ttl/3 before that.
async fn keep_lease(shared: Arc<LeaseShared>, renew: bool, stop: CancellationToken) {
    let interval = lease::renew_interval(shared.ttl);
    let mut next_renewal = Instant::now() + interval;
    loop {
        if shared.is_lost() {
            return;
        }
        // Re-read on every turn: a manual extend may have moved it.
        let deadline = shared.deadline();
        tokio::select! {
            () = stop.cancelled() => return,
            () = sleep_until(deadline) => {
                if Instant::now() >= shared.deadline() {
                    shared.mark_lost("validity ran out before a renewal succeeded");
                    return;
                }
            }
            () = sleep_until(next_renewal), if renew => {
                // A renewal that would answer after the deadline is useless:
                // bound it by the deadline so the lost signal is never late.
                match timeout_at(deadline, extend_once(&shared, shared.ttl)).await {
                    Ok(Ok(())) => next_renewal = Instant::now() + interval,
                    Ok(Err(e)) if e.kind() == LockErrorKind::LeaseLost => return,
                    Ok(Err(e)) => {
                        debug!(resource = %shared.resource, error = %e, "renewal failed, retrying");
                        // Retry soon, but never spin on a failing store.
                        next_renewal = Instant::now() + RENEWAL_RETRY.min(interval);
                    }
                    Err(_) => {
                        shared.mark_lost("renewal did not answer before the validity ran out");
                        return;
                    }
                }
            }
        }
    }
}
