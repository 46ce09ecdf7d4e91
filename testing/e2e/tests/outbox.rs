//! Announcements follow from the database: a decision Kafka does not take
//! is owed in the outbox and sent later, and nothing waits for it.

#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::HashMap, time::Duration};

use rdkafka::{Message, consumer::Consumer};
use serde_json::{Value, json};
use support::{Namespace, TestWorker, WorkerProcess, api_settings, assert_claim_invariants, db, kafka, unique};
use support::{owed, until};

const WORKER: &str = support::WORKER_BIN;

/// Reads `ClaimDecided` messages from the start of `topic` until each of
/// `claims` was seen; returns the last seen for each.
async fn announced(topic: &str, claims: &[String]) -> HashMap<String, Value> {
    let reader = turnstile_bus::reader_from_start(&kafka(), &unique("decided-reader")).unwrap();
    reader.subscribe(&[topic]).unwrap();
    let mut seen: HashMap<String, Value> = HashMap::new();
    while !claims.iter().all(|c| seen.contains_key(c)) {
        let message = tokio::time::timeout(Duration::from_secs(60), reader.recv())
            .await
            .expect("every decision is announced within 60 s")
            .unwrap();
        let view: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let claim_id = view["claim_id"].as_str().unwrap().to_owned();
        if claims.contains(&claim_id) {
            seen.insert(claim_id, view);
        }
    }
    seen
}

/// With every `ClaimDecided` refused (as when its topic is unwritable), the
/// worker still decides each claim and moves on: the decisions are owed in
/// the outbox, its readiness and metrics report the backlog, and a worker
/// that can announce sends them all, exactly as stored, and empties the
/// outbox.
#[tokio::test(flavor = "multi_thread")]
async fn decisions_kafka_refuses_are_owed_and_announced_later() {
    let ns = Namespace::new("owed");
    let topics = turnstile_bus::Topics::with_prefix(&ns.topic_prefix);
    let api = support::start_api(api_settings(&ns)).await.unwrap();
    let mut refusing = WorkerProcess::spawn(WORKER, &ns, &[("FAILPOINTS", "announce-refused=return".to_owned())])
        .await
        .unwrap();
    let code = unique("OWED");
    api.create_coupon(&code, 5, Some(1)).await.unwrap();
    let mut claim_ids = Vec::new();
    for user in 0..8 {
        let response = api
            .claim_politely(
                &unique("owed"),
                json!({"coupon": code, "user_id": format!("u{user}")}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
        let view: Value = response.json().await.unwrap();
        claim_ids.push(view["claim_id"].as_str().unwrap().to_owned());
    }
    let uuids: Vec<uuid::Uuid> = claim_ids.iter().map(|c| c.parse().unwrap()).collect();
    let pool = db().await.unwrap();
    until(
        Duration::from_secs(60),
        "every claim decided by the refusing worker",
        || {
            let (pool, uuids) = (pool.clone(), uuids.clone());
            async move {
                let pending: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM claims WHERE claim_id = ANY($1) AND status = 'pending'")
                        .bind(&uuids)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                pending == 0
            }
        },
    )
    .await;
    until(Duration::from_secs(30), "all eight announcements owed", || async {
        owed(&topics.decided).await == 8
    })
    .await;
    let readyz = format!("http://{}/readyz", refusing.metrics_addr);
    until(Duration::from_secs(30), "readiness reports the backlog", || async {
        let report: Value = reqwest::get(&readyz).await.unwrap().json().await.unwrap();
        report["announce_backlog"] == 8
    })
    .await;
    assert_eq!(refusing.metric("turnstile_announce_backlog").await.unwrap(), 8.0);
    refusing.signal("TERM").unwrap();
    refusing.wait().await.unwrap();

    let worker = TestWorker::start(support::worker_settings(&ns)).await.unwrap();
    let seen = announced(&topics.decided, &claim_ids).await;
    let stored: Vec<(uuid::Uuid, String, i64)> =
        sqlx::query_as("SELECT claim_id, status, fence FROM claims WHERE claim_id = ANY($1)")
            .bind(&uuids)
            .fetch_all(&pool)
            .await
            .unwrap();
    for (claim_id, status, fence) in stored {
        let view = &seen[&claim_id.to_string()];
        assert_eq!(view["status"], status.as_str(), "{view}");
        assert_eq!(view["fence"], fence, "{view}");
    }
    until(Duration::from_secs(30), "the outbox emptied", || async {
        owed(&topics.decided).await == 0
    })
    .await;
    assert_claim_invariants(&[code], 5).await;
    worker.stop().await.unwrap();
}

/// The sweeper owes what it decides in the same transaction, and the relay
/// announces it: a claim whose event never reached this deployment's
/// workers is decided from the database and its `ClaimDecided` appears on
/// their topic.
#[tokio::test(flavor = "multi_thread")]
async fn a_swept_decision_is_announced_from_the_outbox() {
    let api = support::start_api(api_settings(&Namespace::new("swept-owed-api")))
        .await
        .unwrap();
    let code = unique("SWEPTOWED");
    api.create_coupon(&code, 1, Some(1)).await.unwrap();
    let response = api
        .claim_politely(&unique("swept-owed"), json!({"coupon": code, "user_id": "u1"}), None)
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let view: Value = response.json().await.unwrap();
    let claim_id = view["claim_id"].as_str().unwrap().to_owned();

    // A worker of another deployment: the event never reaches it.
    let ns = Namespace::new("swept-owed-worker");
    let topics = turnstile_bus::Topics::with_prefix(&ns.topic_prefix);
    let worker = TestWorker::start(support::quickly_sweeping_worker_settings(&ns))
        .await
        .unwrap();
    let seen = announced(&topics.decided, std::slice::from_ref(&claim_id)).await;
    assert_eq!(seen[&claim_id]["status"], "granted");
    until(Duration::from_secs(30), "the outbox emptied", || async {
        owed(&topics.decided).await == 0
    })
    .await;
    assert_claim_invariants(&[code], 1).await;
    worker.stop().await.unwrap();
}
