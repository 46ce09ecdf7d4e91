//! The broker may fail in any way: decisions go on from the database.
//!
//! Each test runs its own broker (tansu, in memory, on a free port), so
//! killing it touches no other test; a restart brings it back empty, as a
//! broker without persistent storage comes back after a crash.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Namespace, TestApi, WorkerProcess, api_settings, assert_claim_invariants, db, scratch_dir, unique};
use support::{owed, until};
use turnstile_private_stores::PrivateBroker;

const WORKER: &str = support::WORKER_BIN;

/// How many of `claims` are still pending.
async fn pending(claims: &[uuid::Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM claims WHERE claim_id = ANY($1) AND status = 'pending'")
        .bind(claims)
        .fetch_one(&db().await.unwrap())
        .await
        .unwrap()
}

/// One test's pipeline on a broker of its own: claim-api in this process,
/// a claim-worker process with `worker_env`, and a coupon on sale.
struct OwnBrokerPipeline {
    broker: PrivateBroker,
    topics: turnstile_bus::Topics,
    api: TestApi,
    worker: WorkerProcess,
    code: String,
}

impl OwnBrokerPipeline {
    async fn start(name: &str, stock: i64, worker_env: &[(&str, String)]) -> Self {
        let log_dir = scratch_dir(name);
        let broker = PrivateBroker::start(&log_dir).await.unwrap();
        let ns = Namespace::new(name);
        let mut settings = api_settings(&ns);
        settings.kafka.brokers = broker.addr();
        let api = support::start_api(settings).await.unwrap();
        let mut env = vec![("TURNSTILE_KAFKA_BROKERS", broker.addr())];
        env.extend_from_slice(worker_env);
        let worker = WorkerProcess::spawn(WORKER, &ns, &env).await.unwrap();
        let code = unique(name);
        api.create_coupon(&code, stock, Some(1)).await.unwrap();
        Self {
            broker,
            topics: turnstile_bus::Topics::with_prefix(&ns.topic_prefix),
            api,
            worker,
            code,
        }
    }

    /// Claims a unit for `user`; returns the claim id of the `202`.
    async fn claim(&self, user: &str) -> uuid::Uuid {
        let body = json!({"coupon": self.code, "user_id": user});
        let response = self.api.claim_politely(&unique("claim"), body, None).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let view: Value = response.json().await.unwrap();
        view["claim_id"].as_str().unwrap().parse().unwrap()
    }
}

/// With the broker killed, claims are still accepted and decided, from the
/// database, by the sweeper; their announcements are owed. The broker comes
/// back empty: the topics are recreated and every owed announcement is
/// sent. (That the group consumes again is checked by
/// `a_topic_deleted_and_recreated_by_someone_else_is_consumed_again` and by
/// the chaos scenarios `broker-restart-empty` and `broker-down-60s`.)
#[tokio::test(flavor = "multi_thread")]
async fn claims_are_decided_while_the_broker_is_down_and_announced_when_it_returns_empty() {
    let mut p = OwnBrokerPipeline::start(
        "broker-outage",
        20,
        &[
            // The consume path decides everything while the broker is up.
            ("TURNSTILE_SWEEP_AFTER", "60s".to_owned()),
            ("TURNSTILE_SWEEP_AFTER_WITHOUT_KAFKA", "1s".to_owned()),
            ("TURNSTILE_SWEEP_INTERVAL", "250ms".to_owned()),
        ],
    )
    .await;
    let first = p.claim("u-before").await;
    until(Duration::from_secs(60), "the first claim decided", || async {
        pending(&[first]).await == 0
    })
    .await;

    p.broker.kill().await.unwrap();
    let mut during = Vec::new();
    for user in 0..15 {
        during.push(p.claim(&format!("u-down-{user}")).await);
    }
    until(
        Duration::from_secs(60),
        "every claim decided with the broker down",
        || async { pending(&during).await == 0 },
    )
    .await;
    // The count goes up once the sweep's decisions are committed, so a
    // scrape can come between the commit and the count.
    until(
        Duration::from_secs(10),
        "decisions made without Kafka counted",
        || async {
            p.worker
                .metric("turnstile_claims_decided_without_kafka_total")
                .await
                .unwrap()
                >= 1.0
        },
    )
    .await;
    assert_eq!(p.worker.metric("turnstile_kafka_up").await.unwrap(), 0.0);
    assert!(owed(&p.topics.decided).await >= 15, "their announcements are owed");

    p.broker.restart().await.unwrap();
    until(Duration::from_secs(60), "the owed announcements sent", || async {
        owed(&p.topics.decided).await == 0
    })
    .await;
    let recreated = p.worker.metric("turnstile_kafka_topics_recreated_total").await.unwrap()
        + support::metric(
            &p.api.operator_url("/metrics"),
            "turnstile_kafka_topics_recreated_total",
        )
        .await
        .unwrap();
    assert!(recreated >= 3.0, "all three topics recreated, counted {recreated}");
    assert_eq!(p.worker.metric("turnstile_kafka_up").await.unwrap(), 1.0);

    assert_claim_invariants(&[p.code], 20).await;
    p.broker.stop().await;
}

/// A topic deleted on a live broker and recreated by another service's
/// keeper (here: by the test, before this worker's keeper looks): the
/// worker's group had lost its partitions with the topic, and gets them
/// back without a restart: the worker subscribes again.
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_deleted_and_recreated_by_someone_else_is_consumed_again() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};

    // No sweeping at all: the claims must come through Kafka. The sweeper
    // is database-wide, and this worker sees Kafka as down while the topic
    // is gone; with the default window it would decide the outage test's
    // pending claims, running at the same time, and count them as its own.
    let p = OwnBrokerPipeline::start(
        "topic-deleted",
        5,
        &[
            ("TURNSTILE_SWEEP_AFTER", "10m".to_owned()),
            ("TURNSTILE_SWEEP_AFTER_WITHOUT_KAFKA", "10m".to_owned()),
        ],
    )
    .await;
    let first = p.claim("u-before").await;
    until(Duration::from_secs(60), "the first claim decided", || async {
        pending(&[first]).await == 0
    })
    .await;

    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", p.broker.addr())
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(&[&p.topics.requested], &options).await.unwrap() {
        result.unwrap();
    }
    let new = NewTopic::new(&p.topics.requested, 3, TopicReplication::Fixed(1));
    for result in admin.create_topics([&new], &options).await.unwrap() {
        result.unwrap();
    }

    // The sweep window is ten minutes: a decision within the wait below is
    // the consume path's.
    let after = p.claim("u-after").await;
    until(
        Duration::from_secs(90),
        "a claim sent after the recreation consumed",
        || async { pending(&[after]).await == 0 },
    )
    .await;
    assert_eq!(p.worker.metric("turnstile_claims_swept_total").await.unwrap(), 0.0);
    assert_claim_invariants(&[p.code], 5).await;
    p.broker.stop().await;
}
