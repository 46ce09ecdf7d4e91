//! Tickets and the door under load, against a real API: a claim refused
//! for load gets a signed `Turnstile-Ticket` and a `Retry-After`; the retry
//! that presents it keeps its first attempt's place (the same ticket comes
//! back), while a forged or transplanted one is ignored; and a claim the
//! door can answer is answered even when there is no slot for it.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use claim_api::ticket::TicketKeys;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Namespace, TestApi, TestWorker, api_settings, unique, until, worker_settings};

const KEYS: &str = "t1=ticket-test-secret-0123456789";

/// An API that refuses every claim for load (`TURNSTILE_MAX_PENDING_CLAIMS=0`),
/// once it has sampled the backlog.
async fn refusing_api(ns: &Namespace) -> TestApi {
    let mut settings = api_settings(ns);
    settings.max_pending_claims = 0;
    settings.ticket_keys = Some(TicketKeys::parse(KEYS).unwrap());
    support::start_api(settings).await.unwrap()
}

/// Posts a claim on `code` with `key` and, if given, a ticket.
async fn post(api: &TestApi, code: &str, user: &str, key: &str, ticket: Option<&str>) -> reqwest::Response {
    let mut request = api
        .http
        .post(api.url("/v1/claims"))
        .header("idempotency-key", key)
        .json(&json!({"coupon": code, "user_id": user}));
    if let Some(ticket) = ticket {
        request = request.header("turnstile-ticket", ticket);
    }
    request.send().await.unwrap()
}

/// The value of `turnstile_tickets_total{outcome}` on `api`.
async fn tickets(api: &TestApi, outcome: &str) -> f64 {
    let text = api.metrics_text().await.unwrap();
    let prefix = format!("turnstile_tickets_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `api` refuses claims for its backlog (its first sample).
async fn until_refusing(api: &TestApi, code: &str) {
    until(Duration::from_secs(30), "the API refuses for its backlog", || async {
        post(api, code, "probe", &unique("probe"), None).await.status() == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_for_load_carries_a_ticket_that_keeps_the_first_attempts_place() {
    let ns = Namespace::new("tickets");
    let api = refusing_api(&ns).await;
    let code = unique("TICKET");
    api.create_coupon(&code, 10, Some(1)).await.unwrap();
    until_refusing(&api, &code).await;

    let key = unique("ticket-key");
    let refused = post(&api, &code, "u1", &key, None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
    let ticket = refused.headers()["turnstile-ticket"].to_str().unwrap().to_owned();
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "/problems/overloaded");

    // The ticket is the API's, for this tenant and key, and names a first
    // attempt of a moment ago.
    let keys = TicketKeys::parse(KEYS).unwrap();
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let first = keys
        .verify(&ticket, "default", &key, now_ms, 120_000)
        .expect("a valid ticket");
    assert!(now_ms - first < 30_000);

    // Presented again, it keeps that first attempt: the same ticket comes back.
    let honoured_before = tickets(&api, "honoured").await;
    let again = post(&api, &code, "u1", &key, Some(&ticket)).await;
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(again.headers()["turnstile-ticket"].to_str().unwrap(), ticket);
    assert_eq!(tickets(&api, "honoured").await, honoured_before + 1.0);

    // Under another key (transplanted) or edited (forged), it is ignored:
    // the claim is a newcomer and gets a ticket of its own.
    let ignored_before = tickets(&api, "ignored").await;
    let other_key = unique("ticket-other");
    let transplanted = post(&api, &code, "u2", &other_key, Some(&ticket)).await;
    assert_eq!(transplanted.status(), StatusCode::TOO_MANY_REQUESTS);
    let own = transplanted.headers()["turnstile-ticket"].to_str().unwrap().to_owned();
    assert_ne!(own, ticket);
    let own_first = keys
        .verify(&own, "default", &other_key, now_ms + 60_000, 120_000)
        .unwrap();
    assert!(own_first >= first, "a newcomer's place is now, not the stolen ticket's");
    let forged = ticket.replacen(&first.to_string(), &(first - 60_000).to_string(), 1);
    let edited = post(&api, &code, "u1", &key, Some(&forged)).await;
    assert_eq!(edited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(tickets(&api, "ignored").await, ignored_before + 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_door_answers_a_sold_out_claim_that_has_no_slot() {
    let ns = Namespace::new("tickets-door");
    let selling = support::start_api(api_settings(&ns)).await.unwrap();
    let refusing = refusing_api(&ns).await;
    let _worker = TestWorker::start(worker_settings(&ns)).await.unwrap();
    let sold = unique("TICKET-SOLD");
    let open = unique("TICKET-OPEN");
    selling.create_coupon(&sold, 1, Some(1)).await.unwrap();
    selling.create_coupon(&open, 10, Some(1)).await.unwrap();
    until_refusing(&refusing, &open).await;

    let granted = selling
        .claim_until_decided(&unique("sold-1"), &json!({"coupon": sold, "user_id": "first"}))
        .await
        .unwrap();
    assert_eq!(granted["status"], "granted");

    // The refusing API learns the sell-out from the feed; from then on a
    // claim on it is answered, slot or not.
    until(
        Duration::from_secs(30),
        "the door answers on the refusing API",
        || async { post(&refusing, &sold, "late", &unique("late"), None).await.status() == StatusCode::OK },
    )
    .await;
    let key = unique("late");
    let answered = post(&refusing, &sold, "late-2", &key, None).await;
    assert_eq!(answered.status(), StatusCode::OK);
    assert!(answered.headers().get("location").is_none(), "not recorded");
    let body: Value = answered.json().await.unwrap();
    assert_eq!(body["status"], "rejected");
    assert_eq!(body["reason"], "sold_out");

    // A claim the door cannot answer is still refused, with a ticket.
    let refused = post(&refusing, &open, "someone", &unique("open"), None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("turnstile-ticket"));
}
