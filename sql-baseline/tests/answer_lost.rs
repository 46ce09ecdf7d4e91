//! sql-baseline's answers match the database when a commit's answer is
//! lost (the `claim-answer-lost` failpoint fires after the commit): the
//! claim is tried again, finds its own committed decision and answers it;
//! one whose outcome cannot be known within the deadline is `504
//! outcome-unknown`, and the retry with the same key tells. Never a 503,
//! which promises nothing was recorded. Its own test binary, because
//! failpoints are global to the process.

#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sql_baseline::{Application, Settings};
use tokio_util::sync::CancellationToken;
use turnstile_claim::access::Role;
use turnstile_testkit::{
    assert_claim_invariants, assert_problem, claims_under_keys, client_with_key, database_url, mint_key, unique,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_commit_answer_is_resolved_or_answered_outcome_unknown() {
    let settings = Settings {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: turnstile_runtime::settings::DatabaseSettings {
            url: database_url().into(),
        },
        pg_pool: 4,
        pg_acquire_timeout: Duration::from_secs(5),
        pg_statement_timeout: Duration::from_secs(5),
        pg_lock_timeout: Duration::from_secs(2),
        outcome_deadline: Duration::from_secs(1),
        max_inflight: 32,
        max_body_bytes: 16 * 1024,
        callers: turnstile_http::CallerSettings::unlimited(Duration::from_secs(2)),
        tls: turnstile_http::tls::TlsSettings::default(),
    };
    let app = Application::build(settings).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));
    let http = client_with_key(&mint_key("default", Role::Claim).await);
    let admin = client_with_key(&mint_key("default", Role::Admin).await);
    let code = unique("SQLLOST");
    let created = admin
        .post(format!("{base}/v1/coupons"))
        .json(&json!({"code": code, "total": 5, "per_user_limit": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let claim = |key: String, user: &'static str| {
        http.post(format!("{base}/v1/claims"))
            .header("idempotency-key", key)
            .json(&json!({"coupon": code, "user_id": user}))
            .send()
    };

    // Two lost answers: the third attempt finds the committed decision.
    fail::cfg("claim-answer-lost", "2*return").unwrap();
    let resolved_key = unique("resolved");
    let resolved = claim(resolved_key.clone(), "u1").await.unwrap();
    assert_eq!(resolved.status(), StatusCode::OK);
    let resolved: Value = resolved.json().await.unwrap();
    assert_eq!(resolved["status"], "granted", "{resolved}");

    // Every answer lost until the deadline: the outcome is unknown.
    fail::cfg("claim-answer-lost", "return").unwrap();
    let unknown_key = unique("unknown");
    let unknown = claim(unknown_key.clone(), "u2").await.unwrap();
    assert_eq!(unknown.headers()["retry-after"], "1");
    assert_problem(unknown, StatusCode::GATEWAY_TIMEOUT, "/problems/outcome-unknown").await;
    fail::remove("claim-answer-lost");
    let retried = claim(unknown_key.clone(), "u2").await.unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(
        retried["status"], "granted",
        "decided by the attempt whose answer was lost: {retried}"
    );

    assert_eq!(claims_under_keys(&[resolved_key, unknown_key]).await, 2);
    assert_eq!(
        assert_claim_invariants(std::slice::from_ref(&code), 5).await,
        vec![2],
        "each claim granted once"
    );
    stop.cancel();
}
