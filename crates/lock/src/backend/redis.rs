//! Single-node Redis: one Lua script per operation, so taking the lock and
//! issuing its fencing token is one atomic step and one round trip.
//!
//! Keys for resource `r` under prefix `p` (hash-tagged so they share a slot
//! on Redis Cluster): `p:{r}:lock` holds the owner id with the ttl,
//! `p:{r}:fence` the last token issued, and releases are published on
//! `p:{r}:released` for waiters. The scripts and keys here are shared with
//! Redlock's nodes and with [`super::redis_cluster`], which differ only in
//! how they reach the servers.
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
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use ::redis::{
    Client, ErrorKind, FromRedisValue, IntoConnectionInfo, ProtocolVersion, RedisResult, Script, ServerErrorKind,
    ToRedisArgs,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
};
use async_trait::async_trait;

use super::wakeups::{Channels, ReleaseHub};
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
#[cfg(feature = "redis-cluster")]
static ACQUIRE: LazyLock<LockScript> = LazyLock::new(|| LockScript::new(ACQUIRE_LUA));

/// `KEYS`: fence. Seeds a counter that data loss reset: raises it to the
/// server clock in microseconds (never lowers it) and returns it, the
/// holder's token. Run only by a holder whose `INCR` came back below
/// [`SEEDED`].
const SEED_LUA: &str = r"
local now = redis.call('TIME')
local seed = tonumber(now[1] .. string.format('%06d', tonumber(now[2])))
local f = tonumber(redis.call('GET', KEYS[1]) or '0')
if f < seed then
  redis.call('SET', KEYS[1], now[1] .. string.format('%06d', tonumber(now[2])))
  return now[1] .. string.format('%06d', tonumber(now[2]))
end
return redis.call('GET', KEYS[1])
";
static SEED: LazyLock<LockScript> = LazyLock::new(|| LockScript::new(SEED_LUA));

/// Every counter seeded from a server clock is above this (microseconds
/// since 1970 passed 10^15 in 2001); a counter below it was reset by data
/// loss and must be seeded before its token is used.
const SEEDED: i64 = 1_000_000_000_000_000;

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
static EXTEND: LazyLock<LockScript> = LazyLock::new(|| LockScript::new(EXTEND_LUA));

/// `KEYS`: lock, fence. `ARGV`: owner, token to write back (`0`: none),
/// release channel, publish command (`PUBLISH`, or `SPUBLISH` on a cluster,
/// where the channel shares the keys' hash tag and so their shard).
/// Returns 1 released, 0 expired, -1 held by another owner.
const RELEASE_LUA: &str = r"
if ARGV[2] ~= '0' then
  local f = redis.call('GET', KEYS[2])
  if (not f) or tonumber(f) < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call(ARGV[4], ARGV[3], '1')
  return 1
elseif holder then
  return -1
end
return 0
";
static RELEASE: LazyLock<LockScript> = LazyLock::new(|| LockScript::new(RELEASE_LUA));

/// `KEYS`: fence. `ARGV`: floor. Raises the counter to the floor, never
/// lowers it; the next `INCR` then issues a token above the floor.
const FLOOR_LUA: &str = r"
local f = redis.call('GET', KEYS[1])
if (not f) or tonumber(f) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
";
static FLOOR: LazyLock<LockScript> = LazyLock::new(|| LockScript::new(FLOOR_LUA));

/// A lock script, sent by its SHA1 and by its source when the server does
/// not have it yet. The fallback is `EVAL` to the same key rather than
/// `SCRIPT LOAD`: on a cluster, `SCRIPT LOAD` goes to every node and fails
/// while one is down, and a freshly promoted replica never has the scripts
/// (they are not replicated).
struct LockScript {
    source: &'static str,
    hash: String,
}

impl LockScript {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            hash: Script::new(source).get_hash().to_owned(),
        }
    }

    async fn run<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
        keys: &[&str],
        args: impl ToRedisArgs + Copy,
    ) -> RedisResult<T> {
        let call = |command: &str, script: &str| {
            let mut cmd = ::redis::cmd(command);
            cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        match call("EVALSHA", &self.hash).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                call("EVAL", self.source).query_async(conn).await
            }
            result => result,
        }
    }
}

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
#[non_exhaustive]
pub struct RedisLockConfig {
    /// Prefix of every key the lock writes.
    pub key_prefix: String,
    /// How long one command may take before it counts as failed.
    pub response_timeout: Duration,
    /// How long connecting may take.
    pub connection_timeout: Duration,
    /// TLS for `rediss://` URLs: a CA of your own, a client certificate.
    #[cfg(feature = "tls")]
    pub tls: Option<super::tls::RedisTls>,
}

impl RedisLockConfig {
    /// The same settings with every key under `prefix` (default `turnstile`).
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The same settings with `timeout` for each command and for connecting.
    #[must_use]
    pub fn with_timeouts(mut self, response: Duration, connection: Duration) -> Self {
        self.response_timeout = response;
        self.connection_timeout = connection;
        self
    }

    /// The same settings, with `tls` for `rediss://` URLs.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn with_tls(mut self, tls: super::tls::RedisTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A client for `info` with these settings' TLS.
    pub(crate) fn client(&self, info: redis::ConnectionInfo) -> redis::RedisResult<Client> {
        #[cfg(feature = "tls")]
        return super::tls::client(info, self.tls.as_ref());
        #[cfg(not(feature = "tls"))]
        Client::open(info)
    }
}

impl Default for RedisLockConfig {
    fn default() -> Self {
        Self {
            key_prefix: "turnstile".to_owned(),
            response_timeout: Duration::from_secs(1),
            connection_timeout: Duration::from_secs(1),
            #[cfg(feature = "tls")]
            tls: None,
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

/// How a release is announced: on a plain channel, or on a sharded one
/// (Redis 7), which only the shard owning the channel's slot delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    Plain,
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
    Sharded,
}

impl Publish {
    fn command(self) -> &'static str {
        match self {
            Self::Plain => "PUBLISH",
            Self::Sharded => "SPUBLISH",
        }
    }
}

/// The lock's operations, each one script over any connection: one server's
/// or a cluster's (which routes a script by its first key; every key of a
/// resource shares its hash tag, so one node runs it).
pub(crate) mod ops {
    use super::*;

    /// Takes the lock without a script, on one server: `INCR` the counter
    /// and `SET NX PX` the lock in one `MULTI`/`EXEC` (one round trip,
    /// atomic, so grants and tokens follow one order). The
    /// counter counts attempts, not grants, which keeps it increasing and
    /// costs nothing. Redis spends about a third of the acquire script's
    /// CPU on it (`docs/lock-backends.md`). A counter below [`SEEDED`] was
    /// reset by data loss: its holder seeds it from the clock first.
    /// Not for Redis Cluster, whose client does not run transactions; the
    /// cluster uses [`acquire`].
    pub(crate) async fn acquire_in_transaction(
        conn: &mut impl ConnectionLike,
        keys: &ResourceKeys,
        owner: &OwnerId,
        ttl: Duration,
    ) -> RedisResult<Attempt> {
        let (counted, set): (i64, Option<String>) = ::redis::pipe()
            .atomic()
            .incr(&keys.fence, 1)
            .cmd("SET")
            .arg(&keys.lock)
            .arg(owner.as_str())
            .arg("NX")
            .arg("PX")
            .arg(ttl_millis(ttl))
            .query_async(conn)
            .await?;
        if set.is_none() {
            // Busy: how long the holder has left, in a second round trip
            // that only a contended attempt pays for.
            let left: i64 = ::redis::cmd("PTTL").arg(&keys.lock).query_async(conn).await?;
            return Ok(Attempt::Busy {
                retry_after: u64::try_from(left).ok().map(Duration::from_millis),
            });
        }
        let token = if counted < SEEDED {
            SEED.run::<i64>(conn, &[&keys.fence], &[] as &[&str]).await?
        } else {
            counted
        };
        Ok(Attempt::Acquired {
            token: FencingToken::new(u64::try_from(token).unwrap_or(0)),
        })
    }

    #[cfg(feature = "redis-cluster")]
    pub(crate) async fn acquire(
        conn: &mut impl ConnectionLike,
        keys: &ResourceKeys,
        owner: &OwnerId,
        ttl: Duration,
    ) -> RedisResult<Attempt> {
        let (granted, value): (i64, i64) = ACQUIRE
            .run(conn, &[&keys.lock, &keys.fence], (owner.as_str(), ttl_millis(ttl)))
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
        conn: &mut impl ConnectionLike,
        keys: &ResourceKeys,
        owner: &OwnerId,
        ttl: Duration,
        write_back: Option<FencingToken>,
    ) -> RedisResult<LeaseState> {
        let reply: i64 = EXTEND
            .run(
                conn,
                &[&keys.lock, &keys.fence],
                (owner.as_str(), ttl_millis(ttl), write_back.map_or(0, FencingToken::get)),
            )
            .await?;
        Ok(LeaseState::from_reply(reply))
    }

    pub(crate) async fn release(
        conn: &mut impl ConnectionLike,
        keys: &ResourceKeys,
        channel: &str,
        publish: Publish,
        owner: &OwnerId,
        write_back: Option<FencingToken>,
    ) -> RedisResult<LeaseState> {
        let reply: i64 = RELEASE
            .run(
                conn,
                &[&keys.lock, &keys.fence],
                (
                    owner.as_str(),
                    write_back.map_or(0, FencingToken::get),
                    channel,
                    publish.command(),
                ),
            )
            .await?;
        Ok(LeaseState::from_reply(reply))
    }

    pub(crate) async fn raise_floor(
        conn: &mut impl ConnectionLike,
        keys: &ResourceKeys,
        floor: FencingToken,
    ) -> RedisResult<()> {
        let _: i64 = FLOOR.run(conn, &[&keys.fence], floor.get()).await?;
        Ok(())
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

    pub(crate) async fn acquire(&self, keys: &ResourceKeys, owner: &OwnerId, ttl: Duration) -> RedisResult<Attempt> {
        ops::acquire_in_transaction(&mut self.conn.clone(), keys, owner, ttl).await
    }

    pub(crate) async fn extend(
        &self,
        keys: &ResourceKeys,
        owner: &OwnerId,
        ttl: Duration,
        write_back: Option<FencingToken>,
    ) -> RedisResult<LeaseState> {
        ops::extend(&mut self.conn.clone(), keys, owner, ttl, write_back).await
    }

    pub(crate) async fn release(
        &self,
        keys: &ResourceKeys,
        channel: &str,
        owner: &OwnerId,
        write_back: Option<FencingToken>,
    ) -> RedisResult<LeaseState> {
        ops::release(&mut self.conn.clone(), keys, channel, Publish::Plain, owner, write_back).await
    }

    pub(crate) async fn raise_floor(&self, keys: &ResourceKeys, floor: FencingToken) -> RedisResult<()> {
        ops::raise_floor(&mut self.conn.clone(), keys, floor).await
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
        Self::from_client(config.client(info).map_err(unavailable)?, config).await
    }

    /// Uses an existing `client` (its address, database, credentials and
    /// TLS), with `config`, checking that the server answers. The lock opens
    /// its own multiplexed connection and, for release wake-ups, one RESP3
    /// connection to the same address with `config`'s TLS (so a client
    /// built with a CA of its own needs the same in `config`); commands of
    /// the application never queue behind the lock's.
    pub async fn from_client(client: Client, config: RedisLockConfig) -> Result<Self, LockError> {
        let unavailable = |e| LockError::unavailable("redis", e);
        let info = client.get_connection_info().clone();
        let node = RedisNode::lazy(client, &config).map_err(unavailable)?;
        let mut conn = node.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(unavailable)?;
        // Pub/sub pushes need RESP3 on the dedicated wake-up connection.
        let resp3 = info
            .clone()
            .set_redis_settings(info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3));
        let releases = ReleaseHub::on_server(
            Channels::default(),
            config.client(resp3).map_err(unavailable)?,
            manager_config(&config),
        );
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
