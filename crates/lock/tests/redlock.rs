//! `turnstile-lock` on Redlock over three real, independent Redis masters
//! (from `scripts/stack`, or private redis-servers where a test stops nodes).

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use futures::FutureExt;
use turnstile_lock::{
    LockBackend, LockClient, LockError, LockErrorKind,
    backend::redlock::{RedlockBackend, RedlockConfig},
    testsuite::ContractEnv,
};

use support::{PrivateRedis, delete_lease_keys, redlock_urls, unique};

fn backend_over(urls: &[String]) -> Arc<dyn LockBackend> {
    Arc::new(RedlockBackend::new(urls, RedlockConfig::default()).expect("valid redlock urls"))
}

fn env(name: &str) -> ContractEnv {
    ContractEnv {
        connect: Arc::new(|| async { backend_over(&redlock_urls()) }.boxed()),
        vanish: Arc::new(|resource: String| async move { delete_lease_keys(&redlock_urls(), &resource).await }.boxed()),
        namespace: unique(name),
    }
}

turnstile_lock::contract_tests!(env);

async fn three_private_nodes() -> Result<(Vec<PrivateRedis>, Vec<String>)> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(PrivateRedis::start().await?);
    }
    let urls = nodes.iter().map(PrivateRedis::url).collect();
    Ok((nodes, urls))
}

/// With one master of three down, a majority still grants, and mutual
/// exclusion still holds between two clients.
#[tokio::test]
async fn works_with_one_of_three_nodes_down() -> Result<()> {
    let (mut nodes, urls) = three_private_nodes().await?;
    nodes[1].kill().await?;
    let (a, b) = (
        LockClient::new(backend_over(&urls)),
        LockClient::new(backend_over(&urls)),
    );
    let resource = unique("one-down");
    let lease = a
        .acquire(&resource, Duration::from_secs(5), Duration::from_secs(5))
        .await?;
    let busy = b.try_acquire(&resource, Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(busy, LockError::Busy { .. }),
        "second holder admitted: {busy:?}"
    );
    let token = lease.token();
    lease.release().await?;
    let next = b.try_acquire(&resource, Duration::from_secs(5)).await?;
    assert!(next.token() > token);
    next.release().await?;
    Ok(())
}

/// With two masters of three down there is no majority: acquire refuses with
/// a typed, retryable error instead of granting.
#[tokio::test]
async fn refuses_with_two_of_three_nodes_down() -> Result<()> {
    let (mut nodes, urls) = three_private_nodes().await?;
    nodes[0].kill().await?;
    nodes[2].kill().await?;
    let locks = LockClient::new(backend_over(&urls));
    let err = locks
        .acquire(&unique("two-down"), Duration::from_secs(5), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LockError::NoQuorum {
                granted: 1,
                needed: 2,
                ..
            }
        ),
        "got {err:?}"
    );
    assert_eq!(err.kind(), LockErrorKind::Unavailable);
    Ok(())
}

/// Many clients hammer one resource while a node dies mid-run and comes back
/// empty: at no instant do two of them hold the lock.
#[tokio::test]
async fn never_two_holders_while_a_node_restarts() -> Result<()> {
    let (mut nodes, urls) = three_private_nodes().await?;
    let resource = unique("restart-exclusion");
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (granted, mut progress) = tokio::sync::watch::channel(0usize);
    let granted = Arc::new(granted);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let locks = LockClient::new(backend_over(&urls));
        let (resource, inside, overlaps, granted) = (
            resource.clone(),
            Arc::clone(&inside),
            Arc::clone(&overlaps),
            Arc::clone(&granted),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let Ok(lease) = locks
                    .acquire(&resource, Duration::from_secs(2), Duration::from_secs(20))
                    .await
                else {
                    continue;
                };
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                granted.send_modify(|n| *n += 1);
                let _ = lease.release().await;
            }
        }));
    }
    // Let the crowd get going, then take one node away and bring it back empty.
    progress.wait_for(|n| *n >= 40).await?;
    nodes[2].kill().await?;
    progress.wait_for(|n| *n >= 100).await?;
    nodes[2].restart().await?;
    for task in tasks {
        task.await?;
    }
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two holders inside the critical section"
    );
    let total = *progress.borrow();
    assert!(total >= 150, "the lock kept working: {total} grants");
    Ok(())
}
