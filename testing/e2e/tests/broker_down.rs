//! Kafka is the fast path, not the record: while the broker is down,
//! claims are still accepted, each answered at once after its commit. The
//! batch's slot does not wait for Kafka's acknowledgements (with one slot,
//! a slot held until a delivery times out would stall every claim behind
//! it), and no Kafka breaker refuses claims. The events Kafka never took
//! are counted, and their claims are left to the sweeper.
//!
//! The broker is a private one, so killing it touches no other test.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Namespace, api_settings, claims_under_keys, scratch_dir, unique};
use turnstile_private_stores::PrivateBroker;

#[tokio::test(flavor = "multi_thread")]
async fn claims_are_accepted_at_once_while_the_broker_is_down() {
    let logs = scratch_dir("broker-down");
    let mut broker = PrivateBroker::start(&logs).await.unwrap();
    let ns = Namespace::new("broker-down");
    let mut settings = api_settings(&ns);
    settings.kafka.brokers = broker.addr();
    settings.accept_batches = 1;
    let api = support::start_api(settings).await.unwrap();
    let code = unique("NO-BROKER");
    api.create_coupon(&code, 100, Some(1)).await.unwrap();
    let post = |key: String, user: String| {
        let (api, body) = (&api, json!({"coupon": code, "user_id": user}));
        async move { api.claim(&key, body, None).await }
    };

    let up = post(unique("up"), "u-up".to_owned()).await.unwrap();
    assert_eq!(up.status(), StatusCode::ACCEPTED);

    broker.kill().await.unwrap();
    let keys: Vec<String> = (0..30).map(|i| unique(&format!("down-{i}"))).collect();
    let mut slowest = Duration::ZERO;
    for (i, key) in keys.iter().enumerate() {
        let started = Instant::now();
        let answer = post(key.clone(), format!("u{i}")).await.unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            answer.status(),
            StatusCode::ACCEPTED,
            "claim {i}: {}",
            answer.text().await.unwrap()
        );
    }
    // The producer gives up on a delivery after 5 s; one slot held that
    // long would make the second claim wait for it.
    assert!(
        slowest < Duration::from_secs(2),
        "a claim waited {slowest:?} with the broker down"
    );
    assert_eq!(claims_under_keys(&keys).await, 30, "every 202 is a committed claim");

    // Kafka took none of them: each is counted, for the sweeper to decide.
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.metric_value("turnstile_claims_unpublished_total").await < 30 {
        assert!(Instant::now() < deadline, "undelivered events were not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ready: the API accepts claims, and says Kafka is away.
    let ready = api.anonymous.get(api.operator_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["kafka"], false, "{ready}");
}
