//! ZooKeeper: the lock recipe on ephemeral sequential znodes, for teams that
//! want the lock itself to be linearizable rather than fast.
//!
//! Layout: one persistent parent per resource under a root
//! (`/turnstile/locks/<resource>`), and under it one ephemeral sequential
//! node per contender, named `<owner>-<sequence>`. The lowest sequence holds
//! the lock. Waiters queue by creating their node and watch only the node
//! just before theirs, so a release wakes exactly one waiter (no herd).
//!
//! - **Fencing token** = `epoch << 32 | (sequence + 1)`: the node's sequence
//!   number plus one (0 is every fence's starting value), under the
//!   resource's epoch, kept as the parent's data (none: 0). ZooKeeper assigns
//!   sequences from the parent's child counter in its totally ordered log,
//!   so it strictly increases per resource, and grants go in sequence order
//!   (only the lowest node holds). A node is created in one multi-op with a
//!   check of the parent's data version, so it is created under the epoch
//!   its token uses, and an epoch never falls: tokens strictly increase.
//!   Parents are never deleted, so the counter is as durable as ZooKeeper's
//!   own data. (ZooKeeper's sequence is a signed 32-bit counter: 2^31 grants
//!   per resource and epoch.)
//! - **Floor.** [`raise_floor`](LockBackend::raise_floor) moves the epoch
//!   past the floor's, so a resource switched from another backend (whose
//!   tokens are larger) is usable after one refused write.
//! - **Session = lifeline.** Nodes are ephemeral: when the holder's process
//!   dies or stalls past the session timeout, ZooKeeper deletes its node and
//!   the next waiter is woken. A session that expires while holding makes
//!   the next renewal report the lease lost.
//! - **Lease ttl.** Other backends expire a lease that is not renewed within
//!   its ttl; here the holder's own backend deletes its node at the ttl
//!   unless renewed (a timer per held lease, on the same monotonic clock the
//!   holder's validity is computed from, so the holder's lost signal fires
//!   first). If the process cannot run that timer (killed, paused), the
//!   session timeout takes over. A ttl longer than the session timeout is
//!   refused: after a disconnection ZooKeeper may expire the session, and so
//!   hand the lock on, one session timeout after it last heard from us.
//! - **Renewal** checks that our node still exists (one read) and moves the
//!   timer. **Release** deletes our node (one write).
//! - A create whose answer was lost to a connection drop may still have made
//!   a node; every failure path removes any node carrying our owner id, so a
//!   lost answer cannot leave an orphan queued ahead of everyone while our
//!   session lives.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use tokio::{
    sync::watch,
    time::{Instant, sleep_until},
};
use tracing::{debug, warn};
use zookeeper_client as zk;

use crate::{Attempt, FencingToken, LockBackend, LockError, OwnerId, Turn};

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ZooKeeperConfig {
    /// The znode under which every resource gets its parent.
    pub root: String,
    /// The session timeout asked for; the server may negotiate it into its
    /// `minSessionTimeout..maxSessionTimeout`. Bounds every lease's ttl.
    pub session_timeout: Duration,
}

impl ZooKeeperConfig {
    /// The same settings with resources' znodes under `root` (default
    /// `/turnstile/locks`).
    #[must_use]
    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }

    /// The same settings asking for a session of `timeout`.
    #[must_use]
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// The persistent znode under which `resource`'s contenders queue.
    pub fn queue_path(&self, resource: &str) -> String {
        format!("{}/{}", self.root, encode_component(resource))
    }
}

impl Default for ZooKeeperConfig {
    fn default() -> Self {
        Self {
            root: "/turnstile/locks".to_owned(),
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// Locks in ZooKeeper.
pub struct ZooKeeperLockBackend {
    cluster: String,
    config: ZooKeeperConfig,
    session: Mutex<zk::Client>,
    /// Serialises re-connecting after a session expired.
    reconnecting: tokio::sync::Mutex<()>,
    /// Parents known to exist, with their epoch and its data version, to
    /// skip a round trip per acquire.
    parents: Mutex<HashMap<String, Epoch>>,
    held: Arc<HeldLeases>,
}

impl std::fmt::Debug for ZooKeeperLockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperLockBackend")
            .field("cluster", &self.cluster)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A resource's epoch as last read, with the parent's data version that
/// holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Epoch {
    value: u64,
    version: i32,
}

/// The leases this process holds, by node path, each with the sender side
/// of its expiry timer. Dropping the sender stops the timer.
#[derive(Debug, Default)]
struct HeldLeases(Mutex<HashMap<String, watch::Sender<Instant>>>);

impl HeldLeases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Instant>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn unavailable(e: zk::Error) -> LockError {
    LockError::unavailable("zookeeper", e)
}

const EPHEMERAL_SEQUENTIAL: zk::CreateOptions<'static> =
    zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
const PERSISTENT: zk::CreateOptions<'static> = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());

impl ZooKeeperLockBackend {
    /// Opens a session on `cluster` (`host:port[,host:port...]`).
    pub async fn connect(cluster: &str, config: ZooKeeperConfig) -> Result<Self, LockError> {
        if !config.root.starts_with('/') || config.root.ends_with('/') {
            return Err(LockError::InvalidRequest(
                "zookeeper root must start with '/' and not end with one",
            ));
        }
        let session = open_session(cluster, config.session_timeout).await?;
        Ok(Self {
            cluster: cluster.to_owned(),
            config,
            session: Mutex::new(session),
            reconnecting: tokio::sync::Mutex::new(()),
            parents: Mutex::new(HashMap::new()),
            held: Arc::new(HeldLeases::default()),
        })
    }

    /// The current session's id and password: operators' tools (and the
    /// tests) use it to expire the session from outside, as a partition
    /// would.
    pub fn session(&self) -> zk::SessionInfo {
        self.client().session().clone()
    }

    /// The session timeout the server granted: the longest ttl accepted.
    pub fn session_timeout(&self) -> Duration {
        self.client().session_timeout()
    }

    fn client(&self) -> zk::Client {
        self.session.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Opens a new session if `failed` is still the current one. Every node
    /// of the old session is gone, so are its leases.
    async fn replace_session(&self, failed: &zk::Client) {
        let _one_at_a_time = self.reconnecting.lock().await;
        if self.client().session_id() != failed.session_id() {
            return;
        }
        match open_session(&self.cluster, self.config.session_timeout).await {
            Ok(fresh) => {
                warn!(old = ?failed.session_id(), new = ?fresh.session_id(), "zookeeper session expired; opened a new one");
                *self.session.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
                self.held.lock().clear();
            }
            Err(e) => warn!(error = %e, "zookeeper session expired and a new one could not be opened"),
        }
    }

    /// Maps a ZooKeeper failure, replacing the session when it expired.
    async fn failed(&self, client: &zk::Client, e: zk::Error) -> LockError {
        if matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed) {
            self.replace_session(client).await;
        }
        unavailable(e)
    }

    fn check_ttl(&self, client: &zk::Client, ttl: Duration) -> Result<(), LockError> {
        if ttl > client.session_timeout() {
            return Err(LockError::InvalidRequest(
                "ttl exceeds the ZooKeeper session timeout, which bounds every lease",
            ));
        }
        Ok(())
    }

    fn parent(&self, resource: &str) -> String {
        self.config.queue_path(resource)
    }

    /// The parent's epoch: cached, or made and read.
    async fn ensure_parent(&self, client: &zk::Client, parent: &str) -> Result<Epoch, zk::Error> {
        if let Some(epoch) = self.parents.lock().unwrap_or_else(PoisonError::into_inner).get(parent) {
            return Ok(*epoch);
        }
        self.read_epoch(client, parent).await
    }

    /// Makes the parent if needed and reads its epoch into the cache.
    async fn read_epoch(&self, client: &zk::Client, parent: &str) -> Result<Epoch, zk::Error> {
        let (data, stat) = match client.get_data(parent).await {
            Err(zk::Error::NoNode) => {
                client.mkdir(parent, &PERSISTENT).await?;
                client.get_data(parent).await?
            }
            other => other?,
        };
        let epoch = Epoch {
            value: parse_epoch(&data),
            version: stat.version,
        };
        self.parents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(parent.to_owned(), epoch);
        Ok(epoch)
    }

    /// Creates our node in `parent`'s queue, under the epoch it was created
    /// with; returns its path and token.
    async fn enqueue(
        &self,
        client: &zk::Client,
        parent: &str,
        owner: &OwnerId,
    ) -> Result<(String, FencingToken), zk::Error> {
        let prefix = format!("{parent}/{}-", owner.as_str());
        let mut epoch = self.ensure_parent(client, parent).await?;
        for _ in 0..8 {
            let mut multi = client.new_multi_writer();
            multi.add_check_version(parent, epoch.version)?;
            multi.add_create(&prefix, &[], &EPHEMERAL_SEQUENTIAL)?;
            match multi.commit().await {
                Ok(results) => {
                    let created = results.into_iter().nth(1).and_then(|r| match r {
                        zk::MultiWriteResult::Create { path, .. } => Some(path),
                        _ => None,
                    });
                    let path = created.ok_or_else(|| zk::Error::UnexpectedError("multi created no node".into()))?;
                    let sequence = sequence_of(&path).unwrap_or(0);
                    return Ok((path, token_of(epoch.value, sequence)));
                }
                // The epoch moved, or someone removed the parent: read again.
                Err(zk::MultiWriteError::OperationFailed {
                    index: 0,
                    source: zk::Error::BadVersion | zk::Error::NoNode,
                }) => epoch = self.read_epoch(client, parent).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(zk::Error::UnexpectedError("the resource's epoch kept moving".into()))
    }

    /// Moves the epoch past `floor`'s, unless tokens are already above it.
    async fn raise_epoch(&self, client: &zk::Client, parent: &str, floor: FencingToken) -> Result<(), zk::Error> {
        let needed = (floor.get() >> 32) + 1;
        loop {
            let epoch = self.read_epoch(client, parent).await?;
            if epoch.value >= needed {
                return Ok(());
            }
            match client
                .set_data(parent, needed.to_string().as_bytes(), Some(epoch.version))
                .await
            {
                Ok(stat) => {
                    self.parents.lock().unwrap_or_else(PoisonError::into_inner).insert(
                        parent.to_owned(),
                        Epoch {
                            value: needed,
                            version: stat.version,
                        },
                    );
                    return Ok(());
                }
                Err(zk::Error::BadVersion) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes every node of `owner` under `parent`, best effort: the way
    /// out of every failure path, so no orphan stays queued.
    async fn abandon(&self, client: &zk::Client, parent: &str, owner: &OwnerId) {
        let Ok(children) = client.list_children(parent).await else {
            return;
        };
        for child in children.iter().filter(|c| owner_of(c) == Some(owner.as_str())) {
            let path = format!("{parent}/{child}");
            self.held.lock().remove(&path);
            if let Err(e) = client.delete(&path, None).await
                && e != zk::Error::NoNode
            {
                debug!(path, error = %e, "could not remove abandoned lock node; the session's end will");
            }
        }
    }

    /// Starts the ttl timer of a lease we now hold.
    fn hold(&self, client: &zk::Client, node: String, until: Instant) {
        let (expiry, mut timer) = watch::channel(until);
        self.held.lock().insert(node.clone(), expiry);
        let (client, held) = (client.clone(), Arc::clone(&self.held));
        tokio::spawn(async move {
            loop {
                let deadline = *timer.borrow_and_update();
                tokio::select! {
                    () = sleep_until(deadline) => {
                        // Still unrenewed under the map lock? Then it is over.
                        {
                            let mut leases = held.lock();
                            match leases.get(&node) {
                                Some(expiry) if *expiry.borrow() <= Instant::now() => {
                                    leases.remove(&node);
                                }
                                Some(_) => continue,
                                None => return,
                            }
                        }
                        if let Err(e) = client.delete(&node, None).await
                            && e != zk::Error::NoNode
                        {
                            debug!(node, error = %e, "expired lease not deleted; the session's end will");
                        }
                        return;
                    }
                    changed = timer.changed() => if changed.is_err() { return },
                }
            }
        });
    }

    /// Tells a lease that expired from one someone else holds, once our node
    /// was found gone.
    async fn why_not(&self, client: &zk::Client, resource: &str, owner: &OwnerId) -> Result<LockError, LockError> {
        let parent = self.parent(resource);
        let children = match client.list_children(&parent).await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(self.failed(client, e).await),
        };
        let resource = resource.to_owned();
        Ok(match head(&children) {
            Some(holder) if owner_of(holder) != Some(owner.as_str()) => LockError::HeldByOther { resource },
            _ => LockError::Expired { resource },
        })
    }

    /// The queue loop: our node exists; wait until it is the lowest.
    async fn wait_turn(
        &self,
        client: &zk::Client,
        parent: &str,
        node: &str,
        token: FencingToken,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<Turn, zk::Error> {
        let name = &node[parent.len() + 1..];
        let mut queued = false;
        loop {
            let sent = Instant::now();
            let mut children = client.list_children(parent).await?;
            children.sort_by_key(|c| sequence_of(c));
            let Some(at) = children.iter().position(|c| c == name) else {
                // Our node went away (deleted by hand): we are out of the queue.
                return Err(zk::Error::NoNode);
            };
            if at == 0 {
                self.hold(client, node.to_owned(), sent + ttl);
                return Ok(Turn::Granted {
                    token,
                    since: sent,
                    queued,
                });
            }
            queued = true;
            let predecessor = format!("{parent}/{}", children[at - 1]);
            let (stat, watcher) = client.check_and_watch_stat(&predecessor).await?;
            if stat.is_none() {
                continue;
            }
            tokio::select! {
                _ = watcher.changed() => {}
                () = sleep_until(deadline) => return Ok(Turn::TimedOut),
            }
        }
    }
}

async fn open_session(cluster: &str, timeout: Duration) -> Result<zk::Client, LockError> {
    zk::Client::connector()
        .with_session_timeout(timeout)
        .with_connection_timeout(timeout.min(Duration::from_secs(5)))
        .connect(cluster)
        .await
        .map_err(unavailable)
}

#[async_trait]
impl LockBackend for ZooKeeperLockBackend {
    fn name(&self) -> &'static str {
        "zookeeper"
    }

    async fn try_acquire(&self, resource: &str, owner: &OwnerId, ttl: Duration) -> Result<Attempt, LockError> {
        let client = self.client();
        self.check_ttl(&client, ttl)?;
        let parent = self.parent(resource);
        let sent = Instant::now();
        let outcome = async {
            let (node, token) = self.enqueue(&client, &parent, owner).await?;
            let children = client.list_children(&parent).await?;
            if head(&children).is_some_and(|h| *h == node[parent.len() + 1..]) {
                self.hold(&client, node, sent + ttl);
                return Ok(Attempt::Acquired { token });
            }
            client.delete(&node, None).await?;
            Ok(Attempt::Busy { retry_after: None })
        }
        .await;
        match outcome {
            Ok(attempt) => Ok(attempt),
            Err(e) => {
                self.abandon(&client, &parent, owner).await;
                Err(self.failed(&client, e).await)
            }
        }
    }

    async fn acquire_in_turn(
        &self,
        resource: &str,
        owner: &OwnerId,
        ttl: Duration,
        deadline: Instant,
    ) -> Option<Result<Turn, LockError>> {
        let client = self.client();
        if let Err(e) = self.check_ttl(&client, ttl) {
            return Some(Err(e));
        }
        let parent = self.parent(resource);
        let outcome = async {
            let (node, token) = self.enqueue(&client, &parent, owner).await?;
            self.wait_turn(&client, &parent, &node, token, ttl, deadline).await
        }
        .await;
        Some(match outcome {
            Ok(granted @ Turn::Granted { .. }) => Ok(granted),
            Ok(Turn::TimedOut) => {
                self.abandon(&client, &parent, owner).await;
                Ok(Turn::TimedOut)
            }
            Err(e) => {
                self.abandon(&client, &parent, owner).await;
                Err(self.failed(&client, e).await)
            }
        })
    }

    async fn extend(
        &self,
        resource: &str,
        owner: &OwnerId,
        token: FencingToken,
        ttl: Duration,
    ) -> Result<(), LockError> {
        let client = self.client();
        let node = node_path(&self.parent(resource), owner, token);
        let sent = Instant::now();
        match client.check_stat(&node).await {
            Ok(Some(_)) => {
                self.check_ttl(&client, ttl)?;
                let leases = self.held.lock();
                match leases.get(&node) {
                    // Only a lease whose timer has not fired can be renewed.
                    Some(expiry) if *expiry.borrow() > Instant::now() => {
                        expiry.send_replace(sent + ttl);
                        Ok(())
                    }
                    _ => Err(LockError::Expired {
                        resource: resource.to_owned(),
                    }),
                }
            }
            Ok(None) => {
                self.held.lock().remove(&node);
                Err(self.why_not(&client, resource, owner).await?)
            }
            // Ephemeral nodes die with their session: the lease is gone.
            Err(zk::Error::SessionExpired) => {
                self.replace_session(&client).await;
                Err(LockError::Expired {
                    resource: resource.to_owned(),
                })
            }
            Err(e) => Err(self.failed(&client, e).await),
        }
    }

    async fn release(&self, resource: &str, owner: &OwnerId, token: FencingToken) -> Result<(), LockError> {
        let client = self.client();
        let node = node_path(&self.parent(resource), owner, token);
        self.held.lock().remove(&node);
        match client.delete(&node, None).await {
            Ok(()) => Ok(()),
            Err(zk::Error::NoNode) => Err(self.why_not(&client, resource, owner).await?),
            Err(zk::Error::SessionExpired) => {
                self.replace_session(&client).await;
                Err(LockError::Expired {
                    resource: resource.to_owned(),
                })
            }
            Err(e) => Err(self.failed(&client, e).await),
        }
    }

    async fn raise_floor(&self, resource: &str, floor: FencingToken) -> Result<(), LockError> {
        let client = self.client();
        match self.raise_epoch(&client, &self.parent(resource), floor).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(&client, e).await),
        }
    }
}

/// Reads an epoch as stored in a parent's data (none or garbage: 0).
fn parse_epoch(data: &[u8]) -> u64 {
    std::str::from_utf8(data).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A resource name as one znode name: safe characters kept, the rest
/// (and a leading dot, since `.` and `..` are reserved) percent-encoded.
fn encode_component(resource: &str) -> String {
    let mut out = String::with_capacity(resource.len());
    for (i, b) in resource.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-') || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token of the node with `sequence` under `epoch`. ZooKeeper counts
/// from 0, which is where every fence starts; tokens must be above it.
fn token_of(epoch: u64, sequence: u64) -> FencingToken {
    FencingToken::new((epoch << 32) | ((sequence & 0xFFFF_FFFF) + 1))
}

/// The path of `owner`'s node holding `token` under `parent`, as ZooKeeper
/// formats sequences (ten digits, nineteen past `i32::MAX`).
fn node_path(parent: &str, owner: &OwnerId, token: FencingToken) -> String {
    let sequence = (token.get() & 0xFFFF_FFFF).saturating_sub(1);
    if sequence <= i32::MAX as u64 {
        format!("{parent}/{}-{sequence:010}", owner.as_str())
    } else {
        format!("{parent}/{}-{sequence:019}", owner.as_str())
    }
}

fn sequence_of(child: &str) -> Option<u64> {
    child.rsplit_once('-').and_then(|(_, seq)| seq.parse().ok())
}

fn owner_of(child: &str) -> Option<&str> {
    child.rsplit_once('-').map(|(owner, _)| owner)
}

/// The node at the head of the queue: the holder.
fn head(children: &[String]) -> Option<&String> {
    children.iter().min_by_key(|c| sequence_of(c).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn resource_names_become_one_safe_component() {
        assert_eq!(encode_component("coupon:SPRING-1"), "coupon:SPRING-1");
        assert_eq!(encode_component("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_component(".."), "%2E.");
        assert_eq!(encode_component("ü"), "%C3%BC");
    }

    #[test]
    fn node_names_round_trip_owner_and_sequence() {
        let owner = OwnerId::random();
        for epoch in [0, 7] {
            let path = node_path("/r/x", &owner, token_of(epoch, 42));
            let child = path.rsplit_once('/').unwrap().1;
            assert_eq!(child, format!("{}-0000000042", owner.as_str()));
            assert_eq!(sequence_of(child), Some(42));
            assert_eq!(owner_of(child), Some(owner.as_str()));
        }
        assert_eq!(token_of(0, 0).get(), 1, "the first token is above a fresh fence");
    }

    #[test]
    fn a_raised_epoch_puts_every_token_above_the_floor() {
        let floor = FencingToken::new(1_795_000_000_123_456);
        let epoch = (floor.get() >> 32) + 1;
        assert!(token_of(epoch, 0) > floor);
        assert!(token_of(epoch, 1) > token_of(epoch, 0));
        assert!(token_of(epoch + 1, 0) > token_of(epoch, 5));
        assert_eq!(parse_epoch(b""), 0);
        assert_eq!(parse_epoch(epoch.to_string().as_bytes()), epoch);
    }

    #[test]
    fn the_head_is_the_lowest_sequence_whatever_the_owner() {
        let children = vec![
            "ffff-0000000010".to_owned(),
            "0000-0000000002".to_owned(),
            "aaaa-0000000007".to_owned(),
        ];
        assert_eq!(head(&children).map(String::as_str), Some("0000-0000000002"));
        assert_eq!(head(&[]), None);
    }
}
