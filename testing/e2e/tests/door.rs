//! The door: after a sell-out, claims are answered from what the decisions
//! settled, with nothing recorded, published or decided; a key already
//! recorded is still replayed; every API replica learns it from the feed.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Namespace, TestApi, TestWorker, api_settings, db, unique, until, worker_settings};

/// Claims on `code` recorded in the database.
async fn rows(code: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM claims WHERE resource_id = $1")
        .bind(code)
        .fetch_one(&db().await.unwrap())
        .await
        .unwrap()
}

/// A metric of `api`, summed over its labels, or one label's value.
async fn metric(api: &TestApi, name: &str) -> f64 {
    support::metric(&api.operator_url("/metrics"), name).await.unwrap()
}

/// How many sold-out resources `api`'s door knows.
async fn sold_out_known(api: &TestApi) -> f64 {
    let text = api.metrics_text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("turnstile_door_known{what=\"sold_out\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Posts a claim for `user` with `key` and returns the status and body.
async fn claim(api: &TestApi, code: &str, user: &str, key: &str) -> (StatusCode, Value) {
    let response = api
        .claim_politely(key, json!({"coupon": code, "user_id": user}), None)
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_sell_out_claims_are_answered_at_the_door_and_recorded_keys_still_replay() {
    let ns = Namespace::new("door");
    let api = support::start_api(api_settings(&ns)).await.unwrap();
    // A replica, running before the sale: it learns from the feed alone.
    let replica = support::start_api(api_settings(&ns)).await.unwrap();
    let _worker = TestWorker::start(worker_settings(&ns)).await.unwrap();
    let code = unique("DOOR");
    api.create_coupon(&code, 3, Some(1)).await.unwrap();

    // The sale: three grants, then a fourth claim (answered at the door
    // once the third grant's decision reached the API).
    let mut granted_keys = Vec::new();
    for user in ["u1", "u2", "u3", "u4"] {
        let key = unique("door-sale");
        let view = api
            .claim_until_decided(&key, &json!({"coupon": code, "user_id": user}))
            .await
            .unwrap();
        if view["status"] == "granted" {
            granted_keys.push((user, key));
        }
    }
    assert_eq!(granted_keys.len(), 3);
    until(Duration::from_secs(30), "the API's door knows the sell-out", || async {
        sold_out_known(&api).await == 1.0
    })
    .await;
    until(
        Duration::from_secs(30),
        "the replica's door knows the sell-out",
        || async { sold_out_known(&replica).await == 1.0 },
    )
    .await;

    // 10 000 more claims: every one answered at the door, with the
    // pipeline's own body, and nothing recorded or published.
    let recorded = rows(&code).await;
    let published = metric(&api, "turnstile_claims_accepted_total").await;
    let door_answers = metric(&api, "turnstile_door_answers_total").await;
    let answers: Vec<(StatusCode, Value)> = stream::iter(0..10_000)
        .map(|n| {
            let (api, code) = (&api, &code);
            async move { claim(api, code, &format!("crowd-{n}"), &unique("door-crowd")).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for (status, view) in &answers {
        assert_eq!(*status, StatusCode::OK, "{view}");
        assert_eq!(view["status"], "rejected");
        assert_eq!(view["reason"], "sold_out");
    }
    assert_eq!(rows(&code).await, recorded, "nothing recorded");
    assert_eq!(
        metric(&api, "turnstile_claims_accepted_total").await,
        published,
        "nothing accepted or published"
    );
    assert_eq!(
        metric(&api, "turnstile_door_answers_total").await - door_answers,
        10_000.0
    );
    // Not recorded, so not found.
    let id = answers[0].1["claim_id"].as_str().unwrap();
    let read = api.http.get(api.url(&format!("/v1/claims/{id}"))).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::NOT_FOUND);

    // A granted claim's key, sent again: its grant, never "sold out".
    let (user, key) = &granted_keys[0];
    let (status, view) = claim(&api, &code, user, key).await;
    assert_eq!((status, view["status"].as_str()), (StatusCode::OK, Some("granted")));
    // The same key with another body: refused, as anywhere.
    let (status, _) = claim(&api, &code, "someone-else", key).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // A user at the limit is answered as the pipeline would: the limit
    // comes first.
    let (status, view) = claim(&api, &code, user, &unique("door-again")).await;
    assert_eq!(
        (status, view["reason"].as_str()),
        (StatusCode::OK, Some("per_user_limit"))
    );

    // The replica answers at the door too, having decided nothing itself.
    let (status, view) = claim(&replica, &code, "crowd-replica", &unique("door-replica")).await;
    assert_eq!((status, view["reason"].as_str()), (StatusCode::OK, Some("sold_out")));
    assert_eq!(metric(&replica, "turnstile_door_answers_total").await, 1.0);
    assert_eq!(rows(&code).await, recorded);

    // A restarted API knows nothing: its claims go to the pipeline until a
    // decision it tails teaches it, and then they are answered at the door.
    let restarted = support::start_api(api_settings(&ns)).await.unwrap();
    assert_eq!(sold_out_known(&restarted).await, 0.0);
    let mut through_the_pipeline = 0;
    until(
        Duration::from_secs(60),
        "the restarted API's door knows the sell-out",
        || {
            through_the_pipeline += 1;
            let (restarted, code) = (&restarted, &code);
            async move {
                let view = restarted
                    .claim_until_decided(&unique("door-restarted"), &json!({"coupon": code, "user_id": "late"}))
                    .await
                    .unwrap();
                assert_eq!(view["reason"], "sold_out");
                sold_out_known(restarted).await == 1.0
            }
        },
    )
    .await;
    assert_eq!(
        rows(&code).await,
        recorded + through_the_pipeline,
        "decided by the pipeline"
    );
    let (status, view) = claim(&restarted, &code, "later", &unique("door-restarted")).await;
    assert_eq!((status, view["reason"].as_str()), (StatusCode::OK, Some("sold_out")));
    assert_eq!(rows(&code).await, recorded + through_the_pipeline);
}
