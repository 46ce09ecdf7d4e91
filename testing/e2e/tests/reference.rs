//! The API reference at `/docs`, in a real browser: the app serves the page
//! and its files itself, headless Chromium draws it under the page's
//! Content-Security-Policy without a violation, and every operation of the
//! served `/openapi.json` is on the page, `POST /v1/claims` with each status
//! it documents. Chromium comes from `scripts/ensure-chromium`; without it
//! this test fails, it is never skipped.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use claim_api::reference::CONTENT_SECURITY_POLICY;
use reqwest::StatusCode;
use serde_json::Value;
use support::{Namespace, api_settings, browser};

/// The URLs a page loads (`src` and `href` attributes).
fn loaded_urls(html: &str) -> Vec<&str> {
    [" src=\"", " href=\""]
        .iter()
        .flat_map(|attribute| html.split(attribute).skip(1))
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect()
}

/// The operation blocks Swagger UI drew: (method, path) in page order.
fn drawn_operations(dom: &str) -> Vec<(String, String)> {
    dom.split("<span class=\"opblock-summary-method\">")
        .skip(1)
        .map(|block| {
            let method = &block[..block.find('<').unwrap()];
            let path = block.split("data-path=\"").nth(1).unwrap();
            (method.to_owned(), path[..path.find('"').unwrap()].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn docs_draws_every_operation_from_files_the_api_serves() {
    let api = support::start_api(api_settings(&Namespace::new("docs"))).await.unwrap();

    // The page: HTML, locked to this origin, asked for again on each load.
    let page = api.anonymous.get(api.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let policy = header(&page, "content-security-policy");
    assert_eq!(policy, CONTENT_SECURITY_POLICY);
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.split("; ").any(|d| d == directive), "{policy} lacks {directive}");
    }
    assert!(
        !policy.contains("unsafe") && !policy.contains('*') && !policy.contains("http"),
        "{policy} allows more than this origin"
    );
    let html = page.text().await.unwrap();

    // Every file it loads is the API's own, of the right type; the
    // vendored ones are cached for a year under a versioned URL.
    let urls = loaded_urls(&html);
    assert_eq!(urls.len(), 3, "{urls:?}");
    for url in urls {
        assert!(!url.contains("//"), "{url} is on another origin");
        let asset = api.anonymous.get(api.url(&format!("/{url}"))).send().await.unwrap();
        assert_eq!(asset.status(), StatusCode::OK, "{url}");
        let expected = if url.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            "text/javascript; charset=utf-8"
        };
        assert_eq!(header(&asset, "content-type"), expected, "{url}");
        assert_eq!(header(&asset, "x-content-type-options"), "nosniff", "{url}");
        let vendored = url.contains(&format!("swagger-ui-{}/", claim_api::reference::SWAGGER_UI_VERSION));
        let cache = if vendored {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        assert_eq!(header(&asset, "cache-control"), cache, "{url}");
        assert!(asset.bytes().await.unwrap().len() > 200, "{url} is nearly empty");
    }

    // Drawn in a browser, with the claim operation opened by its deep link.
    let doc: Value = api.openapi().await;
    let rendered = browser::render(&api.url("/docs#/claims/create_claim"), Duration::from_secs(20)).await;
    let violations: Vec<&String> = rendered
        .console
        .iter()
        .filter(|line| line.contains("Content Security Policy"))
        .collect();
    assert!(violations.is_empty(), "the page broke its policy: {violations:#?}");
    let drawn = drawn_operations(&rendered.dom);
    assert!(
        drawn.contains(&("POST".to_owned(), "/v1/claims".to_owned())),
        "POST /v1/claims is not on the page: {drawn:?}"
    );
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let mut on_page = drawn.clone();
    on_page.sort();
    documented.sort();
    assert_eq!(
        on_page, documented,
        "the page draws other operations than the document has"
    );

    // The opened operation lists every status the document gives it, its
    // errors as problem+json.
    let opened = rendered
        .dom
        .split("id=\"operations-claims-create_claim\"")
        .nth(1)
        .expect("POST /v1/claims has its block");
    let opened = &opened[..opened.find("class=\"opblock opblock-").unwrap_or(opened.len())];
    for status in doc["paths"]["/v1/claims"]["post"]["responses"]
        .as_object()
        .unwrap()
        .keys()
    {
        assert!(
            opened.contains(&format!("data-code=\"{status}\"")),
            "POST /v1/claims: no {status} on the page"
        );
    }
    assert!(opened.contains("application/problem+json"));
}
