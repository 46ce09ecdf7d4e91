//! The Redis backends over TLS (`rediss://`), against TLS-only servers with
//! certificates made for the test: single Redis, Redlock and Redis Cluster
//! take leases with a CA and a client certificate of their own; a wrong CA,
//! a missing client certificate and plain TCP are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{sync::Arc, time::Duration};

use support::{TestPki, TlsRedis, unique};
use turnstile_lock::{
    LockBackend, LockClient,
    backend::{
        redis::{RedisLockBackend, RedisLockConfig},
        redis_cluster::RedisClusterLockBackend,
        redlock::{RedlockBackend, RedlockConfig},
        tls::RedisTls,
    },
};

/// Takes a lease, checks its token grows on the next, releases both.
async fn leases_work(backend: Arc<dyn LockBackend>) {
    let locks = LockClient::new(backend);
    let resource = unique("tls");
    let first = locks
        .acquire(&resource, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .unwrap();
    let token = first.token();
    first.release().await.unwrap();
    let second = locks
        .acquire(&resource, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(second.token() > token, "fencing tokens grow over tls too");
    second.release().await.unwrap();
}

#[tokio::test]
async fn a_single_redis_takes_leases_over_tls_with_a_client_certificate() {
    let pki = TestPki::new().unwrap();
    let servers = TlsRedis::start(&pki, 1, true).await.unwrap();
    let config = RedisLockConfig::default().with_tls(pki.client_tls());
    let backend = RedisLockBackend::connect_with(&servers.urls()[0], config)
        .await
        .unwrap();
    leases_work(Arc::new(backend)).await;
}

#[tokio::test]
async fn redlock_takes_leases_over_tls() {
    let pki = TestPki::new().unwrap();
    let servers = TlsRedis::start(&pki, 3, true).await.unwrap();
    let backend = RedlockBackend::new(servers.urls(), RedlockConfig::default().with_tls(pki.client_tls())).unwrap();
    leases_work(Arc::new(backend)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_cluster_takes_leases_over_tls() {
    let pki = TestPki::new().unwrap();
    let cluster = TlsRedis::cluster(&pki).await.unwrap();
    let config = RedisLockConfig::default().with_tls(pki.client_tls());
    let backend = RedisClusterLockBackend::connect_with(cluster.urls(), config)
        .await
        .unwrap();
    leases_work(Arc::new(backend)).await;
}

#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused() {
    let (pki, other) = (TestPki::new().unwrap(), TestPki::new().unwrap());
    let servers = TlsRedis::start(&pki, 1, false).await.unwrap();
    let config = RedisLockConfig::default().with_tls(RedisTls::default().with_ca(other.ca_pem.as_bytes()));
    let refused = RedisLockBackend::connect_with(&servers.urls()[0], config).await;
    assert!(refused.is_err(), "a certificate from an untrusted CA was accepted");
}

#[tokio::test]
async fn a_server_that_asks_for_a_client_certificate_refuses_a_client_without() {
    let pki = TestPki::new().unwrap();
    let servers = TlsRedis::start(&pki, 1, true).await.unwrap();
    let config = RedisLockConfig::default().with_tls(RedisTls::default().with_ca(pki.ca_pem.as_bytes()));
    let refused = RedisLockBackend::connect_with(&servers.urls()[0], config).await;
    assert!(refused.is_err(), "a client without a certificate got in");
}

#[tokio::test]
async fn plain_tcp_against_a_tls_only_server_is_refused() {
    let pki = TestPki::new().unwrap();
    let servers = TlsRedis::start(&pki, 1, false).await.unwrap();
    let plain = format!("redis://127.0.0.1:{}", servers.ports[0]);
    let refused = RedisLockBackend::connect(&plain).await;
    assert!(refused.is_err(), "plain tcp talked to a tls-only server");
}
