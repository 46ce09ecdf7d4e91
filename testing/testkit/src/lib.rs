//! What Turnstile's integration tests share.
//!
//! Every test talks to the real services that `scripts/stack up` started
//! (connection settings from `scripts/stack env`, with the stack's defaults)
//! and gets names of its own (topic prefix, consumer group, coupon codes), so
//! tests run in parallel without seeing each other. A missing service makes
//! a test fail loudly; nothing is skipped.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

pub mod browser;
pub mod readme;

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use turnstile_claim::{ResourceId, ResourceKey, TenantId, audit::AuditScope};
use turnstile_private_stores::free_port;

/// The stack's Postgres.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".to_owned())
}

/// The stack's Redis.
pub fn redis_url() -> String {
    std::env::var("TURNSTILE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// How the tests' Kafka clients reach the stack's broker.
pub fn kafka() -> turnstile_bus::KafkaConnection {
    turnstile_bus::KafkaConnection::new(brokers())
}

/// The stack's Kafka-protocol broker.
pub fn brokers() -> String {
    std::env::var("TURNSTILE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A name no other test run uses: letters, digits and dashes only, so it is
/// valid as a coupon code, topic prefix and group id.
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{name}-{:x}{:04x}", nanos % 0xffff_ffff_ffff, rand::random::<u16>())
}

/// A new, empty directory under the system's temporary directory, named
/// [`unique`]ly after `name`: for a test's logs, certificates and private
/// servers. Left behind for a look after a failure.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// The names one test's pipeline runs under.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Prefix of the Kafka topics.
    pub topic_prefix: String,
    /// The worker group.
    pub group_id: String,
}

impl Namespace {
    /// Fresh topics and group for a test.
    pub fn new(test: &str) -> Self {
        let id = unique(test);
        Self {
            topic_prefix: format!("{id}."),
            group_id: format!("{id}-workers"),
        }
    }

    /// The stack's broker, this namespace's topics, 3 partitions each.
    pub fn kafka(&self) -> turnstile_bus::KafkaSettings {
        turnstile_bus::KafkaSettings {
            topic_prefix: self.topic_prefix.clone(),
            partitions: 3,
            ..turnstile_bus::KafkaSettings::single_broker(brokers())
        }
    }
}

/// A new API key of `tenant` with `role`, stored in the test database.
pub async fn mint_key(tenant: &str, role: turnstile_claim::access::Role) -> String {
    mint_key_in(&database_url(), tenant, role).await
}

/// A new API key of `tenant` with `role`, stored in the database at `url`.
pub async fn mint_key_in(url: &str, tenant: &str, role: turnstile_claim::access::Role) -> String {
    let tenant = turnstile_claim::TenantId::parse(tenant).expect("a valid tenant");
    let pool = turnstile_store::connect(url, 1, Duration::from_secs(5))
        .await
        .expect("connecting to mint a key");
    let (_, key) = turnstile_store::keys::create_key(&pool, &tenant, role, Some("test"))
        .await
        .expect("minting a test key");
    pool.close().await;
    key.reveal().to_owned()
}

/// How long the tests' clients keep an idle pooled connection: less than
/// the API's header-read timeout, which also closes a keep-alive
/// connection idle that long (a request sent on it as it closes would be
/// reset).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client that sends `key` as its bearer token on every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("a valid key");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(CLIENT_IDLE_TIMEOUT)
        .default_headers(headers)
        .build()
        .expect("a client")
}

/// A claim-api running in this process on a free port, with a claim key
/// and an admin key of the default tenant.
#[derive(Debug)]
pub struct TestApi {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the operator listener (`/metrics`, `/readyz`).
    pub operator: String,
    /// A client that sends the claim key.
    pub http: reqwest::Client,
    /// A client that sends the admin key.
    pub admin: reqwest::Client,
    /// A client that sends no key.
    pub anonymous: reqwest::Client,
    /// The claim key `http` sends.
    pub claim_key: String,
    /// The admin key `admin` sends.
    pub admin_key: String,
    stop: CancellationToken,
}

impl TestApi {
    /// Attaches to an API serving at `addr` with its operator listener at
    /// `operator`, on the database at `database_url`: mints a claim key and
    /// an admin key of the default tenant. Dropping it fires `stop`, which
    /// should stop the API.
    pub async fn attach(
        addr: SocketAddr,
        operator: SocketAddr,
        database_url: &str,
        stop: CancellationToken,
    ) -> Result<Self> {
        use turnstile_claim::access::Role;
        let base = format!("http://{addr}");
        let operator = format!("http://{operator}");
        let claim_key = mint_key_in(database_url, "default", Role::Claim).await;
        let admin_key = mint_key_in(database_url, "default", Role::Admin).await;
        let http = client_with_key(&claim_key);
        let admin = client_with_key(&admin_key);
        let anonymous = reqwest::Client::builder()
            .pool_max_idle_per_host(16)
            .pool_idle_timeout(CLIENT_IDLE_TIMEOUT)
            .build()?;
        Ok(Self {
            base,
            operator,
            http,
            admin,
            anonymous,
            claim_key,
            admin_key,
            stop,
        })
    }

    /// The OpenAPI document the API serves at `/openapi.json`.
    pub async fn openapi(&self) -> serde_json::Value {
        self.anonymous
            .get(self.url("/openapi.json"))
            .send()
            .await
            .expect("GET /openapi.json")
            .json()
            .await
            .expect("/openapi.json is JSON")
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The operator listener's `path`.
    pub fn operator_url(&self, path: &str) -> String {
        format!("{}{path}", self.operator)
    }

    /// Creates a coupon, failing the test if the API refuses.
    pub async fn create_coupon(&self, code: &str, total: i64, per_user_limit: Option<i32>) -> Result<()> {
        let response = self
            .admin
            .post(self.url("/v1/coupons"))
            .json(&serde_json::json!({ "code": code, "total": total, "per_user_limit": per_user_limit }))
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!(
                "creating coupon {code}: {} {}",
                response.status(),
                response.text().await?
            );
        }
        Ok(())
    }

    /// Posts a claim as a well-behaved client does, for up to three
    /// minutes: on 429 it waits the `Retry-After` it was given, plus a
    /// random part of a second so that the clients refused together do not
    /// all come back in the same instant, and tries again (a 429 has no
    /// effect, so the retry is safe); on 408 (the request outlived the
    /// API's deadline, on a loaded machine) it asks again at once with the
    /// same key, which replays the claim if it was recorded. The budget is
    /// time, not attempts: on a machine whose cores the whole suite shares,
    /// the adaptive admission limit can stay low for a minute.
    pub async fn claim_politely(
        &self,
        key: &str,
        body: serde_json::Value,
        wait_secs: Option<u64>,
    ) -> Result<reqwest::Response> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        let mut attempts = 0;
        while tokio::time::Instant::now() < deadline {
            attempts += 1;
            let response = self.claim(key, body.clone(), wait_secs).await?;
            match response.status() {
                reqwest::StatusCode::TOO_MANY_REQUESTS => {}
                reqwest::StatusCode::REQUEST_TIMEOUT => continue,
                _ => return Ok(response),
            }
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .context("a 429 must carry Retry-After")?;
            let jitter = Duration::from_millis(rand::random_range(0..1000));
            tokio::time::sleep(Duration::from_secs(retry_after) + jitter).await;
        }
        bail!("claim {key} still throttled or timed out after {attempts} attempts in 180 s")
    }

    /// Posts (or re-posts, which is idempotent) a claim until it is
    /// decided, each time waiting for the decision event up to 10 s, for
    /// two minutes at most. Returns the decided claim's view.
    pub async fn claim_until_decided(&self, key: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        for _ in 0..12 {
            let response = self.claim_politely(key, body.clone(), Some(10)).await?;
            anyhow::ensure!(response.status().is_success(), "claim {key}: {}", response.status());
            let view: serde_json::Value = response.json().await?;
            if view["status"] != "pending" {
                return Ok(view);
            }
        }
        bail!("claim {key} still pending after two minutes")
    }

    /// A claim request's head with `api_key`, sent alone on a raw
    /// connection: the body it announces never comes, so it takes an
    /// admission slot and holds it until the body timeout.
    pub async fn send_claim_head(&self, api_key: &str, idempotency_key: &str) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let addr = self.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connecting to the API");
        let head = format!(
            "POST /v1/claims HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {api_key}\r\nIdempotency-Key: {idempotency_key}\r\nContent-Length: 100\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("sending a request head");
        stream
    }

    /// The value of the unlabelled metric `name` (a counter or gauge).
    pub async fn metric_value(&self, name: &str) -> i64 {
        let metrics = self.metrics_text().await.expect("reading /metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    }

    /// The API's Prometheus text.
    pub async fn metrics_text(&self) -> Result<String> {
        Ok(self
            .anonymous
            .get(self.operator_url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Posts a claim with `key` and optional `Prefer: wait`.
    pub async fn claim(&self, key: &str, body: serde_json::Value, wait_secs: Option<u64>) -> Result<reqwest::Response> {
        let mut request = self
            .http
            .post(self.url("/v1/claims"))
            .header("idempotency-key", key)
            .json(&body);
        if let Some(secs) = wait_secs {
            request = request.header("prefer", format!("wait={secs}"));
        }
        Ok(request.send().await?)
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A claim-worker in its own process, so a test can SIGKILL or SIGSTOP it.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    /// Its metrics endpoint.
    pub metrics_addr: SocketAddr,
    logs: mpsc::UnboundedReceiver<String>,
}

impl WorkerProcess {
    /// Spawns the binary at `bin` in `ns`, with extra environment `env`.
    pub async fn spawn(bin: &str, ns: &Namespace, env: &[(&str, String)]) -> Result<Self> {
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut command = Command::new(bin);
        command
            .env("TURNSTILE_KAFKA_BROKERS", brokers())
            .env("DATABASE_URL", database_url())
            .env("TURNSTILE_REDIS_URL", redis_url())
            .env("TURNSTILE_TOPIC_PREFIX", &ns.topic_prefix)
            .env("TURNSTILE_GROUP_ID", &ns.group_id)
            .env("TURNSTILE_PARTITIONS", "3")
            .env("TURNSTILE_METRICS_ADDR", metrics_addr.to_string())
            .env("TURNSTILE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().with_context(|| format!("spawning {bin}"))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let (tx, mut logs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Ready means: joined, subscribed, metrics bound.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, logs.recv()).await {
                Ok(Some(line)) if line.contains("claim-worker ready") => break,
                Ok(Some(_)) => {}
                Ok(None) => bail!("worker exited before it was ready"),
                Err(_) => bail!("worker not ready within 60 s"),
            }
        }
        Ok(Self {
            child,
            metrics_addr,
            logs,
        })
    }

    /// Waits for a log line containing `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.logs.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => bail!("worker exited before logging {needle:?}"),
                Err(_) => bail!("worker did not log {needle:?} within {within:?}"),
            }
        }
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`).
    pub fn signal(&self, signal: &str) -> Result<()> {
        turnstile_private_stores::signal(self.child.id().context("worker already exited")?, signal)
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> Result<std::process::ExitStatus> {
        Ok(self.child.wait().await?)
    }

    /// Reads a counter or gauge from its metrics endpoint (sum over labels).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        metric(&format!("http://{}/metrics", self.metrics_addr), name).await
    }
}

/// Polls `check` every 100 ms until it holds; fails the test, naming
/// `what`, if it has not held within `within`.
pub async fn until<F: std::future::Future<Output = bool>>(within: Duration, what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a metric from a Prometheus text endpoint, summed over its labels.
pub async fn metric(url: &str, name: &str) -> Result<f64> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A pool on the stack's Postgres, for asserting on what was written.
pub async fn db() -> Result<sqlx::PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&database_url())
        .await?)
}

/// How many claims were recorded under the default tenant's idempotency
/// `keys`. A claim row is its key's idempotency record (its id is derived
/// from tenant and key), wherever the claim went; a string that is no valid
/// `Idempotency-Key` cannot have one.
pub async fn claims_under_keys(keys: &[String]) -> i64 {
    let tenant = turnstile_claim::TenantId::default_tenant();
    let ids: Vec<_> = keys
        .iter()
        .filter_map(|k| turnstile_claim::IdempotencyKey::parse(k).ok())
        .map(|k| turnstile_claim::ClaimId::for_request(&tenant, &k).as_uuid())
        .collect();
    sqlx::query_scalar("SELECT count(*) FROM claims WHERE claim_id = ANY($1)")
        .bind(&ids)
        .fetch_one(&db().await.unwrap())
        .await
        .unwrap()
}

/// The pipeline's invariants for coupons `codes` of `stock` units each, read
/// from Postgres: nothing pending, and the invariants every recount checks
/// (nothing oversold, nobody over the per-user limit, `remaining` equal to
/// the stock minus the grants). Returns the grants per coupon.
pub async fn assert_claim_invariants(codes: &[String], stock: i64) -> Vec<i64> {
    let pool = db().await.unwrap();
    let coupons: Vec<ResourceKey> = codes
        .iter()
        .map(|code| ResourceKey::coupon(TenantId::default_tenant(), ResourceId::parse("coupon", code).unwrap()))
        .collect();
    let (_, ledgers) = turnstile_store::check_invariants(&pool, &AuditScope::Resources(coupons))
        .await
        .unwrap();
    let mut grants = Vec::with_capacity(codes.len());
    for code in codes {
        let ledger = ledgers
            .iter()
            .find(|l| &l.id == code)
            .unwrap_or_else(|| panic!("{code}: no such coupon"));
        assert_eq!(ledger.total, stock, "{code}: created with another stock");
        assert!(ledger.holds(), "{code}: an invariant is broken: {ledger:?}");
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM claims
              WHERE tenant_id = 'default' AND kind = 'coupon' AND resource_id = $1 AND status = 'pending'",
        )
        .bind(code)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(pending, 0, "{code}: undecided claims");
        grants.push(ledger.granted_claims);
    }
    grants
}

/// Asserts that `response` is an `application/problem+json` error with
/// `status` and the stable problem `type` `kind`, and a detail; returns the
/// body. Every Turnstile service answers errors this way.
pub async fn assert_problem(response: reqwest::Response, status: reqwest::StatusCode, kind: &str) -> serde_json::Value {
    assert_eq!(response.status(), status, "for expected problem {kind}");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], kind, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}
