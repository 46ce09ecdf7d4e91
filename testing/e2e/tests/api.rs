//! claim-api against the real stack: the HTTP contract, bad input,
//! idempotency and load shedding.

#![allow(clippy::unwrap_used)]

mod support;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    Namespace, TestApi, TestWorker, api_settings, assert_claim_invariants, assert_problem, claims_under_keys, db,
    unique, worker_settings,
};

async fn api(test: &str) -> (TestApi, Namespace) {
    let ns = Namespace::new(test);
    (
        support::start_api(api_settings(&ns))
            .await
            .expect("api starts against the stack"),
        ns,
    )
}

async fn claims_for(code: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM claims WHERE kind = 'coupon' AND resource_id = $1")
        .bind(code)
        .fetch_one(&db().await.unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_4xx_problem_and_writes_nothing() {
    let (api, _ns) = api("bad-input").await;
    let code = unique("BAD");
    api.create_coupon(&code, 10, Some(1)).await.unwrap();
    let post = |body: Vec<u8>, content_type: &str, key: Option<&str>| {
        let mut r = api
            .http
            .post(api.url("/v1/claims"))
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = key {
            r = r.header("idempotency-key", key);
        }
        r.send()
    };
    let good = format!(r#"{{"coupon":"{code}","user_id":"u1"}}"#);
    // (body, content type, idempotency key, expected status, expected problem type)
    type Case = (Vec<u8>, &'static str, Option<String>, StatusCode, &'static str);
    let cases: Vec<Case> = vec![
        (
            b"{not json".to_vec(),
            "application/json",
            Some(unique("k")),
            StatusCode::BAD_REQUEST,
            "/problems/malformed-json",
        ),
        (
            format!(r#"{{"coupon":"{code}","user_id":"u1","extra":true}}"#).into_bytes(),
            "application/json",
            Some(unique("k")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            br#"{"sku":"X","user_id":"u1","quantity":0}"#.to_vec(),
            "application/json",
            Some(unique("k")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            br#"{"sku":"X","user_id":"u1","quantity":-5}"#.to_vec(),
            "application/json",
            Some(unique("k")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            format!(r#"{{"coupon":"{code}","user_id":"{}"}}"#, "u".repeat(20_000)).into_bytes(),
            "application/json",
            Some(unique("k")),
            StatusCode::PAYLOAD_TOO_LARGE,
            "/problems/payload-too-large",
        ),
        (
            good.clone().into_bytes(),
            "text/plain",
            Some(unique("k")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "/problems/unsupported-media-type",
        ),
        (
            [br#"{"coupon":""#.as_slice(), &[0xff, 0xfe], br#"","user_id":"u1"}"#].concat(),
            "application/json",
            Some(unique("k")),
            StatusCode::BAD_REQUEST,
            "/problems/malformed-json",
        ),
        (
            br#"{"coupon":"NO-SUCH-COUPON-EVER","user_id":"u1"}"#.to_vec(),
            "application/json",
            Some(unique("k")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/unknown-resource",
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
            Some("k".repeat(256)),
            StatusCode::BAD_REQUEST,
            "/problems/invalid-header",
        ),
    ];
    for (body, content_type, key, status, kind) in cases {
        let response = post(body, content_type, key.as_deref()).await.unwrap();
        assert_problem(response, status, kind).await;
    }
    assert_eq!(claims_for(&code).await, 0, "a refused request must not create a claim");

    // Routing errors are problems too.
    assert_problem(
        api.http.get(api.url("/v1/nope")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "/problems/not-found",
    )
    .await;
    assert_problem(
        api.http.delete(api.url("/v1/claims")).send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "/problems/method-not-allowed",
    )
    .await;
    assert_problem(
        api.http.get(api.url("/v1/claims/not-a-uuid")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "/problems/not-found",
    )
    .await;
    let bad_coupon = api
        .admin
        .post(api.url("/v1/coupons"))
        .json(&json!({"code": "ok", "total": -1}))
        .send()
        .await
        .unwrap();
    assert_problem(
        bad_coupon,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-request",
    )
    .await;
    let dup = api
        .admin
        .post(api.url("/v1/coupons"))
        .json(&json!({"code": code, "total": 5}))
        .send()
        .await
        .unwrap();
    assert_problem(dup, StatusCode::CONFLICT, "/problems/already-exists").await;

    // The good request still goes through after all that.
    let accepted = api
        .claim(&unique("k"), serde_json::from_str(&good).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    assert_eq!(claims_for(&code).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_claim_per_idempotency_key_however_concurrent() {
    let (api, _ns) = api("idempotency").await;
    let code = unique("IDEM");
    api.create_coupon(&code, 100, Some(1)).await.unwrap();
    let key = unique("key");
    let body = json!({"coupon": code, "user_id": "u-42"});
    let responses = join_all((0..50).map(|_| api.claim_politely(&key, body.clone(), None))).await;
    let mut ids = std::collections::HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let view: Value = response.json().await.unwrap();
        assert_eq!(view["status"], "pending");
        assert_eq!(location, format!("/v1/claims/{}", view["claim_id"].as_str().unwrap()));
        ids.insert(view["claim_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "50 concurrent copies must name one claim");
    assert_eq!(claims_for(&code).await, 1, "exactly one claim row");

    // Same key, different body: refused, and still one claim.
    let other = api
        .claim(&key, json!({"coupon": code, "user_id": "someone-else"}), None)
        .await
        .unwrap();
    assert_problem(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/idempotency-key-reused",
    )
    .await;
    assert_eq!(claims_for(&code).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_backlog_past_its_bound_answers_429_and_does_nothing() {
    let ns = Namespace::new("overload");
    let mut settings = api_settings(&ns);
    // A bound of zero: any backlog, even an empty one, is too deep.
    settings.max_pending_claims = 0;
    let api = support::start_api(settings).await.unwrap();
    let code = unique("HOT");
    api.create_coupon(&code, 10, None).await.unwrap();
    // The backlog is unknown (-1) until its first count, and an unknown
    // backlog never refuses.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while api.metric_value("turnstile_pending_claims").await < 0 {
        assert!(std::time::Instant::now() < deadline, "the backlog was never counted");
        tokio::task::yield_now().await;
    }
    let keys: Vec<String> = (0..20).map(|i| unique(&format!("k{i}"))).collect();
    let responses = join_all(
        keys.iter()
            .map(|k| api.claim(k, json!({"coupon": code, "user_id": k}), None)),
    )
    .await;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert_eq!(retry_after, 2, "a backlog drains slower than a slot frees");
        let problem = assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "/problems/overloaded").await;
        assert_eq!(problem["detail"], "overloaded (pending_backlog); retry later");
    }
    assert_eq!(claims_for(&code).await, 0, "a 429 must have no effect");
    assert_eq!(
        claims_under_keys(&keys).await,
        0,
        "a 429 must not consume the idempotency key"
    );
    let metrics = api.metrics_text().await.unwrap();
    assert!(
        metrics.contains(r#"turnstile_claims_throttled_total{cause="pending_backlog"} 20"#),
        "{metrics}"
    );
}

/// The refusal contract: a `429` means this request recorded nothing, and
/// an earlier accepted request with the same key stands. A retry of an
/// accepted key that the user's bucket refuses leaves the claim as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_retry_of_an_accepted_key_leaves_its_claim_standing() {
    let ns = Namespace::new("refused-retry");
    let mut settings = api_settings(&ns);
    settings.callers.user_rate = 1;
    settings.callers.user_burst = 1;
    let api = support::start_api(settings).await.unwrap();
    let code = unique("RETRIED");
    api.create_coupon(&code, 5, Some(1)).await.unwrap();
    let key = unique("accepted-then-refused");
    let body = json!({"coupon": code, "user_id": "u1"});

    let accepted = api.claim(&key, body.clone(), None).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: Value = accepted.json().await.unwrap();

    // The user's bucket holds one claim a second: the retry is refused.
    let refused = api.claim(&key, body, None).await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "/problems/rate-limited").await;

    assert_eq!(
        claims_under_keys(std::slice::from_ref(&key)).await,
        1,
        "the claim stands"
    );
    let read = api
        .http
        .get(api.url(&format!("/v1/claims/{}", accepted["claim_id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["claim_id"], accepted["claim_id"]);
}

/// Reads one HTTP response's head and body from a raw connection.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            head.lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|len| body.len() >= len)
        });
        if n == 0 || complete {
            return text.into_owned();
        }
    }
}

/// Admission decides before the body is read: with every slot held by
/// clients that sent headers only, the next claim is refused with 429 at
/// once, without its body, and its key stays free. The dawdlers get 408
/// when the body timeout passes, and their slots serve the next claim.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_admission_refuses_before_reading_the_body() {
    let ns = Namespace::new("admission-full");
    let mut settings = api_settings(&ns);
    settings.max_inflight = claim_api::MIN_ADMISSION_LIMIT;
    // No queue: a claim that finds every slot taken is refused at once.
    settings.admission_queue = 0;
    let api = support::start_api(settings).await.unwrap();
    let code = unique("DOOR");
    api.create_coupon(&code, 10, None).await.unwrap();
    let slots = api.metric_value("turnstile_admission_limit").await;
    assert_eq!(slots, claim_api::MIN_ADMISSION_LIMIT as i64);

    let mut holders = Vec::new();
    for i in 0..slots {
        holders.push(api.send_claim_head(&api.claim_key, &unique(&format!("slow{i}"))).await);
    }
    // Each head takes its slot once the server has read it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while api.metric_value("turnstile_admission_in_flight").await < slots {
        assert!(std::time::Instant::now() < deadline, "the heads did not take the slots");
        tokio::task::yield_now().await;
    }

    // Refused on its head alone: no body was sent.
    let mut bodiless = api.send_claim_head(&api.claim_key, &unique("bodiless")).await;
    let answer = read_answer(&mut bodiless).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    assert!(answer.contains(r#""type":"/problems/overloaded""#), "{answer}");
    let refused = unique("refused");
    let response = api
        .claim(&refused, json!({"coupon": code, "user_id": "u-refused"}), None)
        .await
        .unwrap();
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "/problems/overloaded").await;
    assert_eq!(claims_under_keys(&[refused]).await, 0, "a 429 must not consume the key");

    // The body timeout frees every slot.
    for holder in &mut holders {
        let answer = read_answer(holder).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(r#""type":"/problems/body-timeout""#), "{answer}");
    }
    assert_eq!(api.metric_value("turnstile_admission_in_flight").await, 0);
    let response = api
        .claim(&unique("after"), json!({"coupon": code, "user_id": "u-after"}), None)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let metrics = api.metrics_text().await.unwrap();
    assert!(
        metrics.contains(r#"turnstile_claims_throttled_total{cause="concurrency"} 2"#),
        "{metrics}"
    );
}

/// A client that sends its request head a byte at a time (slowloris) is
/// disconnected when the header-read timeout passes, not kept forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_dribbled_request_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ns = Namespace::new("slowloris");
    let mut settings = api_settings(&ns);
    settings.header_read_timeout = std::time::Duration::from_secs(1);
    let api = support::start_api(settings).await.unwrap();
    let addr = api.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n");
    // The client's pace is the behaviour under test: one byte every 200 ms
    // would take 14 s for this head.
    let dribble = async {
        for byte in head.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let mut answer = Vec::new();
    let closed = async { reader.read_to_end(&mut answer).await };
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::select! {
            () = dribble => None,
            read = closed => Some(read),
        }
    })
    .await
    .expect("the server kept a dribbling connection open past 10 s");
    let read = outcome.expect("the whole head was sent before the server closed the connection");
    assert!(
        read.is_err() || !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "a dribbled head was served: {}",
        String::from_utf8_lossy(&answer)
    );
}

/// Past `TURNSTILE_MAX_WAITERS`, a claim asking to wait is answered 202
/// at once instead of holding a connection and a task for up to 10 s.
#[tokio::test(flavor = "multi_thread")]
async fn waiters_beyond_the_cap_are_answered_at_once() {
    let ns = Namespace::new("waiter-cap");
    let mut settings = api_settings(&ns);
    settings.max_waiters = 1;
    let api = std::sync::Arc::new(support::start_api(settings).await.unwrap());
    let code = unique("WAIT");
    api.create_coupon(&code, 10, None).await.unwrap();
    // No worker runs: nothing is decided, so the first waiter waits.
    let first = tokio::spawn({
        let (api, code) = (std::sync::Arc::clone(&api), code.clone());
        async move {
            api.claim(&unique("w1"), json!({"coupon": code, "user_id": "u1"}), Some(10))
                .await
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while api.metric_value("turnstile_decision_waiters").await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first claim never started waiting"
        );
        tokio::task::yield_now().await;
    }
    let second = api
        .claim(&unique("w2"), json!({"coupon": code, "user_id": "u2"}), Some(10))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    assert!(!first.is_finished(), "the first waiter should still be waiting");
    assert_eq!(api.metric_value("turnstile_decision_waiters").await, 1);
    first.abort();
}

/// `/readyz` checks the dependencies at most once a second however often
/// it is asked, and a made-up HTTP method does not become a metric label.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_is_cached_and_method_labels_are_bounded() {
    let (api, _ns) = api("readyz-cache").await;
    let before = api.metric_value("turnstile_readiness_checks_total").await;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let ready = api.anonymous.get(api.operator_url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
    }
    let elapsed = started.elapsed().as_secs() as i64;
    let checks = api.metric_value("turnstile_readiness_checks_total").await - before;
    assert!(
        (1..=1 + elapsed).contains(&checks),
        "{checks} checks for 20 probes over {elapsed} s"
    );

    let odd = reqwest::Method::from_bytes(b"BREW").unwrap();
    let answer = api.http.request(odd, api.url("/v1/claims")).send().await.unwrap();
    assert_problem(answer, StatusCode::METHOD_NOT_ALLOWED, "/problems/method-not-allowed").await;
    let metrics = api.metrics_text().await.unwrap();
    assert!(!metrics.contains("BREW"), "{metrics}");
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn operational_endpoints() {
    let (api, _ns) = api("ops").await;
    for url in [api.url("/healthz"), api.operator_url("/healthz")] {
        assert_eq!(api.anonymous.get(url).send().await.unwrap().status(), StatusCode::OK);
    }
    // Readiness and metrics are for operators: on their own listener only.
    for path in ["/readyz", "/metrics"] {
        let public = api.anonymous.get(api.url(path)).send().await.unwrap();
        assert_eq!(public.status(), StatusCode::NOT_FOUND, "{path} on the public listener");
    }
    let ready = api.anonymous.get(api.operator_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        ready,
        json!({"status": "ready", "postgres": true, "redis": true, "kafka": true})
    );
    let doc: Value = api.openapi().await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/claims",
        "/v1/claims/{claim_id}",
        "/v1/coupons",
        "/v1/coupons/{code}",
        "/v1/skus",
        "/v1/skus/{sku}",
        "/healthz",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi.json lacks {path}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    assert_eq!(doc["paths"]["/v1/claims"]["post"]["security"], json!([{"api_key": []}]));
    let metrics = api.metrics_text().await.unwrap();
    assert!(metrics.contains("turnstile_http_requests_total"));
}

/// A hot coupon: 1000 units, 5000 distinct users at once, each asking to
/// wait for the decision. Exactly 1000 are granted, none twice, all decided.
#[tokio::test(flavor = "multi_thread")]
async fn hot_coupon_never_oversells() {
    let (api, ns) = api("hot-coupon").await;
    let worker = TestWorker::start(worker_settings(&ns)).await.unwrap();
    let code = unique("FLASH");
    api.create_coupon(&code, 1000, Some(1)).await.unwrap();
    let api = std::sync::Arc::new(api);
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(128));
    let tasks = (0..5000).map(|i| {
        let (api, semaphore, code) = (api.clone(), semaphore.clone(), code.clone());
        tokio::spawn(async move {
            let _permit = semaphore.acquire().await.unwrap();
            let response = api
                .claim_politely(
                    &format!("{code}-k{i}"),
                    json!({"coupon": code, "user_id": format!("user-{i}")}),
                    Some(10),
                )
                .await
                .unwrap();
            assert!(response.status().is_success(), "claim {i}: {}", response.status());
            let view: Value = response.json().await.unwrap();
            view["status"].as_str().unwrap().to_owned()
        })
    });
    let statuses: Vec<String> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    let granted = statuses.iter().filter(|s| *s == "granted").count();
    let rejected = statuses.iter().filter(|s| *s == "rejected").count();
    assert_eq!(granted, 1000, "exactly the stock is granted");
    assert_eq!(rejected, 4000, "every other claim is decided, as rejected");

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
    assert_eq!(
        assert_claim_invariants(std::slice::from_ref(&code), 1000).await,
        vec![1000]
    );
    worker.stop().await.unwrap();
}

/// SKUs take quantities: claims are granted while stock lasts, then refused
/// as `insufficient_stock` (some left, not enough) or `sold_out`; the stock
/// endpoint serves what is left.
#[tokio::test(flavor = "multi_thread")]
async fn sku_quantities_are_granted_while_stock_lasts() {
    let (api, ns) = api("sku").await;
    let worker = TestWorker::start(worker_settings(&ns)).await.unwrap();
    let sku = unique("TSHIRT-M");
    let created = api
        .admin
        .post(api.url("/v1/skus"))
        .json(&json!({"sku": sku, "stock": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["location"], format!("/v1/skus/{sku}").as_str());

    let mut outcomes = Vec::new();
    // Sequential, so the order (and so each outcome) is fixed.
    for (i, quantity) in [2, 2, 2, 1, 1].into_iter().enumerate() {
        let response = api
            .claim_politely(
                &format!("{sku}-{i}"),
                json!({"sku": sku, "user_id": format!("u{i}"), "quantity": quantity}),
                Some(10),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "decided within the wait");
        let view: Value = response.json().await.unwrap();
        outcomes.push((
            view["status"].as_str().unwrap().to_owned(),
            view["reason"].as_str().map(str::to_owned),
        ));
    }
    let expected: Vec<(String, Option<String>)> = vec![
        ("granted".into(), None),
        ("granted".into(), None),
        ("rejected".into(), Some("insufficient_stock".into())),
        ("granted".into(), None),
        ("rejected".into(), Some("sold_out".into())),
    ];
    assert_eq!(outcomes, expected);
    let stock: Value = api
        .http
        .get(api.url(&format!("/v1/skus/{sku}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stock, json!({"sku": sku, "stock": 5, "remaining": 0}));
    let missing = api.http.get(api.url("/v1/skus/NO-SUCH-SKU-EVER")).send().await.unwrap();
    assert_problem(missing, StatusCode::NOT_FOUND, "/problems/not-found").await;
    worker.stop().await.unwrap();
}

/// Every lock backend a worker can use.
const EVERY_BACKEND: [claim_worker::LockBackendKind; 5] = [
    claim_worker::LockBackendKind::Redis,
    claim_worker::LockBackendKind::RedisCluster,
    claim_worker::LockBackendKind::Redlock,
    claim_worker::LockBackendKind::ZooKeeper,
    claim_worker::LockBackendKind::Postgres,
];

/// Settings for a worker in `ns` that locks with `backend`.
fn locking_with(ns: &Namespace, backend: claim_worker::LockBackendKind) -> claim_worker::Settings {
    let mut settings = worker_settings(ns);
    settings.lock_backend = backend;
    settings.redlock_urls = std::env::var("TURNSTILE_REDLOCK_URLS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6391,redis://127.0.0.1:6392,redis://127.0.0.1:6393".to_owned())
        .split(',')
        .map(Into::into)
        .collect();
    settings.redis_cluster_urls = std::env::var("TURNSTILE_REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".to_owned())
        .split(',')
        .map(Into::into)
        .collect();
    settings
}

/// The pipeline decides correctly whichever lock backend the worker uses.
#[tokio::test(flavor = "multi_thread")]
async fn pipeline_works_with_every_lock_backend() {
    for backend in EVERY_BACKEND {
        let (api, ns) = api(&format!("backend-{backend:?}").to_lowercase()).await;
        let worker = TestWorker::start(locking_with(&ns, backend)).await.unwrap();
        let code = unique("BACKEND");
        api.create_coupon(&code, 20, Some(1)).await.unwrap();
        let keys: Vec<String> = (0..60).map(|i| format!("{code}-{i}")).collect();
        let responses =
            join_all(keys.iter().enumerate().map(|(i, key)| {
                api.claim_politely(key, json!({"coupon": code, "user_id": format!("u{i}")}), Some(10))
            }))
            .await;
        let mut granted = 0;
        for response in responses {
            let view: Value = response.unwrap().json().await.unwrap();
            assert_ne!(view["status"], "pending", "{backend:?}: undecided claim");
            if view["status"] == "granted" {
                granted += 1;
            }
        }
        assert_eq!(granted, 20, "{backend:?}: stock granted exactly");
        assert_eq!(assert_claim_invariants(std::slice::from_ref(&code), 20).await, vec![20]);
        worker.stop().await.unwrap();
    }
}

/// A lock store whose token counter fell behind the database's fence (the
/// lock backend switched on a live database, or Redis back from an older
/// snapshot) is repaired by the first refused write: with every backend,
/// a claim on such a resource is decided within one lock ttl (the wait
/// below), under a token above the old fence.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_behind_the_database_are_repaired_at_once() {
    let pool = db().await.unwrap();
    for backend in EVERY_BACKEND {
        let (api, ns) = api(&format!("repair-{backend:?}").to_lowercase()).await;
        let settings = locking_with(&ns, backend);
        let lock_ttl = settings.lock_ttl;
        let worker = TestWorker::start(settings).await.unwrap();
        let code = unique("REPAIR");
        api.create_coupon(&code, 5, Some(1)).await.unwrap();
        // The database accepted tokens from a counter far ahead of this
        // store's: another backend's, or this one's before a rollback.
        let old_fence: i64 = 1 << 52;
        sqlx::query("UPDATE resources SET fence = $2 WHERE kind = 'coupon' AND id = $1")
            .bind(&code)
            .bind(old_fence)
            .execute(&pool)
            .await
            .unwrap();
        let response = api
            .claim(
                &unique("repair"),
                json!({"coupon": code, "user_id": "u1"}),
                Some(lock_ttl.as_secs()),
            )
            .await
            .unwrap();
        let view: Value = response.json().await.unwrap();
        assert_eq!(view["status"], "granted", "{backend:?}: decided within one lock ttl");
        assert!(view["fence"].as_i64().unwrap() > old_fence, "{backend:?}: {view}");
        assert_claim_invariants(std::slice::from_ref(&code), 5).await;
        worker.stop().await.unwrap();
    }
}

/// Redis restored from an older snapshot: its fence counter goes back below
/// what the database accepted. The next claim is decided all the same.
#[tokio::test(flavor = "multi_thread")]
async fn redis_rolled_back_to_an_older_snapshot_recovers_on_the_next_claim() {
    let (api, ns) = api("redis-rollback").await;
    let worker = TestWorker::start(worker_settings(&ns)).await.unwrap();
    let code = unique("ROLLBACK");
    api.create_coupon(&code, 5, Some(1)).await.unwrap();
    let first: Value = api
        .claim(&unique("rollback-1"), json!({"coupon": code, "user_id": "u1"}), Some(5))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["status"], "granted");
    let fence = first["fence"].as_i64().unwrap();

    let redis = redis::Client::open(support::redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("turnstile:{{coupon:{code}}}:fence"))
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();

    let second: Value = api
        .claim(&unique("rollback-2"), json!({"coupon": code, "user_id": "u2"}), Some(5))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["status"], "granted", "{second}");
    assert!(
        second["fence"].as_i64().unwrap() > fence,
        "{second} after fence {fence}"
    );
    assert_claim_invariants(std::slice::from_ref(&code), 5).await;
    worker.stop().await.unwrap();
}

#[test]
fn accept_batches_must_leave_a_write_connection_for_everything_else() {
    let ns = Namespace::new("settings");
    let mut settings = api_settings(&ns);
    assert!(settings.validate().is_ok());
    settings.accept_batches = settings.pg_write_pool;
    let error = settings.validate().unwrap_err();
    assert_eq!(error.name, "TURNSTILE_ACCEPT_BATCHES");
    settings.accept_batches = 0;
    assert_eq!(settings.validate().unwrap_err().name, "TURNSTILE_ACCEPT_BATCHES");
}
