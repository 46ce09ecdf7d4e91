//! `turnstile-lock` on a single real Redis (from `scripts/stack`, or a
//! private redis-server where a test must kill it).

#![allow(clippy::unwrap_used)]

mod support;

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use futures::FutureExt;
use turnstile_lock::{LockBackend, LockClient, LockError, backend::redis::RedisLockBackend, testsuite::ContractEnv};

use support::{PrivateRedis, delete_lease_keys, redis_url, unique};

async fn backend() -> Arc<dyn LockBackend> {
    Arc::new(
        RedisLockBackend::connect(&redis_url())
            .await
            .expect("redis from scripts/stack must be up"),
    )
}

fn env(name: &str) -> ContractEnv {
    ContractEnv {
        connect: Arc::new(|| backend().boxed()),
        vanish: Arc::new(|resource: String| async move { delete_lease_keys(&[redis_url()], &resource).await }.boxed()),
        namespace: unique(name),
    }
}

turnstile_lock::contract_tests!(env);
// Release wake-ups are pushed, so a waiter is woken by the release itself.
turnstile_lock::contract_tests!(@each env, release_wakes_a_subscriber, waiter_gets_the_lock_on_release);

/// The fence counter lives in memory only; killing Redis loses it. The next
/// token must still be greater than every token issued before the crash.
#[tokio::test]
async fn tokens_keep_increasing_across_a_redis_restart() -> Result<()> {
    let mut server = PrivateRedis::start().await?;
    let locks = LockClient::new(Arc::new(RedisLockBackend::connect(&server.url()).await?));
    let resource = unique("restart");
    let mut before = Vec::new();
    for _ in 0..50 {
        let lease = locks.try_acquire(&resource, Duration::from_secs(5)).await?;
        before.push(lease.token());
        lease.release().await?;
    }
    server.kill().await?;
    server.restart().await?;
    // The same client reconnects on its own; the wait absorbs the reconnect.
    let after = locks
        .acquire(&resource, Duration::from_secs(5), Duration::from_secs(10))
        .await?;
    let newest_before = before.iter().max().copied().expect("tokens were issued");
    assert!(
        after.token() > newest_before,
        "token {} after restart is not above {newest_before}",
        after.token()
    );
    after.release().await?;
    Ok(())
}

/// A counter that data loss reset and that an attempt counted before its
/// holder could seed it (the holder crashed in between) is seeded by the
/// next holder: its token comes from the clock, above every earlier one,
/// not from the small count.
#[tokio::test]
async fn a_reset_counter_is_seeded_by_the_next_holder() -> Result<()> {
    let locks = LockClient::new(backend().await);
    let resource = unique("reseed");
    let first = locks.try_acquire(&resource, Duration::from_secs(5)).await?;
    let seeded = first.token();
    first.release().await?;
    assert!(
        seeded.get() > 1_000_000_000_000_000,
        "a first token is the clock: {seeded}"
    );
    // Data loss, then three attempts counted with no seed.
    let mut redis = ::redis::Client::open(redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let fence = format!("turnstile:{{{resource}}}:fence");
    let _: () = ::redis::cmd("SET").arg(&fence).arg(3).query_async(&mut redis).await?;
    let next = locks.try_acquire(&resource, Duration::from_secs(5)).await?;
    let reseeded = next.token();
    assert!(reseeded > seeded, "{reseeded} after a reset, {seeded} before");
    next.release().await?;
    let again = locks.try_acquire(&resource, Duration::from_secs(5)).await?;
    assert_eq!(again.token().get(), reseeded.get() + 1, "counted on from the seed");
    again.release().await?;
    Ok(())
}

/// A dropped guard releases in the background without blocking its caller.
#[tokio::test]
async fn dropped_guard_releases() -> Result<()> {
    let resource = unique("drop");
    let locks = LockClient::new(backend().await);
    let lease = locks.try_acquire(&resource, Duration::from_secs(60)).await?;
    drop(lease);
    // Far shorter than the 60 s ttl: only the background release frees it.
    let next = locks
        .acquire(&resource, Duration::from_secs(5), Duration::from_secs(10))
        .await?;
    next.release().await?;
    Ok(())
}

#[tokio::test]
async fn unreachable_redis_is_a_typed_error() {
    // Port 1 on loopback: nothing listens there.
    let err = RedisLockBackend::connect("redis://127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, LockError::Unavailable { .. }), "got {err:?}");
    assert!(err.is_retryable());
}
