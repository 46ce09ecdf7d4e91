//! The claim is the Postgres row: a claim whose event Kafka never gets
//! (here the API drops the publish after the commit, through a failpoint)
//! was still answered 202, and is decided by the worker's sweeper once it
//! has been pending for the sweep window. Its own test binary, because
//! failpoints are global to the process.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::time::Instant;

use serde_json::{Value, json};
use support::{Namespace, TestWorker, api_settings, assert_claim_invariants, quickly_sweeping_worker_settings, unique};

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_whose_publish_fails_after_commit_is_accepted_and_swept() {
    let ns = Namespace::new("publish-after-commit");
    let api = support::start_api(api_settings(&ns)).await.unwrap();
    let worker = TestWorker::start(quickly_sweeping_worker_settings(&ns)).await.unwrap();
    let code = unique("UNPUBLISHED");
    api.create_coupon(&code, 3, Some(1)).await.unwrap();

    fail::cfg("publish-after-commit", "1*return").unwrap();
    let key = unique("unpublished");
    let body = json!({"coupon": code, "user_id": "u1"});
    let started = Instant::now();
    let accepted = api.claim_politely(&key, body.clone(), None).await.unwrap();
    assert_eq!(
        accepted.status(),
        reqwest::StatusCode::ACCEPTED,
        "committed, so accepted"
    );
    let unpublished = support::metric(&api.operator_url("/metrics"), "turnstile_claims_unpublished_total")
        .await
        .unwrap();
    assert_eq!(unpublished, 1.0);

    // A retry with the same key is a replay of the committed claim, not a
    // new one and not a conflict.
    let replay: Value = api
        .claim_politely(&key, body.clone(), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replay["status"], "pending");

    let decided = api.claim_until_decided(&key, &body).await.unwrap();
    assert_eq!(decided["status"], "granted", "{decided}");
    println!(
        "unpublished claim decided {:.1} s after acceptance (sweep window 2 s)",
        started.elapsed().as_secs_f64()
    );
    assert_claim_invariants(&[code], 3).await;
    worker.stop().await.unwrap();
}
