//! The pipeline with Kafka over TLS: claim-api and a claim-worker reach a
//! broker of their own through TLS alone, with a CA made for the test, and
//! a claim is decided through it. tansu cannot serve TLS (docs/security.md),
//! so the broker sits behind a TLS front that advertises itself: the
//! bootstrap and every connection to the broker cross TLS, where librdkafka
//! checks the certificate against the CA. A
//! service told to trust another CA reaches no broker, and still accepts
//! claims: the database row is the claim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{path::PathBuf, time::Duration};

use reqwest::StatusCode;
use serde_json::json;
use support::pki::TestCa;
use support::{Namespace, TestWorker, api_settings, scratch_dir, unique, until, worker_settings};
use turnstile_private_stores::PrivateBroker;

/// A CA of the test's own and a broker behind a TLS front it signed.
struct TlsBroker {
    dir: PathBuf,
    broker: PrivateBroker,
}

impl TlsBroker {
    async fn start(test: &str) -> Self {
        let dir = scratch_dir(test);
        let ca = TestCa::new("turnstile kafka test CA");
        let tls = ca.server();
        let broker = PrivateBroker::start_with_tls(&dir, &tls).await.unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("other-ca.pem"), TestCa::new("another CA").pem()).unwrap();
        Self { dir, broker }
    }

    /// The namespace's Kafka settings, on this broker over TLS, trusting
    /// the CA in `ca_file`.
    fn kafka(&self, ns: &Namespace, ca_file: &str) -> turnstile_bus::KafkaSettings {
        let mut kafka = ns.kafka();
        kafka.brokers = self.broker.addr();
        kafka
            .read_properties([
                ("TURNSTILE_KAFKA_SECURITY_PROTOCOL".to_owned(), "ssl".to_owned()),
                (
                    "TURNSTILE_KAFKA_SSL_CA_LOCATION".to_owned(),
                    self.dir.join(ca_file).display().to_string(),
                ),
            ])
            .unwrap();
        kafka
    }

    fn front(&self) -> &turnstile_private_stores::TlsFront {
        self.broker.front().expect("a broker started with TLS has a front")
    }
}

/// A worker whose sweeper waits ten minutes: within a test, a claim is
/// decided through Kafka or not at all.
fn worker_without_sweeper(ns: &Namespace, kafka: turnstile_bus::KafkaSettings) -> claim_worker::Settings {
    claim_worker::Settings {
        kafka,
        sweep_after: Duration::from_secs(600),
        sweep_after_without_kafka: Duration::from_secs(600),
        ..worker_settings(ns)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_are_decided_through_a_broker_reached_over_tls_alone() {
    let tls = TlsBroker::start("kafka-tls").await;
    let ns = Namespace::new("kafka-tls");
    let api = support::start_api(claim_api::Settings {
        kafka: tls.kafka(&ns, "ca.pem"),
        ..api_settings(&ns)
    })
    .await
    .unwrap();
    let worker = TestWorker::start(worker_without_sweeper(&ns, tls.kafka(&ns, "ca.pem")))
        .await
        .unwrap();

    let code = unique("TLSKAFKA");
    api.create_coupon(&code, 3, None).await.unwrap();
    let decided = api
        .claim_until_decided(&unique("tls-key"), &json!({"coupon": code, "user_id": "u-tls"}))
        .await
        .unwrap();
    assert_eq!(decided["status"], "granted", "{decided}");
    assert!(
        tls.front().completed_handshakes() > 0,
        "the services reached the broker without its TLS front"
    );
    assert_eq!(
        tls.front().failed_handshakes(),
        0,
        "a client refused the broker's certificate"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn services_told_to_trust_another_ca_reach_no_broker_and_still_accept_claims() {
    let tls = TlsBroker::start("kafka-tls-wrong-ca").await;
    let ns = Namespace::new("kafka-tls-wrong-ca");
    let api = support::start_api(claim_api::Settings {
        kafka: tls.kafka(&ns, "other-ca.pem"),
        ..api_settings(&ns)
    })
    .await
    .expect("a broker out of reach does not stop the API");
    let worker = TestWorker::start(worker_without_sweeper(&ns, tls.kafka(&ns, "other-ca.pem")))
        .await
        .expect("a broker out of reach does not stop the worker");

    let code = unique("TLSKAFKA");
    api.create_coupon(&code, 3, None).await.unwrap();
    let response = api
        .claim(&unique("tls-key"), json!({"coupon": code, "user_id": "u-tls"}), None)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "the claim was not recorded");
    until(
        Duration::from_secs(30),
        "the services refuse the broker's certificate",
        || async { tls.front().failed_handshakes() > 0 },
    )
    .await;
    assert_eq!(
        tls.front().completed_handshakes(),
        0,
        "a service trusted a broker its CA did not sign"
    );
    worker.stop().await.unwrap();
}
