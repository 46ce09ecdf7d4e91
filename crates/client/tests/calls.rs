//! The call loop against a scripted transport, on tokio's paused clock:
//! what is sent on each attempt, when, and what the caller gets back.

#![allow(clippy::unwrap_used)]

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;
use turnstile_claim::{ClaimStatus, IdempotencyKey, RejectReason, ResourceId, UserId};
use turnstile_client::{
    AttemptEnd, AttemptOutcome, CallOptions, Client, ErrorKind, NewClaim, Observer, PreparedClaim, Request, Response,
    RetryPolicy, ThrottleSettings, Transport, TransportError,
};
use uuid::Uuid;

/// A request as the transport saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Option<Bytes>,
}

/// Answers from a script, in order; records every request.
#[derive(Debug, Default, Clone)]
struct Script {
    answers: Arc<Mutex<VecDeque<Option<Response>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Script {
    fn new(answers: impl IntoIterator<Item = Option<Response>>) -> Self {
        Self {
            answers: Arc::new(Mutex::new(answers.into_iter().collect())),
            ..Self::default()
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Transport for Script {
    async fn send(&self, request: &Request<'_>) -> Result<Response, TransportError> {
        let mut headers = HeaderMap::new();
        for (name, value) in request.headers() {
            headers.append(name, value.clone());
        }
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            method: request.method().clone(),
            path: request.path().to_owned(),
            headers,
            body: request.body().cloned(),
        });
        let next = self.answers.lock().unwrap().pop_front();
        match next {
            Some(Some(response)) => Ok(response),
            Some(None) => Err(TransportError::new("connection reset")),
            None => panic!("the script has no answer left"),
        }
    }
}

fn answer(status: u16, headers: &[(&'static str, &'static str)], body: &'static str) -> Option<Response> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, HeaderValue::from_static(value));
    }
    Some(Response {
        status: StatusCode::from_u16(status).unwrap(),
        headers: map,
        body: Bytes::from_static(body.as_bytes()),
    })
}

const PENDING: &str =
    r#"{"claim_id":"00000000-0000-0000-0000-00000000002a","status":"pending","reason":null,"fence":null}"#;
const SOLD_OUT: &str =
    r#"{"claim_id":"00000000-0000-0000-0000-00000000002a","status":"rejected","reason":"sold_out","fence":7}"#;
const OVERLOADED: &str = r#"{"type":"/problems/overloaded","title":"Overloaded","status":429,"detail":"d"}"#;

fn claim(key: Option<&str>) -> PreparedClaim {
    let claim = NewClaim::coupon(
        ResourceId::parse("coupon", "SPRING").unwrap(),
        UserId::parse("u-42").unwrap(),
    );
    PreparedClaim::new(&claim, key.map(|k| IdempotencyKey::parse(k).unwrap()))
}

/// A client whose draws are always `unit`: jitter factor `0.5 + unit`.
fn scripted(script: &Script, unit: f64) -> Client<Script> {
    Client::new(script.clone())
        .with_api_key("tsk_test")
        .unwrap()
        .with_random(move || unit)
}

#[tokio::test(start_paused = true)]
async fn refusals_are_retried_as_asked_under_one_key_with_the_ticket() {
    let script = Script::new([
        answer(429, &[("retry-after", "2"), ("turnstile-ticket", "t-1")], OVERLOADED),
        answer(503, &[("retry-after", "1")], ""),
        answer(202, &[], PENDING),
    ]);
    let client = scripted(&script, 0.5).with_prefer_wait(Duration::from_secs(3));
    let claim = claim(None);
    let start = Instant::now();
    let answer = client.claim(&claim).await.unwrap();
    assert_eq!(answer.attempts, 3);
    assert_eq!(answer.claim.status, ClaimStatus::Pending);
    assert_eq!(answer.claim.claim_id.as_uuid(), Uuid::from_u128(42));

    let seen = script.seen();
    assert_eq!(seen.len(), 3);
    // Jitter factor 1: exactly what Retry-After asked.
    assert_eq!(seen[0].at - start, Duration::ZERO);
    assert_eq!(seen[1].at - seen[0].at, Duration::from_secs(2));
    assert_eq!(seen[2].at - seen[1].at, Duration::from_secs(1));
    let key = seen[0].headers["idempotency-key"].to_str().unwrap();
    assert_eq!(
        Uuid::parse_str(key).unwrap().get_version_num(),
        7,
        "a key made for the claim"
    );
    for request in &seen {
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/v1/claims");
        assert_eq!(request.headers["idempotency-key"], key, "one key for every attempt");
        assert_eq!(request.body.as_ref(), Some(claim.body()), "the same body");
        assert_eq!(request.headers["authorization"], "Bearer tsk_test");
        assert_eq!(request.headers["prefer"], "wait=3");
    }
    assert!(!seen[0].headers.contains_key("turnstile-ticket"));
    // The 429's ticket goes back with the retry, and stays through the 503.
    assert_eq!(seen[1].headers["turnstile-ticket"], "t-1");
    assert_eq!(seen[2].headers["turnstile-ticket"], "t-1");
}

#[tokio::test(start_paused = true)]
async fn a_newer_ticket_replaces_the_old_and_an_oversized_one_is_ignored() {
    let huge: &'static str = Box::leak("x".repeat(2_000).into_boxed_str());
    let script = Script::new([
        answer(429, &[("retry-after", "1"), ("turnstile-ticket", "t-1")], ""),
        answer(429, &[("retry-after", "1"), ("turnstile-ticket", "t-2")], ""),
        answer(429, &[("retry-after", "1"), ("turnstile-ticket", huge)], ""),
        answer(200, &[], SOLD_OUT),
    ]);
    let answer = scripted(&script, 0.0).claim(&claim(Some("k-1"))).await.unwrap();
    assert_eq!(answer.claim.reason, Some(RejectReason::SoldOut));
    assert!(answer.claim.is_final());
    let tickets: Vec<_> = script
        .seen()
        .iter()
        .map(|s| {
            s.headers
                .get("turnstile-ticket")
                .map(|t| t.to_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        tickets,
        [
            None,
            Some("t-1".to_owned()),
            Some("t-2".to_owned()),
            Some("t-2".to_owned())
        ]
    );
    assert!(script.seen().iter().all(|s| s.headers["idempotency-key"] == "k-1"));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_and_the_attempts_bound_the_retries() {
    let refusal = || answer(429, &[("retry-after", "2")], OVERLOADED);
    // Jitter factor 1: retries at 2 s and 4 s; one at 6 s would start after 5 s.
    let script = Script::new([refusal(), refusal(), refusal()]);
    let client = scripted(&script, 0.5).with_retry(RetryPolicy::try_new(10, Duration::from_secs(5)).unwrap());
    let error = client.claim(&claim(None)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Refused);
    assert!(matches!(
        &error,
        turnstile_client::Error::Refused {
            attempts: 3,
            status: StatusCode::TOO_MANY_REQUESTS,
            ..
        }
    ));
    assert!(error.problem().is_some_and(|p| p.is("overloaded")));
    assert_eq!(script.seen().len(), 3);

    let script = Script::new([refusal(), refusal()]);
    let client = scripted(&script, 0.5).with_retry(RetryPolicy::try_new(2, Duration::from_secs(60)).unwrap());
    let error = client.claim(&claim(None)).await.unwrap_err();
    assert!(matches!(error, turnstile_client::Error::Refused { attempts: 2, .. }));

    // A deadline of the caller's own.
    let script = Script::new([refusal()]);
    let client = scripted(&script, 0.5).with_retry(RetryPolicy::try_new(10, Duration::from_secs(60)).unwrap());
    let until = CallOptions::until((Instant::now() + Duration::from_secs(1)).into_std());
    let error = client.claim_with(&claim(None), until, &mut ()).await.unwrap_err();
    assert!(matches!(error, turnstile_client::Error::Refused { attempts: 1, .. }));
}

#[tokio::test(start_paused = true)]
async fn answers_that_are_not_refusals_are_not_retried() {
    let cases = [
        (
            answer(422, &[], r#"{"type":"/problems/unknown-resource"}"#),
            ErrorKind::Rejected,
        ),
        (answer(401, &[], ""), ErrorKind::Unauthorized),
        (answer(403, &[], ""), ErrorKind::Unauthorized),
        (answer(504, &[("retry-after", "1")], ""), ErrorKind::OutcomeUnknown),
        (answer(408, &[], ""), ErrorKind::OutcomeUnknown),
        (answer(500, &[], ""), ErrorKind::OutcomeUnknown),
        (None, ErrorKind::OutcomeUnknown),
        (answer(204, &[], ""), ErrorKind::Protocol),
        (answer(202, &[], "not a claim"), ErrorKind::Protocol),
    ];
    for (response, kind) in cases {
        let script = Script::new([response]);
        let error = scripted(&script, 0.5).claim(&claim(None)).await.unwrap_err();
        assert_eq!(error.kind(), kind, "{error}");
        assert_eq!(script.seen().len(), 1, "{error}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sees_refusals_throttles_itself_and_says_so() {
    // Draws of 0: a request is dropped as soon as the probability is above 0.
    let script = Script::new([answer(429, &[("retry-after", "1")], OVERLOADED)]);
    let client = scripted(&script, 0.0)
        .with_retry(RetryPolicy::never())
        .with_throttle(ThrottleSettings::default());
    assert_eq!(client.rejection_probability(), 0.0);
    let first = client.claim(&claim(None)).await.unwrap_err();
    assert_eq!(first.kind(), ErrorKind::Refused);
    // One request, no accept: (1 - 0) / 2.
    assert!((client.rejection_probability() - 0.5).abs() < 1e-12);
    let second = client.claim(&claim(None)).await.unwrap_err();
    assert_eq!(second.kind(), ErrorKind::Throttled);
    assert!(second.kind().is_retryable());
    assert_eq!(script.seen().len(), 1, "the dropped request was not sent");
}

#[tokio::test(start_paused = true)]
async fn rejections_and_errors_of_the_request_count_as_accepts() {
    // 4xx and decided rejections are the server taking requests on: no throttling.
    let script = Script::new((0..50).map(|n| {
        if n % 2 == 0 {
            answer(422, &[], "")
        } else {
            answer(200, &[], SOLD_OUT)
        }
    }));
    let client = scripted(&script, 0.0).with_throttle(ThrottleSettings::default());
    for _ in 0..50 {
        let _ = client.claim(&claim(None)).await;
    }
    assert_eq!(script.seen().len(), 50);
    assert_eq!(client.rejection_probability(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn no_answer_is_not_an_accept() {
    let script = Script::new([None]);
    let client = scripted(&script, 0.0).with_throttle(ThrottleSettings::default());
    let error = client.claim(&claim(None)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutcomeUnknown);
    assert!(client.rejection_probability() > 0.0);
}

/// Records each attempt's outcome; declines the third.
#[derive(Default)]
struct Recorder {
    attempts: Vec<(u32, Option<u16>)>,
}

impl Observer for Recorder {
    fn before_attempt(&mut self, attempt: u32, _due: std::time::Instant) -> bool {
        attempt < 3
    }

    fn after_attempt(&mut self, end: &AttemptEnd<'_>) {
        let status = match end.outcome {
            AttemptOutcome::Answered(response) => Some(response.status.as_u16()),
            _ => None,
        };
        assert!(end.ended >= end.due);
        self.attempts.push((end.attempt, status));
    }
}

#[tokio::test(start_paused = true)]
async fn an_observer_sees_every_attempt_and_may_decline_one() {
    let refusal = || answer(503, &[("retry-after", "1")], "");
    let script = Script::new([refusal(), refusal()]);
    let mut recorder = Recorder::default();
    let error = scripted(&script, 0.5)
        .claim_with(&claim(None), CallOptions::default(), &mut recorder)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Abandoned);
    assert!(matches!(error, turnstile_client::Error::Abandoned { attempt: 3 }));
    assert_eq!(recorder.attempts, [(1, Some(503)), (2, Some(503))]);
}

#[tokio::test(start_paused = true)]
async fn a_claim_is_read_by_its_id_without_a_key_or_a_wait() {
    let script = Script::new([answer(200, &[], SOLD_OUT)]);
    let client = scripted(&script, 0.5).with_prefer_wait(Duration::from_secs(60));
    let claim = client
        .get_claim(turnstile_claim::ClaimId::from_uuid(Uuid::from_u128(42)))
        .await
        .unwrap();
    assert_eq!(claim.status, ClaimStatus::Rejected);
    let seen = script.seen();
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].path, "/v1/claims/00000000-0000-0000-0000-00000000002a");
    assert!(!seen[0].headers.contains_key("idempotency-key"));
    assert!(!seen[0].headers.contains_key("prefer"));
    assert_eq!(seen[0].body, None);

    let script = Script::new([answer(404, &[], "")]);
    let error = client_for_missing(&script).await;
    assert_eq!(error.kind(), ErrorKind::Rejected);
}

async fn client_for_missing(script: &Script) -> turnstile_client::Error {
    scripted(script, 0.5)
        .get_claim(turnstile_claim::ClaimId::from_uuid(Uuid::nil()))
        .await
        .unwrap_err()
}

#[test]
fn prefer_wait_is_capped_at_the_apis_ten_seconds() {
    let script = Script::new([answer(202, &[], PENDING)]);
    let client = scripted(&script, 0.5).with_prefer_wait(Duration::from_secs(60));
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(client.claim(&claim(None)))
        .unwrap();
    assert_eq!(script.seen()[0].headers["prefer"], "wait=10");
}
