//! Release wake-ups over Redis pub/sub, for the single-server and the
//! cluster backends alike: one RESP3 connection per process, subscribed to
//! the channels of resources somebody here is waiting for, reference-counted
//! so a channel is dropped when its last waiter leaves.
//!
//! On one server a dedicated connection subscribes to plain channels. On a
//! cluster the backend's own cluster connection subscribes to sharded
//! channels (`SSUBSCRIBE`), which it sends to the node owning the channel's
//! slot and moves to the new owner after a failover or a reshard.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

#[cfg(feature = "redis-cluster")]
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, PushInfo, PushKind, RedisResult, Value,
    aio::{ConnectionManager, ConnectionManagerConfig, SendError},
};
use tokio::sync::{Notify, OnceCell};
use tracing::debug;

use crate::{LockError, ReleaseSubscription};

/// The channels waited on in this process, shared with the push handler of
/// the connection that receives the releases.
#[derive(Clone, Default)]
pub(crate) struct Channels(Arc<Mutex<HashMap<String, Channel>>>);

struct Channel {
    notify: Arc<Notify>,
    waiters: usize,
    /// Whether the server has us subscribed. A cluster node that gives up a
    /// slot unsubscribes its clients from the slot's sharded channels; the
    /// next waiter then subscribes again, and finds the new owner.
    subscribed: bool,
}

impl Channels {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        // The map holds plain counters; a panic elsewhere cannot leave it torn.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The handler to give the connection that receives the releases.
    pub(crate) fn push_sender(&self) -> impl Fn(PushInfo) -> Result<(), SendError> + Send + Sync + 'static {
        let channels = self.clone();
        move |push: PushInfo| {
            channels.wake(push);
            Ok(())
        }
    }

    /// Routes one push from Redis to the waiters it concerns.
    fn wake(&self, push: PushInfo) {
        let mut channels = self.lock();
        let named = |data: &[Value]| match data.first() {
            Some(Value::BulkString(name)) => std::str::from_utf8(name).ok().map(str::to_owned),
            _ => None,
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(channel) = named(&push.data).and_then(|n| channels.get(&n)) {
                    // One waiter per process per release: the others would
                    // only lose the race to it.
                    channel.notify.notify_one();
                }
            }
            // The slot moved: releases on the new owner would be missed.
            PushKind::SUnsubscribe => {
                if let Some(channel) = named(&push.data).and_then(|n| channels.get_mut(&n)) {
                    channel.subscribed = false;
                    channel.notify.notify_waiters();
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
}

/// Where the hub subscribes.
enum Link {
    /// One server: plain channels on a dedicated connection, opened on the
    /// first subscription.
    Server(Box<ServerLink>),
    /// A cluster: sharded channels on the backend's cluster connection, whose
    /// pushes already go to the hub's [`Channels`].
    #[cfg(feature = "redis-cluster")]
    Cluster(ClusterConnection),
}

struct ServerLink {
    client: Client,
    config: ConnectionManagerConfig,
    conn: OnceCell<ConnectionManager>,
}

/// Release wake-ups for one backend instance. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ReleaseHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    backend: &'static str,
    link: Link,
    channels: Channels,
    /// Orders subscribe and unsubscribe calls so that a late unsubscribe can
    /// never undo a newer subscribe.
    changes: tokio::sync::Mutex<()>,
}

impl fmt::Debug for ReleaseHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseHub")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl ReleaseHub {
    /// Plain channels on one server, reached through `client` (RESP3).
    pub(crate) fn on_server(channels: Channels, client: Client, config: ConnectionManagerConfig) -> Self {
        Self::new(
            "redis",
            channels,
            Link::Server(Box::new(ServerLink {
                client,
                config,
                conn: OnceCell::new(),
            })),
        )
    }

    /// Sharded channels on a cluster, through `conn` (RESP3), built with
    /// `channels`' [`push_sender`](Channels::push_sender).
    #[cfg(feature = "redis-cluster")]
    pub(crate) fn on_cluster(channels: Channels, conn: ClusterConnection) -> Self {
        Self::new("redis-cluster", channels, Link::Cluster(conn))
    }

    fn new(backend: &'static str, channels: Channels, link: Link) -> Self {
        Self {
            inner: Arc::new(HubInner {
                backend,
                link,
                channels,
                changes: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub(crate) async fn subscribe(&self, channel: String) -> Result<ReleaseSubscription, LockError> {
        let backend = self.inner.backend;
        let unavailable = |e| LockError::unavailable(backend, e);
        let _ordered = self.inner.changes.lock().await;
        let (notify, needed) = {
            let mut channels = self.inner.channels.lock();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                notify: Arc::new(Notify::new()),
                waiters: 0,
                subscribed: false,
            });
            entry.waiters += 1;
            (Arc::clone(&entry.notify), !entry.subscribed)
        };
        let unsubscribe = Unsubscribe {
            hub: self.clone(),
            channel: channel.clone(),
        };
        if needed {
            // On failure `unsubscribe` drops here and undoes the count.
            self.inner.subscribe(&channel).await.map_err(unavailable)?;
            if let Some(entry) = self.inner.channels.lock().get_mut(&channel) {
                entry.subscribed = true;
            }
        }
        Ok(ReleaseSubscription::new(notify, Box::new(unsubscribe)))
    }
}

impl HubInner {
    async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        match &self.link {
            Link::Server(server) => {
                let conn = server
                    .conn
                    .get_or_try_init(|| async {
                        let config = server
                            .config
                            .clone()
                            .set_automatic_resubscription()
                            .set_push_sender(self.channels.push_sender());
                        ConnectionManager::new_with_config(server.client.clone(), config).await
                    })
                    .await?;
                conn.clone().subscribe(channel).await
            }
            #[cfg(feature = "redis-cluster")]
            Link::Cluster(conn) => conn.clone().ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        match &self.link {
            Link::Server(server) => match server.conn.get() {
                Some(conn) => conn.clone().unsubscribe(channel).await,
                None => Ok(()),
            },
            #[cfg(feature = "redis-cluster")]
            Link::Cluster(conn) => conn.clone().sunsubscribe(channel).await,
        }
    }
}

struct Unsubscribe {
    hub: ReleaseHub,
    channel: String,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let last = {
            let mut channels = self.hub.inner.channels.lock();
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
            if hub.inner.channels.lock().contains_key(&channel) {
                return;
            }
            if let Err(e) = hub.inner.unsubscribe(&channel).await {
                debug!(channel, error = %e, "unsubscribe failed");
            }
        });
    }
}
