//! Redis Cluster: the single-node backend's scripts and keys, spread over the
//! cluster's shards by resource.
//!
//! Every key of a resource carries the resource in a hash tag
//! (`p:{r}:lock`, `p:{r}:fence`, `p:{r}:released`), so the lease, its fence
//! counter and its release channel live in one slot, on one master, and each
//! operation is still one script and one round trip. Different resources
//! land on different masters: throughput grows with the number of shards.
//!
//! ## Wake-ups
//! Releases are announced with `SPUBLISH` on the resource's sharded channel
//! (Redis 7), so a release reaches only the shard that owns the key instead
//! of being broadcast over the whole cluster bus as `PUBLISH` is. Waiters
//! `SSUBSCRIBE` through the backend's cluster connection, which sends the
//! subscription to the owning master and moves it after a failover.
//!
//! ## Failover
//! Replication is asynchronous. A master that dies may take with it a grant
//! and the last `INCR`s of a fence counter that its replica had not received
//! yet; once the replica is promoted (about two `cluster-node-timeout`s),
//! the lock can be granted a second time and the counter can issue a token
//! that was already issued. Mutual exclusion therefore rests on the fenced
//! store, as with one Redis: it refuses a token that is not newer than the
//! last it accepted, and its writer then repairs the counter with
//! [`raise_floor`](LockBackend::raise_floor) and takes the lock again. A
//! counter lost entirely (the key never replicated) is re-seeded from the
//! new master's clock, as in [`super::redis`].

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use redis::{ProtocolVersion, RedisResult, cluster::ClusterClientBuilder, cluster_async::ClusterConnection};

use super::{
    redis::{Publish, RedisLockConfig, ResourceKeys, lease_error, ops},
    wakeups::{Channels, ReleaseHub},
};
use crate::{Attempt, FencingToken, LockBackend, LockError, OwnerId, ReleaseSubscription};

const NAME: &str = "redis-cluster";

/// Locks on a Redis Cluster, each resource on the master that owns its slot.
#[derive(Clone)]
pub struct RedisClusterLockBackend {
    conn: ClusterConnection,
    prefix: Arc<str>,
    releases: ReleaseHub,
}

impl std::fmt::Debug for RedisClusterLockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterLockBackend")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisClusterLockBackend {
    /// Connects to the cluster through any of its `seeds` (`redis://host:port`
    /// URLs; one that answers is enough to learn the rest) with default
    /// settings.
    pub async fn connect<I, S>(seeds: I) -> Result<Self, LockError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with(seeds, RedisLockConfig::default()).await
    }

    /// Connects to the cluster through `seeds` with `config`. The response
    /// timeout bounds each call including the client's own retries, so a
    /// call to a shard whose master just died fails within it and
    /// [`crate::LockClient`] retries until the replica is promoted.
    pub async fn connect_with<I, S>(seeds: I, config: RedisLockConfig) -> Result<Self, LockError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let unavailable = |e| LockError::unavailable(NAME, e);
        let seeds: Vec<String> = seeds.into_iter().map(|s| s.as_ref().trim().to_owned()).collect();
        if seeds.is_empty() || seeds.iter().any(String::is_empty) {
            return Err(LockError::InvalidRequest("redis cluster needs at least one seed url"));
        }
        let channels = Channels::default();
        // RESP3 carries the sharded pub/sub pushes on the same connections
        // as the commands.
        let builder = ClusterClientBuilder::new(seeds)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(channels.push_sender())
            .connection_timeout(config.connection_timeout)
            .response_timeout(config.response_timeout);
        #[cfg(feature = "tls")]
        let builder = match &config.tls {
            Some(tls) => builder.certs(tls.certificates()),
            None => builder,
        };
        let client = builder.build().map_err(unavailable)?;
        let conn = client.get_async_connection().await.map_err(unavailable)?;
        Ok(Self {
            releases: ReleaseHub::on_cluster(channels, conn.clone()),
            conn,
            prefix: config.key_prefix.into(),
        })
    }

    fn keys(&self, resource: &str) -> ResourceKeys {
        ResourceKeys::new(&self.prefix, resource)
    }
}

fn unavailable<T>(result: RedisResult<T>) -> Result<T, LockError> {
    result.map_err(|e| LockError::unavailable(NAME, e))
}

#[async_trait]
impl LockBackend for RedisClusterLockBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn try_acquire(&self, resource: &str, owner: &OwnerId, ttl: Duration) -> Result<Attempt, LockError> {
        unavailable(ops::acquire(&mut self.conn.clone(), &self.keys(resource), owner, ttl).await)
    }

    async fn extend(
        &self,
        resource: &str,
        owner: &OwnerId,
        _token: FencingToken,
        ttl: Duration,
    ) -> Result<(), LockError> {
        let state = unavailable(ops::extend(&mut self.conn.clone(), &self.keys(resource), owner, ttl, None).await)?;
        lease_error(state, resource).map_or(Ok(()), Err)
    }

    async fn release(&self, resource: &str, owner: &OwnerId, _token: FencingToken) -> Result<(), LockError> {
        let channel = ResourceKeys::released_channel(&self.prefix, resource);
        let state = unavailable(
            ops::release(
                &mut self.conn.clone(),
                &self.keys(resource),
                &channel,
                Publish::Sharded,
                owner,
                None,
            )
            .await,
        )?;
        lease_error(state, resource).map_or(Ok(()), Err)
    }

    async fn raise_floor(&self, resource: &str, floor: FencingToken) -> Result<(), LockError> {
        unavailable(ops::raise_floor(&mut self.conn.clone(), &self.keys(resource), floor).await)
    }

    async fn watch_releases(&self, resource: &str) -> Result<Option<ReleaseSubscription>, LockError> {
        self.releases
            .subscribe(ResourceKeys::released_channel(&self.prefix, resource))
            .await
            .map(Some)
    }
}
