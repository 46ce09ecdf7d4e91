//! Keep a lease alive while working, and stop the moment it is lost.
//!
//! `keep_alive` renews the lease every third of its ttl in the background;
//! `lost()` fires if a renewal fails or the lease runs out first (a network
//! partition, the store losing its data, a pause longer than the ttl). Work
//! done under the lease races that signal, and every write carries the
//! fencing token, so a write that loses the race is still refused by the
//! store that checks the fence.
//!
//! Needs a Redis on 127.0.0.1:6379 (`scripts/stack up` starts one):
//! `cargo run -p turnstile-lock --example keep_alive`

#![allow(clippy::print_stdout)] // an example reports what it did

use std::{sync::Arc, time::Duration};

use turnstile_lock::{LockClient, LockError, backend::redis::RedisLockBackend};

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let locks = LockClient::new(Arc::new(RedisLockBackend::connect(&url).await?));
    let resource = format!("example:keep-alive:{}", std::process::id());

    // A 1 s lease, waiting up to 2 s for it.
    let mut lease = locks
        .acquire(&resource, Duration::from_secs(1), Duration::from_secs(2))
        .await?;
    let lost = lease.keep_alive();
    let token = lease.token();

    // Three seconds of work: three times the ttl, kept alive by renewals.
    let work = async {
        for step in 1..=3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!("step {step} done under token {token}");
        }
    };
    tokio::select! {
        () = lost.cancelled() => {
            println!("lease lost: stop, the store will refuse token {token} from now on");
            return Ok(());
        }
        () = work => {}
    }
    lease.release().await?;

    // The next holder always gets a greater token.
    let next = locks.try_acquire(&resource, Duration::from_secs(1)).await?;
    assert!(next.token() > token);
    println!("released; the next lease has token {}", next.token());
    next.release().await
}
