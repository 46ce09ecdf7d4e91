//! The OpenAPI document against the API's real answers, on the real stack.
//!
//! Every operation is walked with a good request and with the bad inputs
//! the API refuses (no key, another tenant, the wrong role, a body that is
//! not JSON, too large, of another type or shape, a body that never comes,
//! ids that do not exist or cannot, and a key past its rate). Each answer's
//! status must be one the served `/openapi.json` lists for that operation,
//! and each error must be `application/problem+json` and documented so,
//! with the problem schema. An operation in the document that is not walked
//! fails the test, so a new route comes with its walk.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use support::{Namespace, TestApi, api_settings, client_with_key, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROBLEM_JSON: &str = "application/problem+json";

/// The document, and what the walk has seen of each operation.
struct Walk {
    doc: Value,
    /// (method, path template) to the statuses answered.
    seen: BTreeMap<(String, String), BTreeSet<u16>>,
}

impl Walk {
    /// Sends `request` as a call of `method template` and checks its answer.
    async fn send(&mut self, method: &Method, template: &str, what: &str, request: RequestBuilder) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.bytes().await.unwrap();
        self.check(method, template, what, status, &content_type, &body);
    }

    /// Checks one answer of `method template` against the document.
    fn check(&mut self, method: &Method, template: &str, what: &str, status: u16, content_type: &str, body: &[u8]) {
        let call = format!("{method} {template} ({what})");
        let operation = &self.doc["paths"][template][method.as_str().to_ascii_lowercase()];
        assert!(operation.is_object(), "{call}: the document has no such operation");
        let documented = &operation["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{call} answered {status}, which the document does not list: {}",
            String::from_utf8_lossy(body)
        );
        if status >= 400 {
            assert_eq!(content_type, PROBLEM_JSON, "{call}: {status}");
            let problem: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{call}: {e}"));
            assert_eq!(problem["status"], status, "{call}: {problem}");
            assert!(
                problem["type"].as_str().is_some_and(|t| t.starts_with("/problems/")),
                "{call}: {problem}"
            );
            let content = documented["content"].as_object().unwrap();
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                [PROBLEM_JSON],
                "{call}: {status} is documented as {content:?}"
            );
            let schema = content[PROBLEM_JSON]["schema"]["$ref"].as_str().unwrap();
            let name = schema.strip_prefix("#/components/schemas/").unwrap();
            assert_eq!(name, "Problem", "{call}");
        }
        self.seen
            .entry((method.to_string(), template.to_owned()))
            .or_default()
            .insert(status);
    }

    /// A request head announcing a body that never comes, on a raw
    /// connection: the server gives up on the body and answers 408.
    async fn send_head_only(&mut self, api: &TestApi, template: &str, path: &str, key: &str) {
        let addr = api.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {key}\r\nIdempotency-Key: {}\r\nContent-Length: 100\r\n\
             Connection: close\r\n\r\n",
            unique("slow")
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
            .await
            .expect("an answer once the body timeout passes")
            .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        self.check(
            &Method::POST,
            template,
            "a body that never comes",
            status,
            &content_type,
            body.as_bytes(),
        );
    }
}

/// Bodies every JSON operation refuses, with their content types.
fn bad_bodies() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        ("not JSON", "application/json", b"{not json".to_vec()),
        (
            "invalid UTF-8",
            "application/json",
            [b"{\"x\":\"".as_slice(), &[0xff, 0xfe], b"\"}"].concat(),
        ),
        ("another content type", "text/plain", b"{}".to_vec()),
        (
            "too large",
            "application/json",
            format!(r#"{{"pad":"{}"}}"#, "x".repeat(20_000)).into_bytes(),
        ),
        ("an unknown field", "application/json", br#"{"nope":1}"#.to_vec()),
        ("a wrong type", "application/json", br#"[1,2,3]"#.to_vec()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_of_every_operation_is_documented() {
    let api = support::start_api(api_settings(&Namespace::new("openapi-walk")))
        .await
        .unwrap();
    let doc: Value = api.openapi().await;
    assert!(doc["components"]["schemas"]["Problem"].is_object(), "no problem schema");
    let mut walk = Walk {
        doc,
        seen: BTreeMap::new(),
    };
    let unknown_key = client_with_key(&format!("tsk_{}", "0".repeat(64)));
    let (get, post) = (Method::GET, Method::POST);

    // Coupons and SKUs: created by admin keys, with a JSON body.
    let code = unique("WALK");
    for (template, good, duplicate, invalid) in [
        (
            "/v1/coupons",
            json!({"code": code, "total": 5, "per_user_limit": 1}),
            json!({"code": code, "total": 5}),
            json!({"code": "no spaces", "total": 5}),
        ),
        (
            "/v1/skus",
            json!({"sku": code, "stock": 5}),
            json!({"sku": code, "stock": 9}),
            json!({"sku": unique("S"), "stock": -1}),
        ),
    ] {
        let url = api.url(template);
        walk.send(&post, template, "good", api.admin.post(&url).json(&good))
            .await;
        walk.send(&post, template, "exists", api.admin.post(&url).json(&duplicate))
            .await;
        walk.send(&post, template, "a rule broken", api.admin.post(&url).json(&invalid))
            .await;
        walk.send(&post, template, "a claim key", api.http.post(&url).json(&good))
            .await;
        walk.send(&post, template, "no key", api.anonymous.post(&url).json(&good))
            .await;
        walk.send(&post, template, "an unknown key", unknown_key.post(&url).json(&good))
            .await;
        walk.send(
            &post,
            template,
            "another tenant",
            api.admin.post(&url).header("x-tenant-id", "someone-else").json(&good),
        )
        .await;
        for (what, content_type, body) in bad_bodies() {
            let request = api.admin.post(&url).header("content-type", content_type).body(body);
            walk.send(&post, template, what, request).await;
        }
    }

    // Claims: claim keys, a JSON body and an Idempotency-Key.
    let template = "/v1/claims";
    let url = api.url(template);
    let good = json!({"coupon": code, "user_id": "u-walk"});
    let key = unique("k");
    let claim = |client: &reqwest::Client, key: &str| client.post(&url).header("idempotency-key", key);
    let accepted = claim(&api.http, &key).json(&good).send().await.unwrap();
    let claim_path = accepted.headers()["location"].to_str().unwrap().to_owned();
    let content_type = accepted.headers()["content-type"].to_str().unwrap().to_owned();
    let status = accepted.status().as_u16();
    walk.check(
        &post,
        template,
        "good",
        status,
        &content_type,
        &accepted.bytes().await.unwrap(),
    );
    walk.send(&post, template, "the same again", claim(&api.http, &key).json(&good))
        .await;
    walk.send(
        &post,
        template,
        "the key reused",
        claim(&api.http, &key).json(&json!({"coupon": code, "user_id": "u-other"})),
    )
    .await;
    walk.send(&post, template, "no Idempotency-Key", api.http.post(&url).json(&good))
        .await;
    walk.send(
        &post,
        template,
        "a malformed Idempotency-Key",
        claim(&api.http, &"k".repeat(256)).json(&good),
    )
    .await;
    walk.send(
        &post,
        template,
        "an unknown coupon",
        claim(&api.http, &unique("k")).json(&json!({"coupon": "NO-SUCH-COUPON", "user_id": "u"})),
    )
    .await;
    walk.send(
        &post,
        template,
        "a quantity of zero",
        claim(&api.http, &unique("k")).json(&json!({"sku": code, "user_id": "u", "quantity": 0})),
    )
    .await;
    walk.send(
        &post,
        template,
        "an admin key",
        claim(&api.admin, &unique("k")).json(&good),
    )
    .await;
    walk.send(
        &post,
        template,
        "no key",
        claim(&api.anonymous, &unique("k")).json(&good),
    )
    .await;
    walk.send(
        &post,
        template,
        "an unknown key",
        claim(&unknown_key, &unique("k")).json(&good),
    )
    .await;
    walk.send(
        &post,
        template,
        "another tenant",
        claim(&api.http, &unique("k"))
            .header("x-tenant-id", "someone-else")
            .json(&good),
    )
    .await;
    for (what, content_type, body) in bad_bodies() {
        let request = claim(&api.http, &unique("k"))
            .header("content-type", content_type)
            .body(body);
        walk.send(&post, template, what, request).await;
    }

    // Bodies that never come, all three at once (each takes the body timeout).
    let (admin_key, claim_key) = (api.admin_key.clone(), api.claim_key.clone());
    let mut slow = Walk {
        doc: walk.doc.clone(),
        seen: BTreeMap::new(),
    };
    let mut slower = Walk {
        doc: walk.doc.clone(),
        seen: BTreeMap::new(),
    };
    let mut slowest = Walk {
        doc: walk.doc.clone(),
        seen: BTreeMap::new(),
    };
    tokio::join!(
        slow.send_head_only(&api, "/v1/coupons", "/v1/coupons", &admin_key),
        slower.send_head_only(&api, "/v1/skus", "/v1/skus", &admin_key),
        slowest.send_head_only(&api, "/v1/claims", "/v1/claims", &claim_key),
    );
    for other in [slow, slower, slowest] {
        for (operation, statuses) in other.seen {
            walk.seen.entry(operation).or_default().extend(statuses);
        }
    }

    // Reads by path: found, not found, ids that cannot exist.
    let missing_claim = "5f0c6f5e-8d7a-5b8e-9c1d-2e3f4a5b6c7d";
    for (template, found, cannot_exist) in [
        (
            "/v1/claims/{claim_id}",
            claim_path.clone(),
            "/v1/claims/not-a-uuid".to_owned(),
        ),
        (
            "/v1/coupons/{code}",
            format!("/v1/coupons/{code}"),
            "/v1/coupons/no%20spaces".to_owned(),
        ),
        (
            "/v1/skus/{sku}",
            format!("/v1/skus/{code}"),
            format!("/v1/skus/{}", "x".repeat(65)),
        ),
    ] {
        let prefix = found.rsplit_once('/').unwrap().0.to_owned();
        walk.send(&get, template, "found", api.http.get(api.url(&found))).await;
        walk.send(&get, template, "by an admin key", api.admin.get(api.url(&found)))
            .await;
        let missing = format!(
            "{prefix}/{}",
            if template.contains("claim") {
                missing_claim
            } else {
                "NONE"
            }
        );
        walk.send(&get, template, "missing", api.http.get(api.url(&missing)))
            .await;
        walk.send(
            &get,
            template,
            "an id that cannot exist",
            api.http.get(api.url(&cannot_exist)),
        )
        .await;
        walk.send(
            &get,
            template,
            "an id that is not UTF-8",
            api.http.get(api.url(&format!("{prefix}/%FF%FE"))),
        )
        .await;
        walk.send(&get, template, "no key", api.anonymous.get(api.url(&found)))
            .await;
        walk.send(&get, template, "an unknown key", unknown_key.get(api.url(&found)))
            .await;
        walk.send(
            &get,
            template,
            "another tenant",
            api.http.get(api.url(&found)).header("x-tenant-id", "someone-else"),
        )
        .await;
    }

    walk.send(&get, "/healthz", "good", api.anonymous.get(api.url("/healthz")))
        .await;

    // A key past its rate, on an API whose keys may send one request a
    // second: every /v1 operation answers 429 to the second of two.
    let mut limited = api_settings(&Namespace::new("openapi-walk-429"));
    limited.callers.key_rate = 1;
    limited.callers.key_burst = 1;
    let limited = support::start_api(limited).await.unwrap();
    let found_claim = claim_path.clone();
    let v1: [(&Method, &str, &reqwest::Client, String, Option<Value>); 6] = [
        (
            &post,
            "/v1/claims",
            &limited.http,
            "/v1/claims".into(),
            Some(good.clone()),
        ),
        (&get, "/v1/claims/{claim_id}", &limited.http, found_claim, None),
        (
            &post,
            "/v1/coupons",
            &limited.admin,
            "/v1/coupons".into(),
            Some(json!({"code": unique("R"), "total": 1})),
        ),
        (
            &get,
            "/v1/coupons/{code}",
            &limited.http,
            format!("/v1/coupons/{code}"),
            None,
        ),
        (
            &post,
            "/v1/skus",
            &limited.admin,
            "/v1/skus".into(),
            Some(json!({"sku": unique("R"), "stock": 1})),
        ),
        (&get, "/v1/skus/{sku}", &limited.http, format!("/v1/skus/{code}"), None),
    ];
    for (method, template, client, path, body) in v1 {
        let mut answered = BTreeSet::new();
        for _ in 0..3 {
            let mut request = client
                .request(method.clone(), limited.url(&path))
                .header("idempotency-key", unique("k"));
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
            let body = response.bytes().await.unwrap();
            walk.check(method, template, "a key past its rate", status, &content_type, &body);
            answered.insert(status);
            if status == 429 {
                break;
            }
        }
        assert!(answered.contains(&429), "{method} {template}: no 429 in {answered:?}");
    }

    // Every operation walked, and the answers each gave.
    for (path, item) in walk.doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let operation = (method.to_ascii_uppercase(), path.clone());
            assert!(
                walk.seen.contains_key(&operation),
                "{method} {path} is documented but not walked: add its walk to this test"
            );
        }
    }
    for ((method, path), statuses) in &walk.seen {
        println!("{method} {path}: {statuses:?}");
    }
}
