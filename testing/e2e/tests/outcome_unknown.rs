//! An ambiguous commit that cannot be resolved in time is answered
//! `504 outcome-unknown`, never a 503 (which promises nothing was
//! recorded): every attempt's answer is lost (the `reserve-answer-lost`
//! failpoint fires after each commit) until the deadline passes. The retry
//! with the same key then tells: the claim was recorded, once. Its own test
//! binary, because failpoints are global to the process.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Namespace, api_settings, assert_problem, claims_under_keys, unique};

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_cannot_be_resolved_in_time_is_outcome_unknown_not_refused() {
    let ns = Namespace::new("outcome-unknown");
    let mut settings = api_settings(&ns);
    settings.outcome_deadline = Duration::from_secs(1);
    let api = support::start_api(settings).await.unwrap();
    let code = unique("UNKNOWN");
    api.create_coupon(&code, 3, Some(1)).await.unwrap();
    let key = unique("unknown-outcome");
    let body = json!({"coupon": code, "user_id": "u1"});

    // Three lost answers in a row are resolved within the deadline.
    fail::cfg("reserve-answer-lost", "3*return").unwrap();
    let resolved = api.claim(&unique("resolved"), body.clone(), None).await.unwrap();
    assert_eq!(resolved.status(), StatusCode::ACCEPTED, "resolved by recording again");

    fail::cfg("reserve-answer-lost", "return").unwrap();
    let started = Instant::now();
    let unknown = api
        .claim(&key, json!({"coupon": code, "user_id": "u2"}), None)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(unknown.headers()["retry-after"], "1");
    let problem = assert_problem(unknown, StatusCode::GATEWAY_TIMEOUT, "/problems/outcome-unknown").await;
    assert_eq!(problem["title"], "Outcome unknown: retry with the same Idempotency-Key");
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(5)).contains(&took),
        "answered after {took:?}, with a deadline of 1 s"
    );
    fail::remove("reserve-answer-lost");

    // The claim was in fact committed, once; the retry replays it.
    assert_eq!(claims_under_keys(std::slice::from_ref(&key)).await, 1);
    let retried = api
        .claim(&key, json!({"coupon": code, "user_id": "u2"}), None)
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["status"], "pending");
    assert_eq!(claims_under_keys(std::slice::from_ref(&key)).await, 1);
}
