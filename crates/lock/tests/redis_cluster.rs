//! `turnstile-lock` on a real Redis Cluster: the stack's (three masters with
//! a replica each on 7001-7006), or a private one where a test kills a
//! master.

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use futures::FutureExt;
use tokio::sync::watch;
use turnstile_lock::{
    FencingToken, LockBackend, LockClient, LockError, backend::redis_cluster::RedisClusterLockBackend,
    testsuite::ContractEnv,
};

use support::{PrivateCluster, delete_cluster_lease_key, plain, redis_cluster_urls, unique};

async fn backend() -> Arc<dyn LockBackend> {
    Arc::new(
        RedisClusterLockBackend::connect(redis_cluster_urls())
            .await
            .expect("the redis cluster from scripts/stack must be up"),
    )
}

fn env(name: &str) -> ContractEnv {
    ContractEnv {
        connect: Arc::new(|| backend().boxed()),
        vanish: Arc::new(|resource: String| {
            async move { delete_cluster_lease_key(&redis_cluster_urls(), &resource).await }.boxed()
        }),
        namespace: unique(name),
    }
}

turnstile_lock::contract_tests!(env);
// Release wake-ups are pushed, so a waiter is woken by the release itself.
turnstile_lock::contract_tests!(@each env, release_wakes_a_subscriber, waiter_gets_the_lock_on_release);

/// The masters of the stack's cluster and the slot ranges they serve.
async fn masters(seed: &str) -> Result<Vec<(u16, Vec<(i64, i64)>)>> {
    let port: u16 = seed.rsplit(':').next().context("seed has a port")?.parse()?;
    let mut conn = plain(port).await?;
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await?;
    let mut masters = Vec::new();
    for line in nodes.lines().filter(|l| l.contains("master") && !l.contains("fail")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = fields[1].split(['@', ':']).nth(1).context("node address")?.parse()?;
        let ranges = fields[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .map(|r| {
                let (from, to) = r.split_once('-').unwrap_or((r, r));
                Ok((from.parse()?, to.parse()?))
            })
            .collect::<Result<Vec<_>>>()?;
        masters.push((port, ranges));
    }
    Ok(masters)
}

/// Leases on many resources land on every master, each key on the master
/// owning its slot (`CLUSTER KEYSLOT`), where it is read back directly.
#[tokio::test]
async fn leases_spread_over_every_master() -> Result<()> {
    let seeds = redis_cluster_urls();
    let masters = masters(&seeds[0]).await?;
    ensure!(masters.len() == 3, "the stack's cluster has three masters: {masters:?}");
    let locks = LockClient::new(backend().await);
    let prefix = unique("spread");
    let mut leases = Vec::new();
    for i in 0..48 {
        leases.push(
            locks
                .try_acquire(&format!("{prefix}:{i}"), Duration::from_secs(30))
                .await?,
        );
    }
    let mut held_per_master: HashMap<u16, usize> = HashMap::new();
    let mut any = plain(masters[0].0).await?;
    for lease in &leases {
        let key = format!("turnstile:{{{}}}:lock", lease.resource());
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut any)
            .await?;
        let (owner, _) = masters
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|(from, to)| (*from..=*to).contains(&slot)))
            .with_context(|| format!("slot {slot} is served"))?;
        let mut conn = plain(*owner).await?;
        let exists: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await?;
        ensure!(exists == 1, "{key} is not on {owner}, the owner of slot {slot}");
        *held_per_master.entry(*owner).or_default() += 1;
    }
    for lease in leases {
        lease.release().await?;
    }
    ensure!(
        held_per_master.len() == 3 && held_per_master.values().all(|n| *n > 0),
        "every master holds some leases: {held_per_master:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_cluster_is_a_typed_error() {
    let err = RedisClusterLockBackend::connect(["redis://127.0.0.1:1"])
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Unavailable { .. }), "got {err:?}");
    assert!(err.is_retryable());
    let err = RedisClusterLockBackend::connect(Vec::<String>::new())
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::InvalidRequest(_)), "got {err:?}");
}

/// The fenced store of the failover test: it accepts a write only with a
/// token above the last it accepted, atomically, like the claims database.
struct FenceStore {
    accepted: Mutex<Vec<u64>>,
    /// The number of accepted writes, for waiting on progress.
    progress: watch::Sender<usize>,
}

impl FenceStore {
    fn new() -> Self {
        Self {
            accepted: Mutex::default(),
            progress: watch::channel(0).0,
        }
    }

    /// Ok, or Err(last accepted token) for a stale one.
    fn write(&self, token: FencingToken) -> Result<(), u64> {
        let mut accepted = self.accepted.lock().unwrap();
        if let Some(&last) = accepted.last()
            && token.get() <= last
        {
            return Err(last);
        }
        accepted.push(token.get());
        self.progress.send_replace(accepted.len());
        Ok(())
    }

    fn accepted(&self) -> Vec<u64> {
        self.accepted.lock().unwrap().clone()
    }

    /// Returns once `n` writes have been accepted in all.
    async fn until_accepted(&self, n: usize, within: Duration) -> Result<()> {
        let mut progress = self.progress.subscribe();
        tokio::time::timeout(within, progress.wait_for(|accepted| *accepted >= n))
            .await
            .with_context(|| format!("{n} accepted writes within {within:?}"))??;
        Ok(())
    }
}

/// SIGKILL of the master owning a contended resource, on a private cluster:
/// its replica is promoted, locking resumes through the same clients, the
/// fenced store never accepts a token that is not above the last accepted
/// one, a holder from before the failover is refused, and a counter behind
/// the store (the replica had not received the last `INCR`s) is repaired
/// with `raise_floor`.
#[tokio::test(flavor = "multi_thread")]
async fn master_killed_under_contention_fails_over_without_fencing_violations() -> Result<()> {
    let mut cluster = PrivateCluster::start(Duration::from_millis(1000)).await?;
    let resource = unique("failover");
    let key = format!("turnstile:{{{resource}}}:lock");
    let master = cluster.master_of(&key).await?;
    let master_id = cluster
        .roles()
        .await?
        .into_iter()
        .find(|r| r.port == master)
        .context("master")?
        .id;
    let replica = cluster
        .roles()
        .await?
        .into_iter()
        .find(|r| r.master_id.as_deref() == Some(master_id.as_str()))
        .context("the master has a replica")?
        .port;
    let clients = [
        LockClient::new(Arc::new(RedisClusterLockBackend::connect(cluster.urls()).await?)),
        LockClient::new(Arc::new(RedisClusterLockBackend::connect(cluster.urls()).await?)),
    ];
    let store = Arc::new(FenceStore::new());
    let repairs = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let ttl = Duration::from_secs(2);

    // A holder from before the failover, which never writes again until the end.
    let stale = clients[0].try_acquire(&resource, ttl).await?;
    store
        .write(stale.token())
        .map_err(|last| anyhow::anyhow!("first write refused after {last}"))?;

    let mut contenders = Vec::new();
    for i in 0..8 {
        let (locks, store, repairs, resource) = (
            clients[i % 2].clone(),
            Arc::clone(&store),
            Arc::clone(&repairs),
            resource.clone(),
        );
        let mut stopped = stopped.clone();
        contenders.push(tokio::spawn(async move {
            while !*stopped.borrow() {
                let lease = tokio::select! {
                    lease = locks.acquire(&resource, ttl, Duration::from_secs(20)) => lease,
                    _ = stopped.changed() => break,
                };
                let lease = match lease {
                    Ok(lease) => lease,
                    // The shard is down until its replica takes over.
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => return Err(anyhow::Error::from(e)),
                };
                if let Err(last) = store.write(lease.token()) {
                    // The counter fell behind the store: repair, as claim-worker does.
                    match locks.raise_floor(&resource, FencingToken::new(last)).await {
                        Ok(()) => {
                            repairs.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_retryable() => {}
                        Err(e) => return Err(anyhow::Error::from(e)),
                    }
                }
                // Released, or given up with the dead master.
                let _ = lease.release().await;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }

    store.until_accepted(50, Duration::from_secs(30)).await?;
    let before_kill = store.accepted().len();
    cluster.kill(master).await?;
    let killed_at = tokio::time::Instant::now();
    // Locking resumes: writes are accepted again after the kill.
    store.until_accepted(before_kill + 1, Duration::from_secs(30)).await?;
    let resumed_after = killed_at.elapsed();
    store.until_accepted(before_kill + 50, Duration::from_secs(30)).await?;
    cluster.until_healthy(Duration::from_secs(30)).await?;
    let roles = cluster.roles().await?;
    ensure!(
        roles.iter().any(|r| r.port == replica && r.master),
        "the replica {replica} was promoted: {roles:?}"
    );
    ensure!(
        cluster.master_of(&key).await? == replica,
        "the resource moved to the promoted replica"
    );

    // The promoted replica's counter behind the store, as if the last INCRs
    // never reached it: the next write is refused once and repaired.
    let mut promoted = plain(replica).await?;
    let _: () = redis::cmd("SET")
        .arg(format!("turnstile:{{{resource}}}:fence"))
        .arg(1)
        .query_async(&mut promoted)
        .await?;
    let repaired_before = repairs.load(Ordering::Relaxed);
    let accepted_before = store.accepted().len();
    store
        .until_accepted(accepted_before + 20, Duration::from_secs(30))
        .await?;
    ensure!(
        repairs.load(Ordering::Relaxed) > repaired_before,
        "a counter behind the store was repaired with raise_floor"
    );

    stop.send_replace(true);
    for contender in contenders {
        contender.await??;
    }
    // The holder from before the failover writes at last, and is refused.
    ensure!(store.write(stale.token()).is_err(), "a stale token was accepted");
    drop(stale);
    let accepted = store.accepted();
    ensure!(
        accepted.windows(2).all(|w| w[0] < w[1]),
        "accepted tokens must strictly increase: {accepted:?}"
    );
    eprintln!(
        "failover: writes resumed {resumed_after:?} after the kill; {} accepted, {} repairs",
        accepted.len(),
        repairs.load(Ordering::Relaxed)
    );
    Ok(())
}
