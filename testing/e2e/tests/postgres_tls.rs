//! Postgres the way managed services run it: TLS required, certificates
//! checked (`sslmode=verify-full`), and a read replica behind
//! `TURNSTILE_DATABASE_READ_URL`.
//!
//! Each test starts Postgres servers of its own (the stack's binaries, on
//! free loopback ports) with certificates made for the test, so nothing
//! depends on how the stack's Postgres is configured. The Kafka topics and
//! the Redis keys are the shared stack's, under names of the test's own.

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::pki::TestCa;
use support::{Namespace, TestApi, TestWorker, api_settings, scratch_dir, unique, worker_settings};
use turnstile_private_stores::PrivatePostgres;
use turnstile_runtime::settings::DatabaseSettings;

/// A Postgres of the test's own that takes TLS connections only, with a
/// certificate its own CA signed, in a scratch directory of its own.
struct TlsPostgres {
    dir: PathBuf,
    server: PrivatePostgres,
    /// The CA's certificate, for `sslrootcert`.
    ca_file: PathBuf,
}

impl TlsPostgres {
    async fn start(test: &str) -> Self {
        let dir = scratch_dir(test);
        let ca = TestCa::new("turnstile postgres test CA");
        let server = PrivatePostgres::start_with_tls(&dir, &ca.server()).await.unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self { dir, server, ca_file }
    }

    /// The URL of its `turnstile` database with `query`, by host name
    /// `localhost`, which `verify-full` checks against the certificate.
    fn url(&self, query: &str) -> String {
        format!("postgres://postgres@localhost:{}/turnstile?{query}", self.server.port())
    }

    /// The URL that checks the server's certificate against `ca_file`.
    fn verify_full_url(&self, ca_file: &Path) -> String {
        self.url(&format!("sslmode=verify-full&sslrootcert={}", ca_file.display()))
    }

    async fn stop(self) {
        self.server.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a connection to `url` is encrypted, asked of the server.
async fn connection_is_encrypted(url: &str) -> bool {
    let pool = turnstile_store::connect(url, 1, Duration::from_secs(5)).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    ssl
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmode_require_and_verify_full_connect_and_a_wrong_ca_or_plain_tcp_is_refused() {
    let postgres = TlsPostgres::start("pg-tls-modes").await;
    let other_ca_file = postgres.dir.join("other-ca.pem");
    std::fs::write(&other_ca_file, TestCa::new("another CA").pem()).unwrap();

    // Encrypted, certificate not checked.
    assert!(connection_is_encrypted(&postgres.url("sslmode=require")).await);
    // Encrypted, chain and host name checked against the CA.
    assert!(connection_is_encrypted(&postgres.verify_full_url(&postgres.ca_file)).await);

    // A CA that did not sign the server's certificate: the handshake fails.
    let wrong_ca = postgres.verify_full_url(&other_ca_file);
    let refused = turnstile_store::connect(&wrong_ca, 1, Duration::from_secs(5)).await;
    assert!(
        refused.is_err(),
        "verify-full accepted a certificate its CA did not sign"
    );
    // The server takes no plain TCP.
    let plain = turnstile_store::connect(&postgres.url("sslmode=disable"), 1, Duration::from_secs(5)).await;
    assert!(plain.is_err(), "the server took a connection without TLS");

    postgres.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_is_accepted_and_decided_on_a_postgres_that_requires_verify_full() {
    let postgres = TlsPostgres::start("pg-tls-claims").await;
    let database_url = postgres.verify_full_url(&postgres.ca_file);

    let ns = Namespace::new("pg-tls-claims");
    let api = support::start_api(claim_api::Settings {
        database: DatabaseSettings {
            url: database_url.clone().into(),
        },
        ..api_settings(&ns)
    })
    .await
    .unwrap();
    let worker = TestWorker::start(claim_worker::Settings {
        database: DatabaseSettings {
            url: database_url.clone().into(),
        },
        ..worker_settings(&ns)
    })
    .await
    .unwrap();

    let code = unique("TLS");
    api.create_coupon(&code, 1, None).await.unwrap();
    let decided = api
        .claim_until_decided(&unique("tls-key"), &json!({"coupon": code, "user_id": "u-tls"}))
        .await
        .unwrap();
    assert_eq!(decided["status"], "granted", "{decided}");

    // The granted claim is in the TLS server's database.
    let pool = turnstile_store::connect(&database_url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    let granted: i64 = sqlx::query_scalar("SELECT count(*) FROM claims WHERE status = 'granted'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(granted, 1);
    pool.close().await;

    worker.stop().await.unwrap();
    postgres.stop().await;
}

/// Reads the replica-fallback counter for `reason` from the API's metrics.
async fn fallbacks(api: &TestApi, reason: &str) -> f64 {
    let text = api.metrics_text().await.unwrap();
    let line = format!("turnstile_replica_fallbacks_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_the_replica_has_not_replayed_yet_is_read_from_the_primary() {
    let dir = scratch_dir("pg-replica");
    let primary = PrivatePostgres::start(&dir.join("primary")).await.unwrap();
    let replica = primary.start_replica(&dir.join("replica")).await.unwrap();

    let ns = Namespace::new("pg-replica");
    let api = support::start_api(claim_api::Settings {
        database: DatabaseSettings {
            url: primary.url().into(),
        },
        database_read_url: Some(replica.url().into()),
        ..api_settings(&ns)
    })
    .await
    .unwrap();

    // The replica stops replaying: from now on it lags without limit.
    let replica_pool = turnstile_store::connect(&replica.url(), 1, Duration::from_secs(5))
        .await
        .unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica_pool)
        .await
        .unwrap();

    let code = unique("REPLICA");
    api.create_coupon(&code, 5, None).await.unwrap();
    let coupon = api
        .http
        .get(api.url(&format!("/v1/coupons/{code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(coupon.status(), StatusCode::OK, "a coupon just created is found");

    let accepted = api
        .claim_politely(&unique("replica-key"), json!({"coupon": code, "user_id": "u-1"}), None)
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let claim_id = accepted.json::<Value>().await.unwrap()["claim_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = api
        .http
        .get(api.url(&format!("/v1/claims/{claim_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK, "a claim just accepted is never a 404");
    let missing_before = fallbacks(&api, "missing").await;
    assert!(
        missing_before >= 2.0,
        "the coupon and the claim came from the primary: {missing_before}"
    );

    // Replay resumes; once the replica has the claim, it answers alone.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica_pool)
        .await
        .unwrap();
    let id = uuid::Uuid::parse_str(&claim_id).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let replicated: Option<i32> = sqlx::query_scalar("SELECT 1 FROM claims WHERE claim_id = $1")
            .bind(id)
            .fetch_optional(&replica_pool)
            .await
            .unwrap();
        if replicated.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never replayed the claim"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = api
        .http
        .get(api.url(&format!("/v1/claims/{claim_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(
        fallbacks(&api, "missing").await,
        missing_before,
        "a replicated claim was read from the primary"
    );

    replica_pool.close().await;
    replica.stop().await;
    primary.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
