//! A backend of your own, checked by the same contract suite as the five
//! that ship: here an in-process store, a map behind a mutex.
//!
//! A backend makes each operation one atomic step on its store: take the
//! lock and issue a greater token together, extend and release only the
//! caller's own lease. [`LockClient`] adds waiting, renewal and the
//! lease-lost signal on top, the same for every backend. The contract
//! (`turnstile_lock::testsuite`, feature `testsuite`) then runs mutual
//! exclusion under contention, strictly increasing tokens, owner-checked
//! release and extend, keep-alive and lease loss against it.
//!
//! `cargo run -p turnstile-lock --example custom_backend --features testsuite`

#![allow(clippy::print_stdout)] // an example reports what it did

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use futures::FutureExt as _;
use tokio::time::Instant;
use turnstile_lock::{
    Attempt, FencingToken, LockBackend, LockClient, LockError, OwnerId,
    testsuite::{self, ContractEnv},
};

/// One resource: its last token, and the lease if one is held.
#[derive(Debug, Default)]
struct Entry {
    token: u64,
    lease: Option<(OwnerId, Instant)>,
}

/// The store every client of the example shares (a server, in real life).
#[derive(Debug, Default)]
struct Store(Mutex<HashMap<String, Entry>>);

impl Store {
    fn with<T>(&self, resource: &str, f: impl FnOnce(&mut Entry, Instant) -> T) -> T {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(map.entry(resource.to_owned()).or_default(), Instant::now())
    }
}

/// A client's view of the store.
#[derive(Debug)]
struct InMemoryBackend(Arc<Store>);

/// Whose lease `entry` holds now, for owner-checked calls.
fn check(entry: &Entry, owner: &OwnerId, now: Instant, resource: &str) -> Result<(), LockError> {
    match &entry.lease {
        Some((holder, until)) if *until > now && holder == owner => Ok(()),
        Some((_, until)) if *until > now => Err(LockError::HeldByOther {
            resource: resource.to_owned(),
        }),
        _ => Err(LockError::Expired {
            resource: resource.to_owned(),
        }),
    }
}

#[async_trait]
impl LockBackend for InMemoryBackend {
    fn name(&self) -> &'static str {
        "in-memory"
    }

    async fn try_acquire(&self, resource: &str, owner: &OwnerId, ttl: Duration) -> Result<Attempt, LockError> {
        Ok(self.0.with(resource, |entry, now| match &entry.lease {
            Some((_, until)) if *until > now => Attempt::Busy {
                retry_after: Some(*until - now),
            },
            _ => {
                entry.token += 1;
                entry.lease = Some((owner.clone(), now + ttl));
                Attempt::Acquired {
                    token: FencingToken::new(entry.token),
                }
            }
        }))
    }

    async fn extend(&self, resource: &str, owner: &OwnerId, _: FencingToken, ttl: Duration) -> Result<(), LockError> {
        self.0.with(resource, |entry, now| {
            check(entry, owner, now, resource)?;
            entry.lease = Some((owner.clone(), now + ttl));
            Ok(())
        })
    }

    async fn release(&self, resource: &str, owner: &OwnerId, _: FencingToken) -> Result<(), LockError> {
        self.0.with(resource, |entry, now| {
            check(entry, owner, now, resource)?;
            entry.lease = None;
            Ok(())
        })
    }

    async fn raise_floor(&self, resource: &str, floor: FencingToken) -> Result<(), LockError> {
        self.0
            .with(resource, |entry, _| entry.token = entry.token.max(floor.get()));
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let store = Arc::new(Store::default());
    let connect_to = Arc::clone(&store);
    let vanish_from = Arc::clone(&store);
    let env = ContractEnv {
        connect: Arc::new(move || {
            let store = Arc::clone(&connect_to);
            async move { Arc::new(InMemoryBackend(store)) as Arc<dyn LockBackend> }.boxed()
        }),
        vanish: Arc::new(move |resource| {
            let store = Arc::clone(&vanish_from);
            async move { store.with(&resource, |entry, _| entry.lease = None) }.boxed()
        }),
        namespace: "example".to_owned(),
    };
    testsuite::run_all(&env).await;

    // And it is used like any other backend.
    let locks = LockClient::new(Arc::new(InMemoryBackend(store)));
    let lease = locks.try_acquire("doc", Duration::from_secs(1)).await.expect("free");
    println!("the contract passed; a lease with token {}", lease.token());
    lease.release().await.expect("ours");
}
