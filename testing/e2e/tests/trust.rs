//! The trust boundary, against the real stack: every `/v1` route needs a
//! key, roles are enforced, tenants cannot see or touch each other, a
//! revoked key stops working, and a user's bucket answers 429.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Namespace, TestApi, api_settings, assert_problem, client_with_key, db, mint_key, unique};
use turnstile_claim::access::Role;

async fn api(test: &str) -> TestApi {
    support::start_api(api_settings(&Namespace::new(test))).await.unwrap()
}

/// Every `/v1` route, with a body that would be valid.
fn v1_requests(api: &TestApi, client: &reqwest::Client) -> Vec<(String, reqwest::RequestBuilder)> {
    let claim = uuid_like();
    vec![
        (
            "POST /v1/claims".into(),
            client
                .post(api.url("/v1/claims"))
                .header("idempotency-key", unique("k"))
                .json(&json!({"coupon": "ANY", "user_id": "u"})),
        ),
        (
            format!("GET /v1/claims/{claim}"),
            client.get(api.url(&format!("/v1/claims/{claim}"))),
        ),
        (
            "POST /v1/coupons".into(),
            client
                .post(api.url("/v1/coupons"))
                .json(&json!({"code": unique("C"), "total": 1})),
        ),
        ("GET /v1/coupons/ANY".into(), client.get(api.url("/v1/coupons/ANY"))),
        (
            "POST /v1/skus".into(),
            client
                .post(api.url("/v1/skus"))
                .json(&json!({"sku": unique("S"), "stock": 1})),
        ),
        ("GET /v1/skus/ANY".into(), client.get(api.url("/v1/skus/ANY"))),
    ]
}

fn uuid_like() -> String {
    "5f0c6f5e-8d7a-5b8e-9c1d-2e3f4a5b6c7d".to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_v1_route_needs_a_key_in_force() {
    let api = api("auth-401").await;
    let unknown = client_with_key(&format!("tsk_{}", "0".repeat(64)));
    let malformed = client_with_key("not-a-key");
    for (client, kind) in [
        (&api.anonymous, "missing"),
        (&unknown, "unknown"),
        (&malformed, "malformed"),
    ] {
        for (what, request) in v1_requests(&api, client) {
            let response = request.send().await.unwrap();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{what} ({kind} key): {challenge:?}");
            assert_eq!(
                challenge.contains("invalid_token"),
                kind != "missing",
                "{what}: {challenge}"
            );
            assert_problem(response, StatusCode::UNAUTHORIZED, "/problems/unauthenticated").await;
        }
    }
    // The open routes stay open.
    let health = api.anonymous.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let doc = api.anonymous.get(api.url("/openapi.json")).send().await.unwrap();
    assert_eq!(doc.status(), StatusCode::OK);
    let metrics = api.metrics_text().await.unwrap();
    assert!(
        metrics.contains(r#"turnstile_auth_refusals_total{reason="unknown"} 6"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_are_enforced() {
    let api = api("auth-403").await;
    let code = unique("ROLE");
    // A claim key cannot create resources.
    for (path, body) in [
        ("/v1/coupons", json!({"code": code, "total": 5})),
        ("/v1/skus", json!({"sku": code, "stock": 5})),
    ] {
        let refused = api.http.post(api.url(path)).json(&body).send().await.unwrap();
        assert_problem(refused, StatusCode::FORBIDDEN, "/problems/forbidden").await;
    }
    // An admin key cannot post claims.
    api.create_coupon(&code, 5, Some(1)).await.unwrap();
    let key = unique("k");
    let refused = api
        .admin
        .post(api.url("/v1/claims"))
        .header("idempotency-key", &key)
        .json(&json!({"coupon": code, "user_id": "u1"}))
        .send()
        .await
        .unwrap();
    assert_problem(refused, StatusCode::FORBIDDEN, "/problems/forbidden").await;
    assert_eq!(support::claims_under_keys(&[key]).await, 0);
    // Both read.
    for client in [&api.http, &api.admin] {
        let coupon = client
            .get(api.url(&format!("/v1/coupons/{code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(coupon.status(), StatusCode::OK);
    }
}

/// Two tenants with the same coupon code and the same idempotency key: two
/// coupons, two claims, and neither tenant can read, claim or even detect
/// the other's.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_see_or_touch_each_other() {
    let api = api("tenants").await;
    let (tenant_a, tenant_b) = (unique("tenant-a"), unique("tenant-b"));
    let admin_a = client_with_key(&mint_key(&tenant_a, Role::Admin).await);
    let claim_a = client_with_key(&mint_key(&tenant_a, Role::Claim).await);
    let admin_b = client_with_key(&mint_key(&tenant_b, Role::Admin).await);
    let claim_b = client_with_key(&mint_key(&tenant_b, Role::Claim).await);
    let code = unique("SHARED");
    let only_a = unique("ONLY-A");

    for (admin, codes) in [(&admin_a, vec![&code, &only_a]), (&admin_b, vec![&code])] {
        for c in codes {
            let created = admin
                .post(api.url("/v1/coupons"))
                .json(&json!({"code": c, "total": 1, "per_user_limit": 1}))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), StatusCode::CREATED, "{c}");
        }
    }

    // The same key and body in both tenants: two claims.
    let key = unique("same-key");
    let post = |client: &reqwest::Client, coupon: &str| {
        client
            .post(api.url("/v1/claims"))
            .header("idempotency-key", &key)
            .json(&json!({"coupon": coupon, "user_id": "same-user"}))
            .send()
    };
    let in_a: Value = post(&claim_a, &code).await.unwrap().json().await.unwrap();
    let in_b: Value = post(&claim_b, &code).await.unwrap().json().await.unwrap();
    let (id_a, id_b) = (in_a["claim_id"].as_str().unwrap(), in_b["claim_id"].as_str().unwrap());
    assert_ne!(id_a, id_b);

    // Each reads its own claim; the other's is 404, word for word as a
    // claim that does not exist.
    for (client, own, foreign) in [(&claim_a, id_a, id_b), (&admin_b, id_b, id_a)] {
        let read = client.get(api.url(&format!("/v1/claims/{own}"))).send().await.unwrap();
        assert_eq!(read.status(), StatusCode::OK);
        let theirs = client
            .get(api.url(&format!("/v1/claims/{foreign}")))
            .send()
            .await
            .unwrap();
        let theirs = assert_problem(theirs, StatusCode::NOT_FOUND, "/problems/not-found").await;
        let nothing = client
            .get(api.url(&format!("/v1/claims/{}", uuid_like())))
            .send()
            .await
            .unwrap();
        let nothing = assert_problem(nothing, StatusCode::NOT_FOUND, "/problems/not-found").await;
        assert_eq!(
            theirs["detail"].as_str().unwrap().replace(foreign, "ID"),
            nothing["detail"].as_str().unwrap().replace(&uuid_like(), "ID")
        );
    }

    // B cannot read or claim A's coupon: to B it does not exist.
    let read = claim_b
        .get(api.url(&format!("/v1/coupons/{only_a}")))
        .send()
        .await
        .unwrap();
    assert_problem(read, StatusCode::NOT_FOUND, "/problems/not-found").await;
    let claim = claim_b
        .post(api.url("/v1/claims"))
        .header("idempotency-key", unique("k"))
        .json(&json!({"coupon": only_a, "user_id": "intruder"}))
        .send()
        .await
        .unwrap();
    assert_problem(claim, StatusCode::UNPROCESSABLE_ENTITY, "/problems/unknown-resource").await;
    let touched: i64 = sqlx::query_scalar("SELECT count(*) FROM claims WHERE kind = 'coupon' AND resource_id = $1")
        .bind(&only_a)
        .fetch_one(&db().await.unwrap())
        .await
        .unwrap();
    assert_eq!(touched, 0, "B's attempt on A's coupon recorded something");

    // X-Tenant-Id may only name the key's own tenant.
    let spoofed = claim_b
        .get(api.url(&format!("/v1/claims/{id_a}")))
        .header("x-tenant-id", &tenant_a)
        .send()
        .await
        .unwrap();
    assert_problem(spoofed, StatusCode::FORBIDDEN, "/problems/forbidden").await;
    let honest = claim_b
        .get(api.url(&format!("/v1/claims/{id_b}")))
        .header("x-tenant-id", &tenant_b)
        .send()
        .await
        .unwrap();
    assert_eq!(honest.status(), StatusCode::OK);
}

/// `claim-api keys revoke` takes effect within the refresh interval (1 s
/// here; at most 5 s), and a key created a moment ago works at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_is_refused_within_the_refresh_interval() {
    let mut settings = api_settings(&Namespace::new("revoke"));
    settings.callers.key_refresh = Duration::from_secs(1);
    let api = support::start_api(settings).await.unwrap();
    let tenant = unique("revoked");
    let key = mint_key(&tenant, Role::Admin).await;
    let client = client_with_key(&key);
    let read = || client.get(api.url("/v1/coupons/NOTHING")).send();
    // Fresh: not in the last snapshot, yet accepted (404: authenticated).
    assert_eq!(read().await.unwrap().status(), StatusCode::NOT_FOUND);

    let digest = turnstile_claim::access::ApiKey::parse(&key).unwrap().digest();
    let pool = db().await.unwrap();
    let revoked = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE digest = $1")
        .bind(&digest.as_bytes()[..])
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(revoked.rows_affected(), 1);
    let since = Instant::now();
    loop {
        let status = read().await.unwrap().status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            since.elapsed() < turnstile_http::auth::MAX_KEY_REFRESH,
            "a revoked key still works after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One user cannot take a coupon's whole flow: past its bucket it gets 429
/// with `Retry-After`, nothing is recorded, and another user still gets in.
#[tokio::test(flavor = "multi_thread")]
async fn the_per_user_bucket_answers_429_with_retry_after() {
    let mut settings = api_settings(&Namespace::new("user-bucket"));
    settings.callers.user_rate = 1;
    settings.callers.user_burst = 2;
    let api = support::start_api(settings).await.unwrap();
    let code = unique("BUCKET");
    api.create_coupon(&code, 100, None).await.unwrap();
    let claim = |user: &str| {
        let key = unique("k");
        let body = json!({"coupon": code, "user_id": user});
        let api = &api;
        async move { (api.claim(&key, body, None).await.unwrap(), key) }
    };
    assert_eq!(claim("greedy").await.0.status(), StatusCode::ACCEPTED);
    assert_eq!(claim("greedy").await.0.status(), StatusCode::ACCEPTED);
    let (refused, key) = claim("greedy").await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "/problems/rate-limited").await;
    assert_eq!(support::claims_under_keys(&[key]).await, 0);
    assert_eq!(claim("patient").await.0.status(), StatusCode::ACCEPTED);
}

/// One tenant holding every admission slot does not lock another out: once
/// the other knocks, the first is held to half, and the next free slot goes
/// to the newcomer.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_cannot_take_the_whole_admission_limit() {
    let mut settings = api_settings(&Namespace::new("fair-share"));
    settings.max_inflight = claim_api::MIN_ADMISSION_LIMIT;
    // No queue: the shares are seen in who is refused at once.
    settings.admission_queue = 0;
    let api = support::start_api(settings).await.unwrap();
    let slots = api.metric_value("turnstile_admission_limit").await;
    let tenant_b = unique("tenant-b");
    let admin_b = client_with_key(&mint_key(&tenant_b, Role::Admin).await);
    let claim_b = client_with_key(&mint_key(&tenant_b, Role::Claim).await);
    let code_b = unique("B");
    let created = admin_b
        .post(api.url("/v1/coupons"))
        .json(&json!({"code": code_b, "total": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let code_a = unique("A");
    api.create_coupon(&code_a, 10, None).await.unwrap();

    // Tenant A (the default tenant) takes every slot.
    let mut held = Vec::new();
    for _ in 0..slots {
        held.push(api.send_claim_head(&api.claim_key, &unique("held")).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.metric_value("turnstile_admission_in_flight").await < slots {
        assert!(Instant::now() < deadline, "the heads did not take the slots");
        tokio::task::yield_now().await;
    }
    let claim_as_b = || {
        claim_b
            .post(api.url("/v1/claims"))
            .header("idempotency-key", unique("b"))
            .json(&json!({"coupon": code_b, "user_id": unique("u")}))
            .send()
    };
    // B knocks: no slot is free.
    let refused = claim_as_b().await.unwrap();
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "/problems/overloaded").await;
    // A is now past its share.
    let over_share = api
        .claim(&unique("a"), json!({"coupon": code_a, "user_id": unique("u")}), None)
        .await
        .unwrap();
    let body = assert_problem(over_share, StatusCode::TOO_MANY_REQUESTS, "/problems/overloaded").await;
    assert!(body["detail"].as_str().unwrap().contains("tenant_share"), "{body}");

    // One of A's slots frees; it goes to B, not back to A.
    drop(held.pop());
    while api.metric_value("turnstile_admission_in_flight").await >= slots {
        assert!(Instant::now() < deadline, "the dropped connection kept its slot");
        tokio::task::yield_now().await;
    }
    let again = api
        .claim(&unique("a"), json!({"coupon": code_a, "user_id": unique("u")}), None)
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
    let admitted = claim_as_b().await.unwrap();
    assert_eq!(admitted.status(), StatusCode::ACCEPTED);
}

/// A key past its bucket gets 429 on any `/v1` route, before its handler;
/// another key of the same tenant is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn the_per_key_bucket_answers_429_before_the_handler() {
    let mut settings = api_settings(&Namespace::new("key-bucket"));
    settings.callers.key_rate = 1;
    settings.callers.key_burst = 2;
    let api = support::start_api(settings).await.unwrap();
    let greedy = client_with_key(&mint_key("default", Role::Claim).await);
    let read = |client: &reqwest::Client| client.get(api.url("/v1/coupons/NOTHING")).send();
    assert_eq!(read(&greedy).await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(read(&greedy).await.unwrap().status(), StatusCode::NOT_FOUND);
    let refused = read(&greedy).await.unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "/problems/rate-limited").await;
    assert_eq!(read(&api.http).await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        api.metric_value(r#"turnstile_auth_refusals_total{reason="rate_key"}"#)
            .await,
        1
    );
}
