//! The Redis read cache of resources: what `GET /v1/coupons/{code}` serves.
//!
//! Workers update it after each committed batch, and the API fills it on a
//! miss; both go through one script that writes only if the entry's fence is
//! older than the writer's, so a late or stale writer can never roll the
//! cache back to an earlier state.

use std::sync::LazyLock;

use redis::{Script, aio::ConnectionManager};

use turnstile_claim::ResourceKey;

/// `KEYS`: entry. `ARGV`: fence, remaining, total. Returns 1 if written.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('HGET', KEYS[1], 'fence')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'remaining', ARGV[2], 'total', ARGV[3])
return 1
",
    )
});

/// A cached resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedResource {
    /// Units it started with.
    pub total: i64,
    /// Units left, as of the entry's fence.
    pub remaining: i64,
}

/// The resource cache.
#[derive(Clone)]
pub struct ResourceCache {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for ResourceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ResourceCache {
    /// A cache on `conn` whose keys start with `prefix`.
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
        }
    }

    fn key(&self, resource: &ResourceKey) -> String {
        format!("{}:resource:{resource}", self.prefix)
    }

    /// Writes the entry if `fence` is newer than the cached one.
    pub async fn update(
        &self,
        resource: &ResourceKey,
        fence: i64,
        remaining: i64,
        total: i64,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let written: i64 = UPDATE
            .key(self.key(resource))
            .arg(fence)
            .arg(remaining)
            .arg(total)
            .invoke_async(&mut conn)
            .await?;
        Ok(written == 1)
    }

    /// Reads the entry.
    pub async fn get(&self, resource: &ResourceKey) -> redis::RedisResult<Option<CachedResource>> {
        let mut conn = self.conn.clone();
        let (total, remaining): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.key(resource))
            .arg("total")
            .arg("remaining")
            .query_async(&mut conn)
            .await?;
        Ok(match (total, remaining) {
            (Some(total), Some(remaining)) => Some(CachedResource { total, remaining }),
            _ => None,
        })
    }
}
