//! The pipeline with every Redis connection over TLS: the API's cache, the
//! worker's cache and the worker's lock on one TLS-only Redis that asks for
//! a client certificate, with certificates made for the test. A service
//! told to trust another CA does not start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{path::PathBuf, time::Duration};

use serde_json::json;
use support::pki::TestCa;
use support::{Namespace, TestWorker, api_settings, scratch_dir, unique, until, worker_settings};
use turnstile_claim::{ResourceId, ResourceKey, TenantId};
use turnstile_lock::backend::tls::{self, RedisTls};
use turnstile_private_stores::PrivateRedis;
use turnstile_runtime::settings::{CacheSettings, RedisTlsSettings};
use turnstile_store::cache::ResourceCache;

/// A CA of the test's own, its files, and a TLS-only Redis it signed.
struct TlsStack {
    dir: PathBuf,
    redis: PrivateRedis,
    /// Trusts the CA and shows the client certificate.
    settings: RedisTlsSettings,
}

impl TlsStack {
    async fn start(test: &str) -> Self {
        let dir = scratch_dir(test);
        let ca = TestCa::new("turnstile redis test CA");
        let tls = ca.server();
        let (client_pem, client_key) = ca.client("a claim service");
        let redis = PrivateRedis::start_with_tls(&dir, &tls, &ca.pem(), true).await.unwrap();
        for (name, content) in [
            ("ca.pem", ca.pem()),
            ("client.pem", client_pem),
            ("client.key", client_key),
        ] {
            std::fs::write(dir.join(name), content).unwrap();
        }
        let settings = RedisTlsSettings {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join("client.pem")),
            key: Some(dir.join("client.key").into()),
        };
        Self { dir, redis, settings }
    }

    fn cache(&self) -> CacheSettings {
        CacheSettings {
            url: self.redis.url().into(),
        }
    }

    /// What a service gets from settings that trust another CA.
    fn trusting_another_ca(&self) -> RedisTlsSettings {
        let other = TestCa::new("another CA");
        std::fs::write(self.dir.join("other-ca.pem"), other.pem()).unwrap();
        RedisTlsSettings {
            ca: Some(self.dir.join("other-ca.pem")),
            ..self.settings.clone()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_are_decided_with_the_cache_and_the_lock_on_a_tls_only_redis() {
    let stack = TlsStack::start("redis-tls").await;
    let ns = Namespace::new("redis-tls");
    let api = support::start_api(claim_api::Settings {
        cache: stack.cache(),
        redis_tls: stack.settings.clone(),
        ..api_settings(&ns)
    })
    .await
    .unwrap();
    let worker = TestWorker::start(claim_worker::Settings {
        cache: stack.cache(),
        redis_tls: stack.settings.clone(),
        // The redis lock backend on the cache's Redis, over TLS too.
        lock_backend: claim_worker::LockBackendKind::Redis,
        lock_redis_url: None,
        ..worker_settings(&ns)
    })
    .await
    .unwrap();

    let code = unique("TLSREDIS");
    api.create_coupon(&code, 3, None).await.unwrap();
    let decided = api
        .claim_until_decided(&unique("tls-key"), &json!({"coupon": code, "user_id": "u-tls"}))
        .await
        .unwrap();
    assert_eq!(decided["status"], "granted", "{decided}");

    // The worker wrote the stock to the cache over TLS: read it back the same way.
    let client_tls = RedisTls::from_files(stack.settings.ca.as_deref(), stack.settings.client()).unwrap();
    let conn = tls::client(stack.redis.url(), Some(&client_tls))
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let cache = ResourceCache::new(conn, "turnstile");
    let coupon = ResourceKey::coupon(TenantId::default_tenant(), ResourceId::parse("coupon", &code).unwrap());
    until(Duration::from_secs(10), "the cache holds the stock", || async {
        cache
            .get(&coupon)
            .await
            .unwrap()
            .is_some_and(|cached| cached.remaining == 2 && cached.total == 3)
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn services_told_to_trust_another_ca_do_not_start() {
    let stack = TlsStack::start("redis-tls-wrong-ca").await;
    let ns = Namespace::new("redis-tls-wrong-ca");
    let api = support::start_api(claim_api::Settings {
        cache: stack.cache(),
        redis_tls: stack.trusting_another_ca(),
        ..api_settings(&ns)
    })
    .await;
    assert!(api.is_err(), "the api trusted a redis its CA did not sign");
    let worker = TestWorker::start(claim_worker::Settings {
        cache: stack.cache(),
        redis_tls: stack.trusting_another_ca(),
        ..worker_settings(&ns)
    })
    .await;
    assert!(worker.is_err(), "the worker trusted a redis its CA did not sign");
}
