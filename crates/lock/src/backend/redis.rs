//! Single-node Redis: one Lua script per operation, so taking the lock and
//! issuing its fencing token is one atomic step and one round trip.
//!
//! Keys for resource `r` under prefix `p` (hash-tagged so they share a slot
//! on Redis Cluster): `p:{r}:lock` holds the owner id with the ttl,
//! `p:{r}:fence` the last token issued, and releases are published on
//! `p:{r}:released` for waiters.
//!
//! ## Tokens across data loss
//! A resource's first token (no `fence` key) is the server clock in
//! microseconds (`TIME`); later ones `INCR` it. A counter can only overtake
//! the clock after more than one acquire per microsecond on one resource,
//! sustained since it was seeded, so after Redis loses its data (restart
//! without persistence, failover to an empty replica, eviction) the new seed
//! is greater than every token issued before, provided the server clock has
//! not stepped back by more than the counter's lag behind it. That is the
//! one clock assumption; the fenced store stays safe even if it is broken,
//! because it refuses any token that is not newer than the last it accepted.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, LazyLock, Mutex, PoisonError},
    time::Duration,
};

use ::redis::{
    Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use async_trait::async_trait;
use tokio::sync::Notify;
use tracing::debug;

use crate::{Attempt, FencingToken, LockBackend, LockError, OwnerId, ReleaseSubscription};

/// `KEYS`: lock, fence. `ARGV`: owner, ttl ms.
/// Returns `{1, token}` when granted, `{0, holder's pttl}` when busy.
const ACQUIRE_LUA: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  if token > 1 then return {1, token} end
  -- No counter (first use or data loss): seed it from the server clock.
  local now = redis.call('TIME')
  local seed = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', KEYS[2], seed)
  return {1, seed}
end
return {0, redis.call('PTTL', KEYS[1])}
";
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));

/// `KEYS`: lock, fence. `ARGV`: owner, ttl ms, token to write back (`0`: none).
/// Returns 1 extended, 0 expired, -1 held by another owner.
const EXTEND_LUA: &str = r"
if ARGV[3] ~= '0' then
  local f = redis.call('GET', KEYS[2])
  if (not f) or tonumber(f) < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[3]) end
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif holder then
  return -1
end
return 0
";
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND_LUA));

/// `KEYS`: lock, fence. `ARGV`: owner, token to write back (`0`: none),
/// release channel. Returns 1 released, 0 expired, -1 held by another owner.
const RELEASE_LUA: &str = r"
if ARGV[2] ~= '0' then
  local f = redis.call('GET', KEYS[2])
  if (not f) or tonumber(f) < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], '1')
  return 1
elseif holder then
  return -1
end
return 0
";
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// `KEYS`: fence. `ARGV`: floor. Raises the counter to the floor, never
/// lowers it; the next `INCR` then issues a token above the floor.
const FLOOR_LUA: &str = r"
local f = redis.call('GET', KEYS[1])
if (not f) or tonumber(f) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
";
static FLOOR: LazyLock<Script> = LazyLock::new(|| Script::new(FLOOR_LUA));

/// The Lua source of a lock script (`acquire`, `extend`, `release`), for
/// comparisons with tools such as `redis-benchmark`.
pub fn script_source(name: &str) -> Option<&'static str> {
    match name {
        "acquire" => Some(ACQUIRE_LUA),
        "extend" => Some(EXTEND_LUA),
        "release" => Some(RELEASE_LUA),
        _ => None,
    }
}

/// Connection settings for one Redis server.
#[derive(Debug, Clone)]
pub struct RedisLockConfig {
    /// Prefix of every key the lock writes.
    pub key_prefix: String,
    /// How long one command may take before it counts as failed.
    pub response_timeout: Duration,
    /// How long connecting may take.
    pub connection_timeout: Duration,
}

impl Default for RedisLockConfig {
    fn default() -> Self {
        Self {
            key_prefix: "turnstile".to_owned(),
            response_timeout: Duration::from_secs(1),
            connection_timeout: Duration::from_secs(1),
        }
    }
}

/// The keys of one resource.
#[derive(Debug)]
pub(crate) struct ResourceKeys {
    pub(crate) lock: String,
    pub(crate) fence: String,
}

impl ResourceKeys {
    pub(crate) fn new(prefix: &str, resource: &str) -> Self {
        Self {
            lock: format!("{prefix}:{{{resource}}}:lock"),
            fence: format!("{prefix}:{{{resource}}}:fence"),
        }
    }

    /// The channel releases of this resource are announced on.
    pub(crate) fn released_channel(prefix: &str, resource: &str) -> String {
        format!("{prefix}:{{{resource}}}:released")
    }
}

/// What a script said about a lease it was asked to extend or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState {
    Ours,
    Expired,
    HeldByOther,
}

impl LeaseState {
    fn from_reply(reply: i64) -> Self {
        match reply {
            1 => Self::Ours,
            -1 => Self::HeldByOther,
            _ => Self::Expired,
        }
    }
}

/// One Redis server speaking the lock scripts. Shared by the single-node
/// backend and by each Redlock node.
#[derive(Clone)]
pub(crate) struct RedisNode {
    conn: ConnectionManager,
    pub(crate) address: String,
}

impl fmt::Debug for RedisNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisNode")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl RedisNode {
    /// Builds a node whose connection is opened on first use, so that a node
    /// that is down at start-up does not stop the others from being used.
    pub(crate) fn lazy(client: Client, config: &RedisLockConfig) -> Result<Self, redis::RedisError> {
        let address = client.get_connection_info().addr().to_string();
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config(config))?;
        Ok(Self { conn, address })
    }

    pub(crate) async fn acquire(
        &self,
        keys: &ResourceKeys,
        owner: &OwnerId,
        ttl: Duration,
    ) -> redis::RedisResult<Attempt> {
        let mut conn = self.conn.clone();
        let (granted, value): (i64, i64) = ACQUIRE
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(owner.as_str())
            .arg(ttl_millis(ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(if granted == 1 {
            Attempt::Acquired {
                token: FencingToken::new(u64::try_from(value).unwrap_or(0)),
            }
        } else {
            Attempt::Busy {
                retry_after: u64::try_from(value).ok().map(Duration::from_millis),
            }
        })
    }

    pub(crate) async fn extend(
        &self,
        keys: &ResourceKeys,
        owner: &OwnerId,
        ttl: Duration,
        write_back: Option<FencingToken>,
    ) -> redis::RedisResult<LeaseState> {
        let mut conn = self.conn.clone();
        let reply: i64 = EXTEND
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(owner.as_str())
            .arg(ttl_millis(ttl))
            .arg(write_back.map_or(0, FencingToken::get))
            .invoke_async(&mut conn)
            .await?;
        Ok(LeaseState::from_reply(reply))
    }

    pub(crate) async fn release(
        &self,
        keys: &ResourceKeys,
        channel: &str,
        owner: &OwnerId,
        write_back: Option<FencingToken>,
    ) -> redis::RedisResult<LeaseState> {
        let mut conn = self.conn.clone();
        let reply: i64 = RELEASE
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(owner.as_str())
            .arg(write_back.map_or(0, FencingToken::get))
            .arg(channel)
            .invoke_async(&mut conn)
            .await?;
        Ok(LeaseState::from_reply(reply))
    }
}

impl RedisNode {
    pub(crate) async fn raise_floor(&self, keys: &ResourceKeys, floor: FencingToken) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = FLOOR.key(&keys.fence).arg(floor.get()).invoke_async(&mut conn).await?;
        Ok(())
    }
}

fn manager_config(config: &RedisLockConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(config.response_timeout))
        .set_connection_timeout(Some(config.connection_timeout))
        .set_max_delay(Duration::from_millis(500))
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn lease_error(state: LeaseState, resource: &str) -> Option<LockError> {
    match state {
        LeaseState::Ours => None,
        LeaseState::Expired => Some(LockError::Expired {
            resource: resource.to_owned(),
        }),
        LeaseState::HeldByOther => Some(LockError::HeldByOther {
            resource: resource.to_owned(),
        }),
    }
}

/// Locks on one Redis server. Fast and simple; a failover can lose a lock
/// that was granted but not yet replicated, which is why writes are fenced.
#[derive(Debug, Clone)]
pub struct RedisLockBackend {
    node: RedisNode,
    prefix: Arc<str>,
    releases: ReleaseHub,
}

impl RedisLockBackend {
    /// Connects to the Redis at `url` (`redis://host:port/db`) with default
    /// settings, checking that it answers.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(url, RedisLockConfig::default()).await
    }

    /// Connects to the Redis at `url` with `config`, checking that it answers.
    pub async fn connect_with(url: &str, config: RedisLockConfig) -> Result<Self, LockError> {
        let unavailable = |e| LockError::unavailable("redis", e);
        let info = url.into_connection_info().map_err(unavailable)?;
        let client = Client::open(info.clone()).map_err(unavailable)?;
        let node = RedisNode::lazy(client, &config).map_err(unavailable)?;
        let mut conn = node.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(unavailable)?;
        // Pub/sub pushes need RESP3 on the dedicated wake-up connection.
        let resp3 = info
            .clone()
            .set_redis_settings(info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3));
        let releases = ReleaseHub::new(Client::open(resp3).map_err(unavailable)?, manager_config(&config));
        Ok(Self {
            node,
            prefix: config.key_prefix.into(),
            releases,
        })
    }

    fn keys(&self, resource: &str) -> ResourceKeys {
        ResourceKeys::new(&self.prefix, resource)
    }
}

#[async_trait]
impl LockBackend for RedisLockBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn try_acquire(&self, resource: &str, owner: &OwnerId, ttl: Duration) -> Result<Attempt, LockError> {
        self.node
            .acquire(&self.keys(resource), owner, ttl)
            .await
            .map_err(|e| LockError::unavailable("redis", e))
    }

    async fn extend(
        &self,
        resource: &str,
        owner: &OwnerId,
        _token: FencingToken,
        ttl: Duration,
    ) -> Result<(), LockError> {
        let state = self
            .node
            .extend(&self.keys(resource), owner, ttl, None)
            .await
            .map_err(|e| LockError::unavailable("redis", e))?;
        lease_error(state, resource).map_or(Ok(()), Err)
    }

    async fn release(&self, resource: &str, owner: &OwnerId, _token: FencingToken) -> Result<(), LockError> {
        let channel = ResourceKeys::released_channel(&self.prefix, resource);
        let state = self
            .node
            .release(&self.keys(resource), &channel, owner, None)
            .await
            .map_err(|e| LockError::unavailable("redis", e))?;
        lease_error(state, resource).map_or(Ok(()), Err)
    }

    async fn raise_floor(&self, resource: &str, floor: FencingToken) -> Result<(), LockError> {
        self.node
            .raise_floor(&self.keys(resource), floor)
            .await
            .map_err(|e| LockError::unavailable("redis", e))
    }

    async fn watch_releases(&self, resource: &str) -> Result<Option<ReleaseSubscription>, LockError> {
        self.releases
            .subscribe(ResourceKeys::released_channel(&self.prefix, resource))
            .await
            .map(Some)
    }
}

/// Release wake-ups for one process: one RESP3 connection, subscribed to the
/// channels of resources somebody here is waiting for, reference-counted so a
/// channel is dropped when its last waiter leaves.
#[derive(Clone)]
struct ReleaseHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    client: Client,
    config: ConnectionManagerConfig,
    conn: tokio::sync::OnceCell<ConnectionManager>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Orders SUBSCRIBE and UNSUBSCRIBE calls so that a late unsubscribe can
    /// never undo a newer subscribe.
    changes: tokio::sync::Mutex<()>,
}

struct Channel {
    notify: Arc<Notify>,
    waiters: usize,
}

impl fmt::Debug for ReleaseHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseHub").finish_non_exhaustive()
    }
}

impl ReleaseHub {
    fn new(client: Client, config: ConnectionManagerConfig) -> Self {
        Self {
            inner: Arc::new(HubInner {
                client,
                config,
                conn: tokio::sync::OnceCell::new(),
                channels: Arc::default(),
                changes: tokio::sync::Mutex::new(()),
            }),
        }
    }

    async fn subscribe(&self, channel: String) -> Result<ReleaseSubscription, LockError> {
        let unavailable = |e| LockError::unavailable("redis", e);
        let _ordered = self.inner.changes.lock().await;
        let conn = self.inner.connection().await.map_err(unavailable)?;
        let (notify, first) = {
            let mut channels = self.inner.lock_channels();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                notify: Arc::new(Notify::new()),
                waiters: 0,
            });
            entry.waiters += 1;
            (Arc::clone(&entry.notify), entry.waiters == 1)
        };
        let unsubscribe = Unsubscribe {
            hub: self.clone(),
            channel: channel.clone(),
        };
        if first {
            // On failure `unsubscribe` drops here and undoes the count.
            conn.clone().subscribe(&channel).await.map_err(unavailable)?;
        }
        Ok(ReleaseSubscription::new(notify, Box::new(unsubscribe)))
    }
}

impl HubInner {
    fn lock_channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        // The map holds plain counters; a panic elsewhere cannot leave it torn.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn connection(&self) -> redis::RedisResult<&ConnectionManager> {
        self.conn
            .get_or_try_init(|| async {
                let channels = Arc::clone(&self.channels);
                let config = self.config.clone().set_automatic_resubscription().set_push_sender(
                    move |push: PushInfo| -> Result<(), redis::aio::SendError> {
                        wake(&channels, push);
                        Ok(())
                    },
                );
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
    }
}

/// Routes one push from Redis to the waiters it concerns.
fn wake(channels: &Mutex<HashMap<String, Channel>>, push: PushInfo) {
    let channels = channels.lock().unwrap_or_else(PoisonError::into_inner);
    match push.kind {
        PushKind::Message => {
            if let Some(Value::BulkString(name)) = push.data.first()
                && let Some(channel) = std::str::from_utf8(name).ok().and_then(|n| channels.get(n))
            {
                // One waiter per process per release: the others would
                // only lose the race to it.
                channel.notify.notify_one();
            }
        }
        // Releases may have been missed while disconnected: everyone re-polls.
        PushKind::Disconnection => {
            for channel in channels.values() {
                channel.notify.notify_waiters();
            }
        }
        _ => {}
    }
}

struct Unsubscribe {
    hub: ReleaseHub,
    channel: String,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let last = {
            let mut channels = self.hub.inner.lock_channels();
            match channels.get_mut(&self.channel) {
                Some(entry) if entry.waiters > 1 => {
                    entry.waiters -= 1;
                    false
                }
                Some(_) => {
                    channels.remove(&self.channel);
                    true
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = self.hub.clone();
        let channel = std::mem::take(&mut self.channel);
        runtime.spawn(async move {
            let _ordered = hub.inner.changes.lock().await;
            // A new waiter may have subscribed again meanwhile.
            if hub.inner.lock_channels().contains_key(&channel) {
                return;
            }
            if let Some(conn) = hub.inner.conn.get()
                && let Err(e) = conn.clone().unsubscribe(&channel).await
            {
                debug!(channel, error = %e, "unsubscribe failed");
            }
        });
    }
}
