//! `flash-sale --retry` and `--throttle` (turnstile-client's behaviour)
//! against a stub claim API whose answers are known in advance: every arrival's first request is refused (429 or 503 with
//! `Retry-After: 1`, or a final 409), and a request that comes back is
//! accepted. The audit runs against the stack's Postgres, where the stub
//! records the coupons it is asked to create (as the API would) but no
//! claim. The stub also checks the keys: coupons are created with the admin
//! key, claims sent with the claim key (401 otherwise, which the counts
//! would show).

#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{FromRef, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use turnstile_claim::{ResourceId, ResourceKey, TenantId, access::Role};
use turnstile_loadtest::{
    credentials::KeyArgs,
    flash_sale::{self, FlashSaleArgs, FlashSaleReport, Mode, SaleParams, ThrottleArgs},
};
use turnstile_store::{self as store, keys};
use uuid::Uuid;

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".to_owned())
}

/// Every request the stub saw, by idempotency key: when, and the body.
type Seen = Arc<Mutex<HashMap<String, Vec<(Instant, Bytes)>>>>;

/// The arrival number in a key `{run_id}-{n}`.
fn arrival(key: &str) -> u64 {
    key.rsplit('-').next().unwrap().parse().unwrap()
}

/// The `Authorization` each route expects.
#[derive(Clone)]
struct Expected {
    admin: String,
    claim: String,
}

#[derive(Clone, FromRef)]
struct Stub {
    seen: Seen,
    expected: Expected,
    pool: sqlx::PgPool,
}

fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    headers.get(header::AUTHORIZATION).is_some_and(|v| v == expected)
}

async fn coupon(
    State(expected): State<Expected>,
    State(pool): State<sqlx::PgPool>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> StatusCode {
    if !authorized(&headers, &expected.admin) {
        return StatusCode::UNAUTHORIZED;
    }
    let code = ResourceId::parse("coupon", body["code"].as_str().unwrap()).unwrap();
    let coupon = ResourceKey::coupon(TenantId::default_tenant(), code);
    let total = body["total"].as_i64().unwrap();
    assert!(store::create_resource(&pool, &coupon, total, Some(1)).await.unwrap());
    StatusCode::CREATED
}

async fn claim(
    State(seen): State<Seen>,
    State(expected): State<Expected>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&headers, &expected.claim) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    let n = arrival(&key);
    let attempts = {
        let mut seen = seen.lock().unwrap();
        let attempts = seen.entry(key).or_default();
        attempts.push((Instant::now(), body));
        attempts.len()
    };
    let retry_after = [(header::RETRY_AFTER, "1")];
    match (attempts, n % 3) {
        (1, 0) => (StatusCode::TOO_MANY_REQUESTS, retry_after).into_response(),
        (1, 1) => (StatusCode::SERVICE_UNAVAILABLE, retry_after).into_response(),
        (1, _) => StatusCode::CONFLICT.into_response(),
        _ => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"claim_id": Uuid::new_v4()})),
        )
            .into_response(),
    }
}

async fn stub(expected: Expected, pool: sqlx::PgPool) -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/coupons", post(coupon))
        .route("/v1/claims", post(claim))
        .with_state(Stub {
            seen: Arc::clone(&seen),
            expected,
            pool,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (api, seen)
}

async fn sale(
    retry: bool,
    throttle: ThrottleArgs,
    duration: u64,
) -> (FlashSaleReport, HashMap<String, Vec<(Instant, Bytes)>>) {
    // Keys of the stack's database: loadtest checks given keys there.
    let pool = sqlx::PgPool::connect(&database_url()).await.unwrap();
    let tenant = TenantId::default_tenant();
    let (claim_id, claim_key) = keys::create_key(&pool, &tenant, Role::Claim, Some("loadtest-retry-test"))
        .await
        .unwrap();
    let (admin_id, admin_key) = keys::create_key(&pool, &tenant, Role::Admin, Some("loadtest-retry-test"))
        .await
        .unwrap();
    let (api, seen) = stub(
        Expected {
            admin: format!("Bearer {}", admin_key.reveal()),
            claim: format!("Bearer {}", claim_key.reveal()),
        },
        pool.clone(),
    )
    .await;
    let args = FlashSaleArgs {
        api,
        cacert: None,
        mode: Mode::Pipeline,
        sale: SaleParams {
            database_url: database_url(),
            keys: KeyArgs {
                api_key: Some(claim_key.reveal().to_owned()),
                admin_key: Some(admin_key.reveal().to_owned()),
                tenant: None,
            },
            coupons: 1,
            stock: 10,
            users: 100,
            each_user_once: false,
            rate: 20.0,
            duration,
            max_in_flight: 4096,
            connections: std::num::NonZeroUsize::new(4).unwrap(),
            decide_timeout: 5,
            run_id: None,
            retry,
            throttle,
        },
        json: true,
        report: None,
    };
    let report = flash_sale::run(&args).await.unwrap();
    for key_id in [claim_id, admin_id] {
        keys::revoke_key(&pool, key_id).await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    (report, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_arrivals_come_back_with_the_same_request_until_the_window_ends() {
    let (report, seen) = sale(true, ThrottleArgs::default(), 3).await;
    assert!(report.retry);
    assert_eq!(report.offered, 60);
    assert_eq!(seen.len(), 60, "one key per arrival");
    assert_eq!(report.dropped, 0);
    // Every first request was refused: a third each 429, 503 and 409.
    assert_eq!(
        (report.throttled_429, report.errors_5xx, report.errors_4xx),
        (20, 20, 20)
    );
    // Every retry was accepted, and only retries were.
    assert_eq!(report.accepted, report.retries);
    assert_eq!(report.requests_sent, report.offered + report.retries);
    assert_eq!(report.arrivals_refused, report.offered - report.accepted);
    assert!((report.retry_share - report.retries as f64 / report.requests_sent as f64).abs() < 1e-12);
    // Arrivals of the first second came back within the 3 s window (a wait
    // is at most 1.5 s); those of the last half second could not.
    let came_back = |n: u64| {
        seen.iter()
            .any(|(key, attempts)| arrival(key) == n && attempts.len() > 1)
    };
    for n in (0..20).filter(|n| n % 3 != 2) {
        assert!(came_back(n), "arrival {n} never came back");
    }
    for n in 50..60 {
        assert!(!came_back(n), "arrival {n} came back after the window");
    }
    for (key, attempts) in &seen {
        if arrival(key) % 3 == 2 {
            assert_eq!(attempts.len(), 1, "{key}: a 409 is final");
        }
        assert!(attempts.len() <= 2, "{key}: retried after it was accepted");
        if let [(first, first_body), (again, again_body)] = attempts.as_slice() {
            assert_eq!(first_body, again_body, "{key}: the same body again");
            // Retry-After: 1, jittered by at least half.
            assert!(
                *again - *first >= Duration::from_millis(500),
                "{key} came back after {:?}",
                *again - *first
            );
        }
    }
    assert_eq!(report.refused_keys_taken, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retry_a_refused_arrival_is_counted_and_gone() {
    let (report, seen) = sale(false, ThrottleArgs::default(), 1).await;
    assert!(!report.retry);
    assert_eq!(report.offered, 20);
    assert_eq!((report.requests_sent, report.retries, report.accepted), (20, 0, 0));
    assert_eq!(report.arrivals_refused, 20);
    assert!(seen.values().all(|attempts| attempts.len() == 1));
    assert_eq!(report.retry_share, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_client_drops_requests_itself_and_they_are_counted_apart() {
    // Two of three first requests refused (429, 503), one answered 409: an
    // accept. With K = 1 the client drops about a third of its requests
    // once it has seen a few refusals.
    let throttle = ThrottleArgs {
        throttle: true,
        throttle_k: 1.0,
        throttle_window: 60,
    };
    let (report, seen) = sale(false, throttle, 3).await;
    assert!(report.throttle);
    assert_eq!(report.offered, 60);
    assert!(report.throttled_locally > 0, "{report:?}");
    // Dropped requests were never sent: not requests, not answers, not `dropped`.
    assert_eq!(report.requests_sent + report.throttled_locally, report.offered);
    assert_eq!(seen.len() as u64, report.requests_sent);
    assert_eq!(report.answers_by_status.values().sum::<u64>(), report.requests_sent);
    assert_eq!(report.dropped, 0);
    assert_eq!(report.arrivals_refused, report.offered);
    assert_eq!(report.refused_keys_taken, 0);
}
