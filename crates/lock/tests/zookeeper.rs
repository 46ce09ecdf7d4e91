//! `turnstile-lock` on the real ZooKeeper of `scripts/stack` (tickTime 500 ms,
//! session timeouts 1-30 s).

#![allow(clippy::unwrap_used)]

mod support;

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use futures::FutureExt;
use tokio::time::{Instant, timeout};
use turnstile_lock::{
    LockBackend, LockClient, LockError, LockErrorKind,
    backend::zookeeper::{ZooKeeperConfig, ZooKeeperLockBackend},
    testsuite::ContractEnv,
};
use zookeeper_client as zk;

use support::{Partition, unique};

fn zookeeper_url() -> String {
    std::env::var("TURNSTILE_ZOOKEEPER_URL").unwrap_or_else(|_| "127.0.0.1:2181".to_owned())
}

async fn connect(cluster: &str, session_timeout: Duration) -> ZooKeeperLockBackend {
    ZooKeeperLockBackend::connect(
        cluster,
        ZooKeeperConfig::default().with_session_timeout(session_timeout),
    )
    .await
    .expect("zookeeper from scripts/stack must be up")
}

async fn backend() -> Arc<dyn LockBackend> {
    Arc::new(connect(&zookeeper_url(), Duration::from_secs(10)).await)
}

/// The znode that holds `resource`'s queue, as the backend names it.
fn parent_of(resource: &str) -> String {
    ZooKeeperConfig::default().queue_path(resource)
}

fn env(name: &str) -> ContractEnv {
    ContractEnv {
        connect: Arc::new(|| backend().boxed()),
        vanish: Arc::new(|resource: String| {
            async move {
                // An operator deleting the lock nodes by hand.
                let admin = zk::Client::connect(&zookeeper_url()).await.unwrap();
                let parent = parent_of(&resource);
                for child in admin.list_children(&parent).await.unwrap() {
                    admin.delete(&format!("{parent}/{child}"), None).await.unwrap();
                }
            }
            .boxed()
        }),
        namespace: unique(name),
    }
}

turnstile_lock::contract_tests!(env);

/// The holder's link to ZooKeeper is cut while it holds the lock. Its
/// session expires on the server, which deletes its node; the holder's
/// lost signal fires, no later than the moment another client is granted
/// the lock, and that client's token is greater. After the link heals, the
/// holder's backend notices the expiry, opens a new session and works again.
#[tokio::test]
async fn session_expiry_while_holding_fires_lost_and_the_next_token_is_greater() -> Result<()> {
    let resource = unique("session-expiry");
    let link = Partition::to(&zookeeper_url()).await?;
    let session_timeout = Duration::from_secs(2);
    let holder_backend = Arc::new(connect(&link.addr.to_string(), session_timeout).await);
    assert_eq!(holder_backend.session_timeout(), session_timeout, "negotiated as asked");
    let holder = LockClient::new(Arc::clone(&holder_backend) as Arc<dyn LockBackend>);
    let other = LockClient::new(backend().await);

    let mut lease = holder.try_acquire(&resource, session_timeout).await?;
    let lost = lease.keep_alive();
    link.cut();

    let waiting = tokio::spawn({
        let resource = resource.clone();
        async move {
            let next = other
                .acquire(&resource, Duration::from_secs(5), Duration::from_secs(20))
                .await;
            (next, Instant::now())
        }
    });
    timeout(session_timeout * 2, lost.cancelled())
        .await
        .expect("the lost signal fires once renewals cannot reach ZooKeeper");
    let lost_at = Instant::now();
    let (next, granted_at) = waiting.await?;
    let next = next?;
    assert!(
        lost_at <= granted_at,
        "the holder must be told before anyone else is granted the lock"
    );
    assert!(next.token() > lease.token(), "{} after {}", next.token(), lease.token());

    link.heal();
    let err = lease.release().await.unwrap_err();
    assert_eq!(err.kind(), LockErrorKind::LeaseLost, "got {err:?}");
    let next_token = next.token();
    next.release().await?;
    // The old session is gone for good; the backend recovers with a new one.
    let again = loop {
        match holder.try_acquire(&resource, session_timeout).await {
            Ok(lease) => break lease,
            Err(e) if e.is_retryable() => tokio::task::yield_now().await,
            Err(e) => panic!("after healing: {e:?}"),
        }
    };
    assert!(again.token() > next_token);
    again.release().await?;
    Ok(())
}

/// Each waiter watches only its predecessor: three queued waiters are
/// granted one at a time, in arrival order, with increasing tokens.
#[tokio::test]
async fn waiters_are_granted_in_queue_order() -> Result<()> {
    let resource = unique("fifo");
    let locks = LockClient::new(backend().await);
    let first = locks.try_acquire(&resource, Duration::from_secs(5)).await?;
    let (granted_tx, mut granted_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..3 {
        let (locks, name, granted_tx) = (locks.clone(), resource.clone(), granted_tx.clone());
        tokio::spawn(async move {
            let lease = locks
                .acquire(&name, Duration::from_secs(5), Duration::from_secs(20))
                .await
                .unwrap();
            granted_tx.send((i, lease.token())).unwrap();
            lease.release().await.unwrap();
        });
        // Queue them in a known order: wait until this waiter's node exists.
        let admin = zk::Client::connect(&zookeeper_url()).await?;
        while admin.list_children(&parent_of(&resource)).await?.len() < i + 2 {
            tokio::task::yield_now().await;
        }
    }
    first.release().await?;
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(granted_rx.recv().await.unwrap());
    }
    assert_eq!(order.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(order.windows(2).all(|w| w[0].1 < w[1].1), "tokens: {order:?}");
    Ok(())
}

/// A lease may not outlive the session that carries it.
#[tokio::test]
async fn ttl_beyond_the_session_timeout_is_refused() -> Result<()> {
    let locks = LockClient::new(Arc::new(connect(&zookeeper_url(), Duration::from_secs(2)).await));
    let err = locks
        .try_acquire(&unique("long-ttl"), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::InvalidRequest(_)), "got {err:?}");
    Ok(())
}
