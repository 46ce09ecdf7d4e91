//! sql-baseline against the real Postgres: a hot coupon under concurrent
//! users, idempotent replays, the per-user limit and bad input.

#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sql_baseline::{Application, Settings};
use tokio_util::sync::CancellationToken;
use turnstile_claim::access::Role;
use turnstile_testkit::{
    assert_claim_invariants, assert_problem, claims_under_keys, client_with_key, database_url, db, mint_key, unique,
};

/// A baseline serving on a free port for the length of a test, with a
/// claim key (`http`) and an admin key (`admin`) of the default tenant.
struct Baseline {
    base: String,
    http: reqwest::Client,
    admin: reqwest::Client,
    stop: CancellationToken,
}

impl Baseline {
    async fn start() -> Self {
        // Enough room that no test request is shed while the hot row is queued.
        Self::start_with(2048).await
    }

    async fn start_with(max_inflight: usize) -> Self {
        let settings = Settings {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: turnstile_runtime::settings::DatabaseSettings {
                url: database_url().into(),
            },
            pg_pool: 16,
            pg_acquire_timeout: Duration::from_secs(30),
            pg_statement_timeout: Duration::from_secs(30),
            pg_lock_timeout: Duration::from_secs(30),
            outcome_deadline: Duration::from_secs(10),
            max_inflight,
            max_body_bytes: 16 * 1024,
            // No buckets: one test client stands for many callers.
            callers: turnstile_http::CallerSettings::unlimited(Duration::from_secs(2)),
            tls: turnstile_http::tls::TlsSettings::default(),
        };
        let app = Application::build(settings)
            .await
            .expect("sql-baseline starts against the stack's postgres");
        let base = format!("http://{}", app.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        let http = client_with_key(&mint_key("default", Role::Claim).await);
        let admin = client_with_key(&mint_key("default", Role::Admin).await);
        Self {
            base,
            http,
            admin,
            stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn create_coupon(&self, code: &str, total: i64, per_user_limit: Option<i32>) {
        let response = self
            .admin
            .post(self.url("/v1/coupons"))
            .json(&json!({ "code": code, "total": total, "per_user_limit": per_user_limit }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
    }

    async fn claim(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/claims"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn claim_rows(code: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM claims WHERE kind = 'coupon' AND resource_id = $1")
        .bind(code)
        .fetch_one(&db().await.unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_coupon_grants_exactly_the_stock() {
    const STOCK: i64 = 200;
    const USERS: usize = 1000;
    let api = Baseline::start().await;
    let code = unique("SQLHOT");
    api.create_coupon(&code, STOCK, Some(1)).await;

    let responses = join_all((0..USERS).map(|u| {
        let (api, code) = (&api, &code);
        async move {
            let response = api
                .claim(&unique("k"), json!({"coupon": code, "user_id": format!("u-{u}")}))
                .await;
            // Decided in the request: always a final 200, never 202.
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.headers().contains_key("location"));
            response.json::<Value>().await.unwrap()
        }
    }))
    .await;
    let granted = responses.iter().filter(|r| r["status"] == "granted").count();
    let sold_out = responses
        .iter()
        .filter(|r| r["status"] == "rejected" && r["reason"] == "sold_out")
        .count();
    assert_eq!(granted as i64, STOCK);
    assert_eq!(sold_out, USERS - STOCK as usize);
    assert!(responses.iter().all(|r| r["fence"].as_i64().is_some_and(|f| f > 0)));

    assert_eq!(
        assert_claim_invariants(std::slice::from_ref(&code), STOCK).await,
        vec![STOCK]
    );
    let coupon: Value = api
        .http
        .get(api.url(&format!("/v1/coupons/{code}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(coupon["remaining"], 0);
    // One decision per row-lock turn: fences are 1..=USERS in commit order.
    let fences: Vec<i64> = sqlx::query_scalar(
        "SELECT fence FROM claims WHERE kind = 'coupon' AND resource_id = $1 ORDER BY decided_at, fence",
    )
    .bind(&code)
    .fetch_all(&db().await.unwrap())
    .await
    .unwrap();
    assert_eq!(fences, (1..=USERS as i64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_is_one_claim_however_often_it_is_sent() {
    let api = Baseline::start().await;
    let code = unique("SQLIDEM");
    api.create_coupon(&code, 10, Some(1)).await;
    let key = unique("key");
    let body = json!({"coupon": code, "user_id": "u-1"});

    let responses = join_all((0..50).map(|_| api.claim(&key, body.clone()))).await;
    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        let view: Value = response.json().await.unwrap();
        assert_eq!(view["status"], "granted");
        ids.push(view["claim_id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one claim id for one key");
    assert_eq!(claim_rows(&code).await, 1);

    // Later, the same answer; with another body, 422 and nothing written.
    let again: Value = api.claim(&key, body.clone()).await.json().await.unwrap();
    assert_eq!(again["claim_id"], ids[0].as_str());
    assert_eq!(again["status"], "granted");
    let other = api.claim(&key, json!({"coupon": code, "user_id": "u-2"})).await;
    assert_problem(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/idempotency-key-reused",
    )
    .await;
    assert_eq!(claim_rows(&code).await, 1);

    // Another tenant's key: the same idempotency key and body name a
    // coupon that does not exist there, and this tenant's claim is hidden.
    let other = client_with_key(&mint_key(&unique("other-tenant"), Role::Claim).await);
    let elsewhere = other
        .post(api.url("/v1/claims"))
        .header("idempotency-key", &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(
        elsewhere,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/unknown-resource",
    )
    .await;
    let read = api
        .http
        .get(api.url(&format!("/v1/claims/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let hidden = other
        .get(api.url(&format!("/v1/claims/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_problem(hidden, StatusCode::NOT_FOUND, "/problems/not-found").await;
    // Without a key, nothing.
    let anonymous = reqwest::Client::new()
        .get(api.url(&format!("/v1/claims/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "/problems/unauthenticated").await;
    assert_claim_invariants(&[code], 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_user_limit_holds_under_concurrency() {
    let api = Baseline::start().await;
    let code = unique("SQLLIMIT");
    api.create_coupon(&code, 100, Some(2)).await;
    let body = json!({"coupon": code, "user_id": "greedy"});
    let responses = join_all((0..20).map(|_| async { api.claim(&unique("k"), body.clone()).await })).await;
    let mut granted = 0;
    for response in responses {
        let view: Value = response.json().await.unwrap();
        match view["status"].as_str() {
            Some("granted") => granted += 1,
            _ => assert_eq!(view["reason"], "per_user_limit"),
        }
    }
    assert_eq!(granted, 2);
    let remaining: i64 = sqlx::query_scalar("SELECT remaining FROM resources WHERE kind = 'coupon' AND id = $1")
        .bind(&code)
        .fetch_one(&db().await.unwrap())
        .await
        .unwrap();
    assert_eq!(remaining, 98);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_4xx_problem_and_writes_nothing() {
    let api = Baseline::start().await;
    let code = unique("SQLBAD");
    api.create_coupon(&code, 10, Some(1)).await;
    let good = format!(r#"{{"coupon":"{code}","user_id":"u1"}}"#);
    // (body, content type, idempotency key, expected status, expected problem type)
    type Case = (Vec<u8>, &'static str, Option<&'static str>, StatusCode, &'static str);
    let cases: Vec<Case> = vec![
        (
            b"{not json".to_vec(),
            "application/json",
            Some("k1"),
            StatusCode::BAD_REQUEST,
            "/problems/malformed-json",
        ),
        (
            format!(r#"{{"coupon":"{code}","user_id":"u1","extra":true}}"#).into_bytes(),
            "application/json",
            Some("k2"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            format!(r#"{{"coupon":"{code}","user_id":"u1","quantity":2}}"#).into_bytes(),
            "application/json",
            Some("k3"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            br#"{"sku":"X","user_id":"u1","quantity":-1}"#.to_vec(),
            "application/json",
            Some("k4"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            good.clone().into_bytes(),
            "text/plain",
            Some("k5"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "/problems/unsupported-media-type",
        ),
        (
            b"{\"coupon\":\"\xff\"}".to_vec(),
            "application/json",
            Some("k6"),
            StatusCode::BAD_REQUEST,
            "/problems/malformed-json",
        ),
        (
            format!(r#"{{"coupon":"{code}","user_id":"{}"}}"#, "u".repeat(20_000)).into_bytes(),
            "application/json",
            Some("k7"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "/problems/payload-too-large",
        ),
        (
            good.clone().into_bytes(),
            "application/json",
            None,
            StatusCode::BAD_REQUEST,
            "/problems/missing-idempotency-key",
        ),
        (
            good.clone().into_bytes(),
            "application/json",
            Some("has space"),
            StatusCode::BAD_REQUEST,
            "/problems/invalid-header",
        ),
        (
            br#"{"coupon":"NO-SUCH-COUPON-EVER","user_id":"u1"}"#.to_vec(),
            "application/json",
            Some("k8"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/unknown-resource",
        ),
    ];
    let mut keys = Vec::new();
    for (body, content_type, key, status, kind) in cases {
        let mut request = api
            .http
            .post(api.url("/v1/claims"))
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = key {
            let key = format!("{key}-{code}");
            request = request.header("idempotency-key", &key);
            keys.push(key);
        }
        assert_problem(request.send().await.unwrap(), status, kind).await;
    }
    assert_eq!(claim_rows(&code).await, 0, "bad input wrote a claim");
    assert_eq!(claims_under_keys(&keys).await, 0, "bad input took an idempotency key");

    let unknown_route = api.http.get(api.url("/v2/nothing")).send().await.unwrap();
    assert_problem(unknown_route, StatusCode::NOT_FOUND, "/problems/not-found").await;
    // A path id that does not decode to UTF-8 names nothing.
    for path in ["/v1/claims/%FF", "/v1/coupons/%FF%FE", "/v1/skus/%FF"] {
        let undecodable = api.http.get(api.url(path)).send().await.unwrap();
        assert_problem(undecodable, StatusCode::NOT_FOUND, "/problems/not-found").await;
    }
    let wrong_method = api.http.delete(api.url("/v1/claims")).send().await.unwrap();
    assert_problem(
        wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "/problems/method-not-allowed",
    )
    .await;
    let duplicate = api
        .admin
        .post(api.url("/v1/coupons"))
        .json(&json!({"code": code, "total": 5}))
        .send()
        .await
        .unwrap();
    assert_problem(duplicate, StatusCode::CONFLICT, "/problems/already-exists").await;
    let bad_coupon = api
        .admin
        .post(api.url("/v1/coupons"))
        .json(&json!({"code": "x y", "total": -5}))
        .send()
        .await
        .unwrap();
    assert_problem(
        bad_coupon,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-request",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_house_sheds_with_429_and_writes_nothing_for_it() {
    let api = Baseline::start_with(2).await;
    let code = unique("SQLSHED");
    api.create_coupon(&code, 1000, Some(1)).await;
    let responses = join_all((0..200).map(|u| {
        let (api, code) = (&api, &code);
        async move {
            api.claim(&unique("k"), json!({"coupon": code, "user_id": format!("u-{u}")}))
                .await
        }
    }))
    .await;
    let mut decided = 0;
    let mut shed = 0;
    for response in responses {
        match response.status() {
            StatusCode::OK => decided += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(response.headers()["retry-after"], "1");
                assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "/problems/overloaded").await;
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed > 0, "200 claims at once through 2 slots: some must be shed");
    assert_eq!(decided + shed, 200);
    // Only the decided claims left rows; the stock matches them.
    assert_eq!(claim_rows(&code).await, decided);
    assert_eq!(
        assert_claim_invariants(std::slice::from_ref(&code), 1000).await,
        vec![decided]
    );
}
