//! The API over TLS, with certificates made for the test: claims accepted
//! over HTTPS with HTTP/2 chosen through ALPN and the operator listener on
//! TLS too; mutual TLS refusing a caller without a client certificate in
//! the handshake; a certificate rotated on disk served to new connections
//! while a connection opened before keeps working; a certificate that
//! names a tenant admitting only that tenant's API keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use reqwest::{Certificate, Client, Identity, StatusCode, Version};
use serde_json::json;
use support::pki::TestCa;
use support::{Namespace, api_settings, mint_key, scratch_dir, unique, until};
use tokio_util::sync::CancellationToken;
use turnstile_claim::access::Role;
use turnstile_http::tls::TlsSettings;

/// A client certificate `ca` signed for `name` (its common name) and its
/// key, as one PEM for reqwest.
fn client_identity(ca: &TestCa, name: &str) -> Identity {
    let (cert, key) = ca.client(name);
    Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap()
}

/// An API serving TLS with a certificate `ca` signed, from files in a
/// directory of the test's own.
struct TlsApi {
    addr: SocketAddr,
    operator: SocketAddr,
    dir: PathBuf,
    stop: CancellationToken,
}

impl TlsApi {
    async fn start(test: &str, ca: &TestCa, client_ca: Option<&TestCa>) -> Self {
        Self::start_with(test, ca, client_ca, false).await
    }

    /// With `client_tenant`, client certificates name their tenants.
    async fn start_with(test: &str, ca: &TestCa, client_ca: Option<&TestCa>, client_tenant: bool) -> Self {
        let dir = scratch_dir(test);
        let server = ca.server();
        std::fs::write(dir.join("api.pem"), server.cert_pem).unwrap();
        std::fs::write(dir.join("api.key"), server.key_pem).unwrap();
        if let Some(client_ca) = client_ca {
            std::fs::write(dir.join("clients.pem"), client_ca.pem()).unwrap();
        }
        let ns = Namespace::new(test);
        let app = claim_api::Application::build(claim_api::Settings {
            tls: TlsSettings {
                cert: Some(dir.join("api.pem")),
                key: Some(dir.join("api.key").into()),
                client_ca: client_ca.map(|_| dir.join("clients.pem")),
                client_tenant,
            },
            ..api_settings(&ns)
        })
        .await
        .unwrap();
        let (addr, operator) = (app.local_addr().unwrap(), app.metrics_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            addr,
            operator,
            dir,
            stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// Replaces the certificate files with a pair `ca` signed.
    fn rotate(&self, ca: &TestCa) {
        let server = ca.server();
        // The key first: a check between the two writes finds a pair that
        // does not match and keeps the old one.
        std::fs::write(self.dir.join("api.key"), server.key_pem).unwrap();
        std::fs::write(self.dir.join("api.pem"), server.cert_pem).unwrap();
    }
}

impl Drop for TlsApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A client that trusts `ca` only, with a client certificate if given.
fn client(ca: &TestCa, identity: Option<Identity>) -> Client {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().unwrap()
}

/// Creates a coupon and claims it over `client`; returns the claim's answer.
async fn claim_over(api: &TlsApi, client: &Client) -> reqwest::Response {
    let admin = mint_key("default", Role::Admin).await;
    let caller = mint_key("default", Role::Claim).await;
    let code = unique("TLSAPI");
    let created = client
        .post(api.url("/v1/coupons"))
        .bearer_auth(&admin)
        .json(&json!({"code": code, "total": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    client
        .post(api.url("/v1/claims"))
        .bearer_auth(&caller)
        .header("idempotency-key", unique("tls-claim"))
        .json(&json!({"coupon": code, "user_id": "u-tls"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_are_accepted_over_tls_with_http2_chosen_through_alpn() {
    let ca = TestCa::new("api test CA");
    let api = TlsApi::start("api-tls", &ca, None).await;
    let https = client(&ca, None);

    let answer = claim_over(&api, &https).await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED, "{:?}", answer.text().await);
    let answer = claim_over(&api, &https).await;
    assert_eq!(answer.version(), Version::HTTP_2, "ALPN offers h2 over tls");

    // The operator listener speaks TLS with the same certificate.
    let health = https
        .get(format!("https://127.0.0.1:{}/healthz", api.operator.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // Plain HTTP gets no answer from a TLS listener.
    let plain = Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", api.addr.port()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain http was answered: {plain:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_refuses_a_caller_without_a_client_certificate_in_the_handshake() {
    let (server_ca, client_ca, stranger_ca) = (
        TestCa::new("api CA"),
        TestCa::new("callers CA"),
        TestCa::new("stranger CA"),
    );
    let api = TlsApi::start("api-mtls", &server_ca, Some(&client_ca)).await;

    let anonymous = client(&server_ca, None).get(api.url("/healthz")).send().await;
    assert!(
        anonymous.is_err(),
        "a caller without a certificate got in: {anonymous:?}"
    );
    let stranger = client(&server_ca, Some(client_identity(&stranger_ca, "a stranger")))
        .get(api.url("/healthz"))
        .send()
        .await;
    assert!(stranger.is_err(), "a certificate of another CA got in: {stranger:?}");

    let known = client(&server_ca, Some(client_identity(&client_ca, "a caller")));
    let answer = claim_over(&api, &known).await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_rotated_on_disk_reaches_new_connections_and_spares_open_ones() {
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let api = TlsApi::start("api-tls-rotate", &old_ca, None).await;
    // An HTTP/2 connection opened before the rotation, kept by the client.
    let before = client(&old_ca, None);
    let health = before.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(health.version(), Version::HTTP_2);

    api.rotate(&new_ca);
    let after = client(&new_ca, None);
    until(Duration::from_secs(30), "the new certificate served", || async {
        after.get(api.url("/healthz")).send().await.is_ok()
    })
    .await;

    // A new connection that trusts only the old CA is refused now...
    let fresh = client(&old_ca, None).get(api.url("/healthz")).send().await;
    assert!(fresh.is_err(), "a new handshake still got the old certificate");
    // ...while the connection opened before the rotation still answers: no
    // new handshake could have, so it is the same connection.
    let kept = before.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(kept.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_that_names_another_tenant_than_the_api_key_is_refused() {
    let (server_ca, client_ca) = (TestCa::new("api CA"), TestCa::new("callers CA"));
    let api = TlsApi::start_with("api-mtls-tenant", &server_ca, Some(&client_ca), true).await;
    let tenant = unique("acme");
    let key = mint_key(&tenant, Role::Claim).await;
    // A claim of the tenant's that does not exist: 404 when the key is
    // admitted, 403 when it is not.
    let path = format!("/v1/claims/{}", uuid::Uuid::new_v4());

    let its_own = client(&server_ca, Some(client_identity(&client_ca, &tenant)));
    let answer = its_own.get(api.url(&path)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);

    let another = client(&server_ca, Some(client_identity(&client_ca, "globex")));
    let answer = another.get(api.url(&path)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    let problem: serde_json::Value = answer.json().await.unwrap();
    assert!(problem["type"].as_str().unwrap().ends_with("/forbidden"), "{problem}");
}
