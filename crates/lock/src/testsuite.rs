//! The contract every [`LockBackend`] must pass, run against real stores by
//! each backend's integration tests (and available to third-party backends
//! through the `testsuite` feature).
//!
//! Each check takes a [`ContractEnv`]: a way to open independent clients (as
//! separate processes would) and a way to make a lease vanish behind its
//! holder's back. Resource names carry the env's namespace so checks can run
//! in parallel against one store.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::time::{Instant, sleep, timeout};

use crate::{FencingToken, LockBackend, LockClient, LockError, LockErrorKind, OwnerId};

/// Opens a new, independent backend instance (its own connections).
pub type Connect = Arc<dyn Fn() -> BoxFuture<'static, Arc<dyn LockBackend>> + Send + Sync>;

/// Removes `resource`'s lease from the store directly, as an operator or a
/// data loss would.
pub type Vanish = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// What the contract needs from a backend's test.
#[derive(Clone)]
pub struct ContractEnv {
    pub connect: Connect,
    pub vanish: Vanish,
    /// Prefix for resource names, unique per test.
    pub namespace: String,
}

impl std::fmt::Debug for ContractEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContractEnv")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl ContractEnv {
    fn resource(&self, name: &str) -> String {
        format!("{}:{name}", self.namespace)
    }

    async fn client(&self) -> LockClient {
        LockClient::new((self.connect)().await)
    }
}

/// Generates one `#[tokio::test]` per contract check in a backend's test
/// file, each in its own namespace: `turnstile_lock::contract_tests!(env);`
/// where `env(name: &str) -> ContractEnv`. A new check added here runs
/// against every backend without touching their tests.
#[macro_export]
macro_rules! contract_tests {
    ($env:path) => {
        $crate::contract_tests!(@each $env,
            mutual_exclusion_under_contention,
            tokens_strictly_increase,
            raised_floor_puts_later_tokens_above_it,
            busy_until_expiry_then_taken_over,
            release_is_owner_checked,
            extend_is_owner_checked,
            keep_alive_outlives_ttl,
            lease_lost_fires_when_lease_vanishes,
            lost_fires_at_validity_without_renewal,
            rejects_invalid_requests
        );
    };
    (@each $env:path, $($check:ident),+) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::testsuite::$check(&$env(stringify!($check))).await;
            }
        )+
    };
}

/// Runs every check in the contract, one after the other.
pub async fn run_all(env: &ContractEnv) {
    mutual_exclusion_under_contention(env).await;
    tokens_strictly_increase(env).await;
    raised_floor_puts_later_tokens_above_it(env).await;
    busy_until_expiry_then_taken_over(env).await;
    release_is_owner_checked(env).await;
    extend_is_owner_checked(env).await;
    keep_alive_outlives_ttl(env).await;
    lease_lost_fires_when_lease_vanishes(env).await;
    lost_fires_at_validity_without_renewal(env).await;
    rejects_invalid_requests(env).await;
}

/// 32 tasks over 2 clients increment a non-atomic counter (read, yield,
/// write) under the lock: the count is exact and the tokens seen inside the
/// critical section strictly increase.
pub async fn mutual_exclusion_under_contention(env: &ContractEnv) {
    const TASKS: usize = 32;
    const ROUNDS: usize = 5;
    let resource = env.resource("mutex");
    let clients = [env.client().await, env.client().await];
    let counter = Arc::new(Mutex::new(0u64));
    let tokens = Arc::new(Mutex::new(Vec::<FencingToken>::new()));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let locks = clients[i % 2].clone();
        let (resource, counter, tokens) = (resource.clone(), Arc::clone(&counter), Arc::clone(&tokens));
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let lease = locks
                    .acquire(&resource, Duration::from_secs(10), Duration::from_secs(60))
                    .await
                    .expect("acquire under contention");
                tokens.lock().unwrap().push(lease.token());
                let read = *counter.lock().unwrap();
                // Give any other "holder" every chance to interleave.
                sleep(Duration::from_millis(1)).await;
                *counter.lock().unwrap() = read + 1;
                lease.release().await.expect("release own lease");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        *counter.lock().unwrap(),
        (TASKS * ROUNDS) as u64,
        "lost updates: two holders at once"
    );
    let tokens = tokens.lock().unwrap();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens in critical-section order must strictly increase: {tokens:?}"
    );
}

/// Sequential grants, alternating clients, carry strictly increasing tokens.
pub async fn tokens_strictly_increase(env: &ContractEnv) {
    let resource = env.resource("monotonic");
    let clients = [env.client().await, env.client().await];
    let mut last = None;
    for i in 0..20 {
        let lease = clients[i % 2]
            .try_acquire(&resource, Duration::from_secs(5))
            .await
            .unwrap();
        if let Some(prev) = last {
            assert!(lease.token() > prev, "token {} after {prev}", lease.token());
        }
        last = Some(lease.token());
        lease.release().await.unwrap();
    }
}

/// After `raise_floor(F)`, from any client, every later token is above F,
/// on a resource never locked and on one in use (whose holder keeps its
/// lease); a floor below the counter changes nothing, and tokens keep
/// strictly increasing across clients afterwards.
pub async fn raised_floor_puts_later_tokens_above_it(env: &ContractEnv) {
    let (a, b) = (env.client().await, env.client().await);
    let ttl = Duration::from_secs(5);
    // Above any clock-seeded Redis token (microseconds), exact in Lua.
    let floor = FencingToken::new(1 << 52);

    let fresh = env.resource("floor-fresh");
    a.raise_floor(&fresh, floor).await.unwrap();
    let lease = b.try_acquire(&fresh, ttl).await.unwrap();
    assert!(lease.token() > floor, "token {} under floor {floor}", lease.token());
    lease.release().await.unwrap();

    let used = env.resource("floor-used");
    let mut held = a.try_acquire(&used, ttl).await.unwrap();
    assert!(held.token() <= floor, "a fresh resource starts below 2^52");
    b.raise_floor(&used, floor).await.unwrap();
    held.extend(ttl).await.expect("the holder keeps its lease");
    held.release().await.unwrap();
    let mut last = floor;
    for i in 0..6 {
        let client = if i % 2 == 0 { &a } else { &b };
        if i == 3 {
            // A lower floor is no repair to do.
            client.raise_floor(&used, FencingToken::new(2)).await.unwrap();
        }
        let lease = client.try_acquire(&used, ttl).await.unwrap();
        assert!(lease.token() > last, "token {} after {last}", lease.token());
        last = lease.token();
        lease.release().await.unwrap();
    }

    let empty = a.raise_floor("", floor).await.unwrap_err();
    assert_eq!(empty.kind(), LockErrorKind::InvalidRequest);
}

/// A held lock is busy for others until its ttl runs out; then another
/// client takes it with a greater token, and the first holder can no longer
/// release it.
pub async fn busy_until_expiry_then_taken_over(env: &ContractEnv) {
    let resource = env.resource("expiry");
    let (a, b) = (env.client().await, env.client().await);
    let ttl = Duration::from_millis(400);
    let first = a.try_acquire(&resource, ttl).await.unwrap();
    match b.try_acquire(&resource, ttl).await {
        Err(LockError::Busy { retry_after, .. }) => {
            if let Some(left) = retry_after {
                assert!(left <= ttl, "retry_after {left:?} beyond the ttl");
            }
        }
        other => panic!("expected Busy while held, got {other:?}"),
    }
    let second = b
        .acquire(&resource, Duration::from_secs(10), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(second.token() > first.token());
    let err = first.release().await.unwrap_err();
    assert!(matches!(err, LockError::HeldByOther { .. }), "got {err:?}");
    assert!(
        matches!(a.try_acquire(&resource, ttl).await, Err(LockError::Busy { .. })),
        "release by a former holder must not free the lock"
    );
    second.release().await.unwrap();
}

/// Release by a stranger never frees the lock; release after expiry is a
/// typed error.
pub async fn release_is_owner_checked(env: &ContractEnv) {
    let resource = env.resource("release");
    let backend = (env.connect)().await;
    let locks = LockClient::new(Arc::clone(&backend));
    let mut lease = locks.try_acquire(&resource, Duration::from_millis(300)).await.unwrap();
    let stranger = backend
        .release(&resource, &OwnerId::random(), lease.token())
        .await
        .unwrap_err();
    assert!(matches!(stranger, LockError::HeldByOther { .. }), "got {stranger:?}");
    assert!(matches!(
        locks.try_acquire(&resource, Duration::from_secs(1)).await,
        Err(LockError::Busy { .. })
    ));
    // Wait for the validity to end (the event), then for the store to free it.
    lease.lost().cancelled().await;
    let next = locks
        .acquire(&resource, Duration::from_secs(5), Duration::from_secs(5))
        .await
        .unwrap();
    next.release().await.unwrap();
    let late = lease.release().await.unwrap_err();
    assert!(matches!(late, LockError::Expired { .. }), "got {late:?}");
    assert_eq!(late.kind(), LockErrorKind::LeaseLost);
}

/// Extend by a stranger fails without touching the lease; the holder's
/// extend works until someone else has taken over.
pub async fn extend_is_owner_checked(env: &ContractEnv) {
    let resource = env.resource("extend");
    let backend = (env.connect)().await;
    let locks = LockClient::new(Arc::clone(&backend));
    let mut lease = locks.try_acquire(&resource, Duration::from_millis(300)).await.unwrap();
    let stranger = backend
        .extend(&resource, &OwnerId::random(), lease.token(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(stranger, LockError::HeldByOther { .. }), "got {stranger:?}");
    lease.extend(Duration::from_millis(300)).await.unwrap();
    assert!(lease.is_valid());
    let other = env.client().await;
    let taker = other
        .acquire(&resource, Duration::from_secs(5), Duration::from_secs(5))
        .await
        .unwrap();
    let err = lease.extend(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, LockError::HeldByOther { .. }), "got {err:?}");
    assert!(!lease.is_valid(), "a lease found taken must report itself invalid");
    taker.release().await.unwrap();
}

/// The watchdog keeps a lease held well past three times its ttl.
///
/// The ttl is a second: renewals run every third of it, and a renewal that
/// answers later than the validity left fires the lost signal, so a ttl of a
/// few hundred milliseconds made the check fail whenever a store paused for
/// about 200 ms (ZooKeeper on a busy two-core machine takes that long).
pub async fn keep_alive_outlives_ttl(env: &ContractEnv) {
    let resource = env.resource("keepalive");
    let (a, b) = (env.client().await, env.client().await);
    let ttl = Duration::from_secs(1);
    let mut lease = a.try_acquire(&resource, ttl).await.unwrap();
    let lost = lease.keep_alive();
    // The passage of time is what is under test here.
    sleep(ttl * 4).await;
    assert!(!lost.is_cancelled(), "lease reported lost while renewed");
    assert!(lease.is_valid());
    assert!(
        matches!(b.try_acquire(&resource, ttl).await, Err(LockError::Busy { .. })),
        "renewed lease was taken"
    );
    lease.release().await.unwrap();
}

/// For backends that push release wake-ups (redis, redis-cluster; not part
/// of [`contract_tests!`]'s common set): a subscribed waiter is woken by the
/// release itself, not by its polling fallback.
pub async fn release_wakes_a_subscriber(env: &ContractEnv) {
    let resource = env.resource("wakeup");
    let backend = (env.connect)().await;
    let locks = LockClient::new(Arc::clone(&backend));
    let holder = locks.try_acquire(&resource, Duration::from_secs(30)).await.unwrap();
    let subscription = backend
        .watch_releases(&resource)
        .await
        .unwrap()
        .expect("this backend pushes release wake-ups");
    let woken = subscription.notify().notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    holder.release().await.unwrap();
    timeout(Duration::from_secs(5), woken)
        .await
        .expect("release must wake the subscriber");
}

/// For backends that push release wake-ups: a waiter blocked behind a long
/// lease on another client gets it as soon as it is released, long before
/// the holder's ttl.
pub async fn waiter_gets_the_lock_on_release(env: &ContractEnv) {
    let resource = env.resource("handoff");
    let (a, b) = (env.client().await, env.client().await);
    let holder = a.try_acquire(&resource, Duration::from_secs(60)).await.unwrap();
    let token = holder.token();
    let waiter = {
        let resource = resource.clone();
        tokio::spawn(async move {
            b.acquire(&resource, Duration::from_secs(5), Duration::from_secs(30))
                .await
        })
    };
    holder.release().await.unwrap();
    let lease = waiter.await.unwrap().unwrap();
    assert!(lease.token() > token);
    lease.release().await.unwrap();
}

/// When the lease disappears from the store, the holder is told within the ttl.
pub async fn lease_lost_fires_when_lease_vanishes(env: &ContractEnv) {
    let resource = env.resource("vanish");
    let locks = env.client().await;
    let ttl = Duration::from_millis(900);
    let mut lease = locks.try_acquire(&resource, ttl).await.unwrap();
    let lost = lease.keep_alive();
    (env.vanish)(resource.clone()).await;
    let noticed = Instant::now();
    timeout(ttl, lost.cancelled())
        .await
        .expect("lease-lost signal must fire within the ttl");
    assert!(noticed.elapsed() <= ttl);
    assert!(!lease.is_valid());
}

/// Without renewal, the lost signal fires when the validity runs out, which
/// is before the store lets anyone else in.
pub async fn lost_fires_at_validity_without_renewal(env: &ContractEnv) {
    let resource = env.resource("validity");
    let (a, b) = (env.client().await, env.client().await);
    let ttl = Duration::from_millis(500);
    let mut lease = a.try_acquire(&resource, ttl).await.unwrap();
    let lost = lease.lost();
    lost.cancelled().await;
    assert!(!lease.is_valid());
    let next = b
        .acquire(&resource, Duration::from_secs(5), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(next.token() > lease.token());
    next.release().await.unwrap();
}

/// Malformed requests are refused before reaching the store.
pub async fn rejects_invalid_requests(env: &ContractEnv) {
    let locks = env.client().await;
    let empty = locks.try_acquire("", Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(empty.kind(), LockErrorKind::InvalidRequest);
    let zero = locks
        .acquire(&env.resource("zero"), Duration::ZERO, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(zero.kind(), LockErrorKind::InvalidRequest);
}
