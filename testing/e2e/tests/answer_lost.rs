//! A 503 promises that nothing was recorded. When the connection dies after
//! Postgres committed a batch but before the answer arrived (injected: the
//! `reserve-answer-lost` failpoint), the API must not answer 503: it records
//! once more, finds the claim its first attempt committed, and answers 202.
//! Its own test binary, because failpoints are global to the process.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::{
    Namespace, TestWorker, api_settings, assert_claim_invariants, claims_under_keys, quickly_sweeping_worker_settings,
    unique,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_whose_answer_was_lost_is_accepted_not_refused() {
    let ns = Namespace::new("answer-lost");
    let api = support::start_api(api_settings(&ns)).await.unwrap();
    let worker = TestWorker::start(quickly_sweeping_worker_settings(&ns)).await.unwrap();
    let code = unique("LOST-ANSWER");
    api.create_coupon(&code, 3, Some(1)).await.unwrap();

    fail::cfg("reserve-answer-lost", "1*return").unwrap();
    let key = unique("lost-answer");
    let body = json!({"coupon": code, "user_id": "u1"});
    let accepted = api.claim_politely(&key, body.clone(), None).await.unwrap();
    assert_eq!(
        accepted.status(),
        reqwest::StatusCode::ACCEPTED,
        "the claim was committed, so it was accepted"
    );
    assert_eq!(claims_under_keys(std::slice::from_ref(&key)).await, 1);

    // Its event was never published: the sweeper decides it.
    let decided = api.claim_until_decided(&key, &body).await.unwrap();
    assert_eq!(decided["status"], "granted", "{decided}");
    assert_claim_invariants(&[code], 3).await;
    worker.stop().await.unwrap();
}
