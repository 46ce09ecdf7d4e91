//! Redlock: the same scripts on N independent Redis masters, granted when a
//! majority agrees within the lease's validity.
//!
//! ## What Redlock's fencing tokens guarantee, and what they do not
//! Each master keeps its own token counter. A grant takes two rounds: the
//! first takes the lock on a majority and reads their counters (the token is
//! the greatest), the second writes that token back to every master
//! (`fence := max(fence, token)`) and re-confirms the lease on a majority
//! before it is handed out. Any later majority shares a master with the
//! write-back majority, so its token is greater: tokens strictly increase per
//! resource as long as masters keep their data. The write-back happens at
//! grant time, not only on renew and release, because masters seed their
//! counters independently: a holder that simply expires could otherwise be
//! followed by a smaller token (the contract suite checks this). What Redlock still cannot give,
//! as Martin Kleppmann argued, is safety under clock jumps, long pauses or a
//! master that restarts empty inside a lease; so Turnstile never trusts the
//! lease alone: the store behind it refuses any token that is not newer than
//! the last it accepted.

use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use redis::IntoConnectionInfo as _;
use tokio::time::timeout;

use crate::{
    Attempt, FencingToken, LockBackend, LockError, OwnerId,
    backend::redis::{LeaseState, RedisLockConfig, RedisNode, ResourceKeys},
    lease,
};

/// Settings for a Redlock backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedlockConfig {
    /// Per-node connection settings and the key prefix.
    pub node: RedisLockConfig,
    /// How long one node may take to answer before it counts as failed.
    /// Must be small against the ttl, or a slow node eats the validity.
    pub node_timeout: Duration,
}

impl RedlockConfig {
    /// The same settings with every node's keys under `prefix`.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.node.key_prefix = prefix.into();
        self
    }

    /// The same settings, with `tls` for every node's `rediss://` URL.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn with_tls(mut self, tls: crate::backend::tls::RedisTls) -> Self {
        self.node.tls = Some(tls);
        self
    }

    /// The same settings giving each node `timeout` to answer.
    #[must_use]
    pub fn with_node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }
}

impl Default for RedlockConfig {
    fn default() -> Self {
        Self {
            node: RedisLockConfig {
                response_timeout: Duration::from_millis(200),
                connection_timeout: Duration::from_millis(200),
                ..RedisLockConfig::default()
            },
            node_timeout: Duration::from_millis(200),
        }
    }
}

/// Locks granted by a majority of independent Redis masters.
#[derive(Debug, Clone)]
pub struct RedlockBackend {
    nodes: Vec<RedisNode>,
    prefix: String,
    node_timeout: Duration,
}

/// How the nodes answered one round.
#[derive(Debug, Default)]
struct Tally {
    ours: usize,
    held_by_other: usize,
    expired: usize,
    failed: usize,
}

impl RedlockBackend {
    /// Builds a backend over the masters at `urls`. Connections open on
    /// first use, so a node that is down now does not prevent start-up; a
    /// malformed URL or fewer than one node does.
    pub fn new<I, S>(urls: I, config: RedlockConfig) -> Result<Self, LockError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = urls
            .into_iter()
            .map(|url| {
                let unavailable = |e| LockError::unavailable("redlock", e);
                let info = url.as_ref().into_connection_info().map_err(unavailable)?;
                let client = config.node.client(info).map_err(unavailable)?;
                RedisNode::lazy(client, &config.node).map_err(|e| LockError::unavailable("redlock", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(LockError::InvalidRequest("redlock needs at least one node"));
        }
        Ok(Self {
            nodes,
            prefix: config.node.key_prefix,
            node_timeout: config.node_timeout,
        })
    }

    /// The number of masters.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn quorum(&self) -> usize {
        lease::quorum(self.nodes.len())
    }

    fn no_quorum(&self, resource: &str, tally: &Tally) -> LockError {
        LockError::NoQuorum {
            resource: resource.to_owned(),
            granted: tally.ours,
            needed: self.quorum(),
            failed: tally.failed,
        }
    }

    /// Runs one script on every node at once, each bounded by the node timeout.
    async fn on_all<'a, F, Fut>(&'a self, op: F) -> Tally
    where
        F: Fn(&'a RedisNode) -> Fut,
        Fut: Future<Output = redis::RedisResult<LeaseState>>,
    {
        let replies = join_all(self.nodes.iter().map(|node| timeout(self.node_timeout, op(node)))).await;
        let mut tally = Tally::default();
        for reply in replies {
            match reply {
                Ok(Ok(LeaseState::Ours)) => tally.ours += 1,
                Ok(Ok(LeaseState::HeldByOther)) => tally.held_by_other += 1,
                Ok(Ok(LeaseState::Expired)) => tally.expired += 1,
                Ok(Err(_)) | Err(_) => tally.failed += 1,
            }
        }
        tally
    }

    /// Turns a round of extends or releases into the caller's answer.
    fn settle(&self, resource: &str, tally: &Tally) -> Result<(), LockError> {
        if tally.ours >= self.quorum() {
            Ok(())
        } else if tally.held_by_other > 0 {
            Err(LockError::HeldByOther {
                resource: resource.to_owned(),
            })
        } else if tally.failed > self.nodes.len() - self.quorum() {
            Err(self.no_quorum(resource, tally))
        } else {
            Err(LockError::Expired {
                resource: resource.to_owned(),
            })
        }
    }
}

#[async_trait]
impl LockBackend for RedlockBackend {
    fn name(&self) -> &'static str {
        "redlock"
    }

    async fn try_acquire(&self, resource: &str, owner: &OwnerId, ttl: Duration) -> Result<Attempt, LockError> {
        let keys = ResourceKeys::new(&self.prefix, resource);
        let replies = join_all(
            self.nodes
                .iter()
                .map(|node| timeout(self.node_timeout, node.acquire(&keys, owner, ttl))),
        )
        .await;
        let mut tally = Tally::default();
        let mut token = FencingToken::new(0);
        let mut retry_after: Option<Duration> = None;
        for reply in replies {
            match reply {
                Ok(Ok(Attempt::Acquired { token: t })) => {
                    tally.ours += 1;
                    token = token.max(t);
                }
                Ok(Ok(Attempt::Busy { retry_after: r })) => {
                    tally.held_by_other += 1;
                    retry_after = match (retry_after, r) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Ok(Err(_)) | Err(_) => tally.failed += 1,
            }
        }
        if tally.ours >= self.quorum() {
            // Second round: write the token back to every master before the
            // lease is handed out. Any later quorum shares a master with this
            // one, so it counts on from at least this token, even if this
            // holder then dies without renewing or releasing. It also
            // re-confirms the lease on a quorum.
            let confirmed = self.on_all(|node| node.extend(&keys, owner, ttl, Some(token))).await;
            if confirmed.ours >= self.quorum() {
                return Ok(Attempt::Acquired { token });
            }
        }
        // Not enough for a lease: give back what we got, on every node, since
        // a node that timed out may still have granted.
        if tally.ours > 0 || tally.failed > 0 {
            let channel = ResourceKeys::released_channel(&self.prefix, resource);
            self.on_all(|node| node.release(&keys, &channel, owner, None)).await;
        }
        if tally.failed > self.nodes.len() - self.quorum() {
            return Err(self.no_quorum(resource, &tally));
        }
        Ok(Attempt::Busy { retry_after })
    }

    async fn extend(
        &self,
        resource: &str,
        owner: &OwnerId,
        token: FencingToken,
        ttl: Duration,
    ) -> Result<(), LockError> {
        let keys = ResourceKeys::new(&self.prefix, resource);
        let tally = self.on_all(|node| node.extend(&keys, owner, ttl, Some(token))).await;
        self.settle(resource, &tally)
    }

    async fn release(&self, resource: &str, owner: &OwnerId, token: FencingToken) -> Result<(), LockError> {
        let keys = ResourceKeys::new(&self.prefix, resource);
        let channel = ResourceKeys::released_channel(&self.prefix, resource);
        let tally = self
            .on_all(|node| node.release(&keys, &channel, owner, Some(token)))
            .await;
        self.settle(resource, &tally)
    }

    /// Raises the counter on every master and succeeds when a majority did:
    /// any later grant's majority shares a master with that one, so its
    /// token (the greatest of its majority's counters) is above the floor.
    async fn raise_floor(&self, resource: &str, floor: FencingToken) -> Result<(), LockError> {
        let keys = ResourceKeys::new(&self.prefix, resource);
        let raised = join_all(
            self.nodes
                .iter()
                .map(|node| timeout(self.node_timeout, node.raise_floor(&keys, floor))),
        )
        .await
        .into_iter()
        .filter(|reply| matches!(reply, Ok(Ok(()))))
        .count();
        if raised >= self.quorum() {
            Ok(())
        } else {
            Err(LockError::NoQuorum {
                resource: resource.to_owned(),
                granted: raised,
                needed: self.quorum(),
                failed: self.nodes.len() - raised,
            })
        }
    }
}
