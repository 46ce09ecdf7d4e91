//! Building the application: dependencies, background feeds, the routers
//! and their layers. Tests build it on port 0 and talk to it over HTTP.
//!
//! Two listeners: the API (`TURNSTILE_HTTP_ADDR`), where every `/v1` route
//! needs an API key (`/healthz`, `/openapi.json` and the reference at
//! `/docs` are open), and the operator listener (`TURNSTILE_METRICS_ADDR`,
//! loopback by default) with `/metrics`, `/readyz` and `/healthz`.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicI64},
    time::{Duration, Instant},
};
use turnstile_http::tls::ServerTls;
use turnstile_lock::backend::tls::{self as redis_tls, RedisTls};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use prometheus::Registry;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use turnstile_bus::{
    KafkaHealth, ProducerTuning, Publisher, STARTUP_TOPIC_CHECK, TOPIC_CHECK_INTERVAL, TopicKeeper, Topics,
};
use turnstile_claim::{ClaimId, TenantId};
use turnstile_http::{
    auth::{self, CallerLimits, Gatekeeper, KeyRing},
    routes::V1Routes,
    serve::{ServeLimits, serve},
};
use turnstile_store::{self as store, StatementTimeouts, cache::ResourceCache};
use utoipa::OpenApi;

use crate::{
    Settings,
    accept::{AcceptDeps, AcceptQueue},
    admission::{AdmissionGate, LimiterSettings, LoadGate, QueueSettings, admit_claims},
    door::Door,
    extract::BodyLimit,
    feeds::{self, DecisionWaiters},
    metrics::ApiMetrics,
    problem::ApiError,
    reads::Reads,
    reference,
    resilience::Breaker,
    routes::{claims, health, resources},
    ticket::TicketKeys,
};

/// What every handler shares: one allocation behind an `Arc`, because axum
/// clones the state for every extractor and middleware of every request (as
/// a plain struct its clone was about 7% of the API's CPU under load).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub(crate) write_pool: PgPool,
    pub(crate) reads: Reads,
    pub(crate) cache: ResourceCache,
    pub(crate) redis: redis::aio::ConnectionManager,
    pub(crate) publisher: Publisher,
    pub(crate) topics: Topics,
    pub(crate) decisions: DecisionWaiters,
    /// What earlier decisions settled: claims answered before recording.
    pub(crate) door: Door,
    pub(crate) postgres: Breaker,
    pub(crate) metrics: ApiMetrics,
    pub(crate) registry: Registry,
    pub(crate) pool_gauges: turnstile_telemetry::PoolGauges,
    pub(crate) accept: AcceptQueue,
    /// Slots for requests waiting on a decision (`Prefer: wait`).
    pub(crate) waiters: Arc<tokio::sync::Semaphore>,
    /// The last readiness check, reused for [`health::READINESS_TTL`].
    pub(crate) readiness: tokio::sync::Mutex<Option<(Instant, health::Readiness)>>,
    /// The per-key and per-user buckets.
    pub(crate) limits: CallerLimits,
}

/// The OpenAPI 3.1 description of the API, generated from the handlers.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Turnstile claim API",
        description = "Coupon and inventory claims, decided under fenced locks. Every error is \
                       `application/problem+json` (RFC 9457) with a stable `type`."
    ),
    paths(
        resources::create_coupon,
        resources::get_coupon,
        resources::create_sku,
        resources::get_sku,
        claims::create_claim,
        claims::get_claim,
        health::healthz,
    ),
    components(schemas(crate::problem::Problem)),
    modifiers(&BearerKeys)
)]
pub struct ApiDoc;

/// The `api_key` security scheme the `/v1` operations name: an API key as
/// a bearer token.
#[derive(Debug)]
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("An API key from `claim-api keys create`"))
                        .build(),
                ),
            );
    }
}

/// A built API, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    operator_listener: TcpListener,
    operator_router: Router,
    /// TLS on both listeners, when configured.
    tls: Option<ServerTls>,
    limits: ServeLimits,
    router: Router,
    background: CancellationToken,
    publisher: Publisher,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects to every dependency, applies migrations, creates the topics
    /// if needed, starts the background feeds and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let metrics = ApiMetrics::register(&registry)?;
        let pool_gauges = turnstile_telemetry::PoolGauges::register(&registry)?;
        let (write_pool, reads) = connect_postgres(&settings, &metrics).await?;
        let redis = connect_cache(&settings).await?;
        let background = CancellationToken::new();
        let kafka = KafkaParts::connect(&settings, &metrics, &background).await?;
        let (keys, limits) = callers(&settings, &reads, &background).await?;
        let feeds = Feeds::start(&settings, &kafka, &reads, &metrics, &background);
        let postgres = Breaker::new("postgres", metrics.circuit_open.with_label_values(&["postgres"]));
        let accept = start_accept(&settings, &write_pool, &reads, &kafka, &postgres, &metrics, &background);
        let publisher = kafka.publisher.clone();
        let state = AppState(Arc::new(Shared {
            cache: ResourceCache::new(redis.clone(), "turnstile"),
            redis,
            write_pool,
            reads,
            publisher: kafka.publisher,
            topics: kafka.topics,
            decisions: feeds.decisions,
            door: feeds.door,
            postgres,
            metrics,
            registry,
            pool_gauges,
            accept,
            waiters: Arc::new(tokio::sync::Semaphore::new(settings.max_waiters)),
            readiness: tokio::sync::Mutex::new(None),
            limits: limits.clone(),
        }));
        let gate = admission_gate(&settings, feeds.pending, &state);
        let gatekeeper = Gatekeeper {
            certificate_names_tenant: settings.tls.client_tenant,
            keys,
            limits,
            refusals: Some(state.metrics.auth_refusals.clone()),
        };
        let operator_router = operator_router(state.clone());
        let router = router(state, gate, gatekeeper, &settings);
        let tls = ServerTls::from_settings(&settings.tls).context("setting up tls")?;
        let (listener, operator_listener) = bind(&settings).await?;
        Ok(Self {
            listener,
            operator_listener,
            operator_router,
            tls,
            limits: ServeLimits {
                header_read_timeout: settings.header_read_timeout,
                max_connections: settings.max_connections,
                ..ServeLimits::default()
            },
            router,
            background,
            publisher,
        })
    }

    /// The bound address (the real port when built with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics`, `/readyz` and `/healthz` listen.
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.operator_listener.local_addr()
    }

    /// Serves until `shutdown` fires, then drains in-flight requests and
    /// gives the events of claims accepted meanwhile a few seconds to reach
    /// Kafka (what does not is decided by the sweeper).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let background = self.background;
        if let Some(tls) = &self.tls {
            tokio::spawn(tls.clone().watch(background.clone()));
        }
        let operator_stop = shutdown.clone();
        let operator_tls = self.tls.as_ref().map(|tls| Arc::clone(&tls.operator));
        let operator = tokio::spawn(serve(
            self.operator_listener,
            self.operator_router,
            ServeLimits::default(),
            operator_tls,
            async move { operator_stop.cancelled().await },
        ));
        let public_tls = self.tls.as_ref().map(|tls| Arc::clone(&tls.public));
        let result = serve(self.listener, self.router, self.limits, public_tls, async move {
            shutdown.cancelled().await;
        })
        .await;
        background.cancel();
        if let Ok(Err(e)) = operator.await {
            tracing::warn!(error = %e, "the operator listener failed");
        }
        let publisher = self.publisher;
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(crate::accept::FLUSH_AT_SHUTDOWN)).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "ClaimRequested events still queued at exit; the sweeper will decide their claims");
        }
        Ok(result?)
    }
}

/// The write pool, migrated, and the reads (the replica's pool when one is
/// set, falling back to the primary).
async fn connect_postgres(settings: &Settings, metrics: &ApiMetrics) -> anyhow::Result<(PgPool, Reads)> {
    let timeouts = StatementTimeouts {
        statement: settings.pg_statement_timeout,
        lock: settings.pg_lock_timeout,
    };
    let write_pool = store::connect_with(
        settings.database.url.expose(),
        settings.pg_write_pool,
        settings.pg_acquire_timeout,
        timeouts,
    )
    .await
    .context("connecting to postgres")?;
    store::migrate(&write_pool).await.context("applying migrations")?;
    let read_pool = store::connect_with(
        settings
            .database_read_url
            .as_ref()
            .unwrap_or(&settings.database.url)
            .expose(),
        settings.pg_read_pool,
        settings.pg_acquire_timeout,
        timeouts,
    )
    .await
    .context("connecting to the postgres read pool")?;
    let reads = Reads::new(
        read_pool,
        settings.database_read_url.is_some().then(|| write_pool.clone()),
        metrics.replica_fallbacks.clone(),
    );
    Ok((write_pool, reads))
}

/// What the API needs of Kafka. Kafka is the fast path: the API starts,
/// and accepts, without it.
struct KafkaParts {
    topics: Topics,
    connection: turnstile_bus::KafkaConnection,
    health: KafkaHealth,
    publisher: Publisher,
}

impl KafkaParts {
    /// Connects, and keeps the topics (recreating a lost one) until `stop`.
    async fn connect(settings: &Settings, metrics: &ApiMetrics, stop: &CancellationToken) -> anyhow::Result<Self> {
        let topics = settings.kafka.topics();
        let connection = settings.kafka.connection();
        topics
            .ensure_or_defer(&connection, &settings.kafka.layout(), STARTUP_TOPIC_CHECK)
            .await;
        let health = KafkaHealth::new(metrics.kafka_up.clone());
        let keeper = TopicKeeper::new(
            &connection,
            &[&topics.requested, &topics.decided, &topics.dead_letter],
            settings.kafka.layout(),
            metrics.topics_recreated.clone(),
        )?
        .with_health(health.clone());
        let publisher = Publisher::connect(
            &connection,
            &ProducerTuning {
                delivery_timeout: Duration::from_secs(5),
                linger: settings.producer_linger,
                idempotence: settings.kafka.idempotence,
                ..ProducerTuning::default()
            },
        )?;
        tokio::spawn(keeper.run(TOPIC_CHECK_INTERVAL, stop.clone()));
        Ok(Self {
            topics,
            connection,
            health,
            publisher,
        })
    }
}

/// The API keys in force, refreshed until `stop`, and the callers' rate
/// limits.
async fn callers(
    settings: &Settings,
    reads: &Reads,
    stop: &CancellationToken,
) -> anyhow::Result<(KeyRing, CallerLimits)> {
    let keys = KeyRing::load(store::keys::StoredKeys(reads.primary().clone()))
        .await
        .context("loading the API keys")?;
    keys.refresh_every(settings.callers.key_refresh, stop.clone());
    let limits = CallerLimits::new(
        settings.callers.key_limit(),
        settings.callers.user_limit(),
        stop.clone(),
    );
    Ok((keys, limits))
}

/// What the background feeds keep up to date, until the API stops.
struct Feeds {
    /// Decisions from `claims.decided`, for `Prefer: wait`.
    decisions: DecisionWaiters,
    /// What the same decisions settled, for answers at the door.
    door: Door,
    /// Claims pending, -1 until the first count (a moment after start).
    pending: Arc<AtomicI64>,
}

impl Feeds {
    /// Starts the decision feed and the lag and pending-claims watchers.
    fn start(
        settings: &Settings,
        kafka: &KafkaParts,
        reads: &Reads,
        metrics: &ApiMetrics,
        stop: &CancellationToken,
    ) -> Self {
        let decisions = DecisionWaiters::default();
        let door = Door::new(metrics.door_answers.clone(), metrics.door_known.clone());
        tokio::spawn(decisions.clone().follow_topic(
            kafka.connection.clone(),
            kafka.topics.decided.clone(),
            door.clone(),
            stop.clone(),
        ));
        tokio::spawn(feeds::watch_lag(
            kafka.connection.clone(),
            settings.worker_group_id.clone(),
            kafka.topics.requested.clone(),
            metrics.consumer_lag.clone(),
            stop.clone(),
        ));
        let pending = Arc::new(AtomicI64::new(-1));
        tokio::spawn(feeds::watch_pending(
            reads.primary().clone(),
            settings.max_pending_claims,
            Arc::clone(&pending),
            metrics.pending_claims.clone(),
            stop.clone(),
        ));
        Self {
            decisions,
            door,
            pending,
        }
    }
}

/// Group commit: a few batches at a time, the rest of the write pool for
/// everything else.
fn start_accept(
    settings: &Settings,
    write_pool: &PgPool,
    reads: &Reads,
    kafka: &KafkaParts,
    postgres: &Breaker,
    metrics: &ApiMetrics,
    stop: &CancellationToken,
) -> AcceptQueue {
    AcceptQueue::start(
        AcceptDeps {
            write_pool: write_pool.clone(),
            reads: reads.clone(),
            publisher: kafka.publisher.clone(),
            kafka: kafka.health.clone(),
            topics: kafka.topics.clone(),
            postgres: postgres.clone(),
            metrics: metrics.clone(),
            outcome_deadline: settings.outcome_deadline,
        },
        usize::try_from(settings.accept_batches).unwrap_or(1),
        stop.clone(),
    )
}

/// The gate in front of `POST /v1/claims`: the adaptive limit, the queue
/// and its tickets, and the backlog bound.
fn admission_gate(settings: &Settings, pending: Arc<AtomicI64>, state: &AppState) -> AdmissionGate {
    AdmissionGate::new(
        LimiterSettings {
            kind: settings.admission_limiter,
            max_inflight: settings.max_inflight,
            slo: settings.admission_slo,
        },
        QueueSettings {
            capacity: settings.admission_queue,
            max_wait: settings.admission_queue_wait,
            keys: settings.ticket_keys.clone().unwrap_or_else(TicketKeys::random),
            ticket_ttl: settings.ticket_ttl,
        },
        LoadGate {
            max_pending: settings.max_pending_claims,
            pending,
        },
        state.door.clone(),
        &state.metrics,
    )
}

/// The stock cache, over TLS with the settings' CA and client certificate
/// when they are set.
async fn connect_cache(settings: &Settings) -> anyhow::Result<redis::aio::ConnectionManager> {
    let tls = &settings.redis_tls;
    let redis_tls = tls
        .is_set()
        .then(|| RedisTls::from_files(tls.ca.as_deref(), tls.client()))
        .transpose()
        .context("reading the redis tls files")?;
    redis_tls::client(settings.cache.url.expose(), redis_tls.as_ref())?
        .get_connection_manager()
        .await
        .context("connecting to redis")
}

/// The API's listener and the operator listener.
async fn bind(settings: &Settings) -> anyhow::Result<(TcpListener, TcpListener)> {
    let listener = turnstile_http::listener::bind(settings.http_addr)
        .with_context(|| format!("binding {}", settings.http_addr))?;
    let operator_listener = TcpListener::bind(settings.metrics_addr)
        .await
        .with_context(|| format!("binding the operator listener {}", settings.metrics_addr))?;
    info!(
        addr = %listener.local_addr()?,
        operator = %operator_listener.local_addr()?,
        "claim-api ready"
    );
    Ok((listener, operator_listener))
}

/// The API: `/v1` behind authentication, and the open routes.
fn router(state: AppState, gate: AdmissionGate, gatekeeper: Gatekeeper, settings: &Settings) -> Router {
    let v1 = V1Routes {
        create_claim: post(claims::create_claim),
        get_claim: get(claims::get_claim),
        create_coupon: post(resources::create_coupon),
        get_coupon: get(resources::get_coupon),
        create_sku: post(resources::create_sku),
        get_sku: get(resources::get_sku),
    }
    .into_router()
    .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
    .layer(middleware::from_fn_with_state(
        V1Front {
            state: state.clone(),
            gatekeeper,
            gate,
            body_limit: BodyLimit(settings.max_body_bytes),
        },
        v1_front,
    ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .merge(reference::routes())
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .merge(v1)
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .with_state(state)
}

/// The operator listener's routes.
fn operator_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/readyz", get(health::readyz))
        .route("/healthz", get(health::healthz))
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .with_state(state)
}

/// Who a request was about, set by handlers as a response extension so the
/// access log line can name it.
#[derive(Debug, Clone)]
pub(crate) struct ClaimContext {
    pub(crate) tenant: TenantId,
    pub(crate) claim_id: ClaimId,
}

/// The request's correlation id (the trace id, or a random id in the same
/// format when tracing is off), as a request extension for handlers.
#[derive(Debug, Clone)]
pub(crate) struct CorrelationId(pub(crate) String);

/// The name of the response header that returns the correlation id.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// The longest a request may take, `Prefer: wait` included (at most 10 s):
/// past it the answer is `408` and the client retries with the same key.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The method as a metric and span label: a fixed set, so a client cannot
/// grow the registry with made-up methods.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// What the `/v1` routes' one layer needs.
#[derive(Clone)]
struct V1Front {
    state: AppState,
    gatekeeper: Gatekeeper,
    gate: AdmissionGate,
    body_limit: BodyLimit,
}

/// The `/v1` routes' layer, three steps in order: who is calling and
/// whether its key has tokens left (authentication); then, for a claim, a
/// slot or a refusal that costs no span, no log line and no body read
/// (admission); then the request, tracked. One layer rather than three:
/// each layer clones a boxed service and boxes a future per request.
async fn v1_front(State(front): State<V1Front>, request: Request, next: Next) -> Response {
    let mut request = match auth::authenticate_request(&front.gatekeeper, request).await {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    request.extensions_mut().insert(front.body_limit);
    let request = match admit_claims(&front.gate, request).await {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    track(State(front.state), request, next).await
}

/// Per request: the server span (OpenTelemetry HTTP semantic conventions,
/// continuing an incoming `traceparent`), the correlation id (returned in
/// `x-correlation-id`), metrics by route template and status class, and one
/// access log line.
async fn track(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    use tracing::{Instrument, field::Empty};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let started = Instant::now();
    // The template, shared, not copied: this runs for every request.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(request.method());
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = Empty,
        otel.status_code = Empty,
        correlation_id = Empty,
    );
    // A span that no subscriber records (tracing off) has no parent to
    // take, and its correlation id is a random one.
    if !span.is_disabled() {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
        });
        let _ = span.set_parent(parent);
    }
    let correlation_id = turnstile_telemetry::correlation_id(&span);
    span.record("correlation_id", correlation_id.as_str());
    request.extensions_mut().insert(CorrelationId(correlation_id.clone()));

    let mut response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request).instrument(span.clone())).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(REQUEST_TIMEOUT.as_millis() as u64).into_response(),
    };
    let status = response.status().as_u16();
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let elapsed = started.elapsed();
    state
        .metrics
        .http_requests
        .with_label_values(&[route, method, class])
        .inc();
    state
        .metrics
        .http_duration
        .with_label_values(&[route, method])
        .observe(elapsed.as_secs_f64());
    if let Ok(value) = axum::http::HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(CORRELATION_ID_HEADER, value);
    }
    let claim = response.extensions().get::<ClaimContext>();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if route.starts_with("/v1/") {
        info!(
            correlation_id,
            tenant_id = claim.map(|c| c.tenant.as_str()),
            claim_id = claim.map(|c| tracing::field::display(c.claim_id)),
            http.request.method = %method,
            http.route = %route,
            http.response.status_code = status,
            latency_ms,
            "request"
        );
    } else {
        tracing::debug!(correlation_id, http.route = %route, http.response.status_code = status, latency_ms, "request");
    }
    response
}
