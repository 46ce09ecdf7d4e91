//! Building the service: the pool, migrations, the router. Tests build it on
//! port 0 and talk to it over HTTP.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::{
    Extension, Router,
    routing::{get, post},
};
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::info;
use turnstile_http::{
    auth::{self, CallerLimits, Gatekeeper, KeyRing},
    routes::V1Routes,
};
use turnstile_store as store;

use crate::{
    Settings,
    extract::BodyLimit,
    problem::ApiError,
    routes::{claims, health, resources},
};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) pool: PgPool,
    /// One permit per claim in progress (`TURNSTILE_MAX_INFLIGHT`).
    pub(crate) inflight: Arc<Semaphore>,
    /// The per-key and per-user buckets.
    pub(crate) limits: CallerLimits,
    /// How long a lost commit answer is retried (`TURNSTILE_OUTCOME_DEADLINE`).
    pub(crate) outcome_deadline: std::time::Duration,
}

/// A built service, bound to its port, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    /// TLS on the listener, when configured.
    tls: Option<turnstile_http::tls::ServerTls>,
    background: CancellationToken,
}

impl Application {
    /// Connects to Postgres, applies migrations and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = store::connect_with(
            settings.database.url.expose(),
            settings.pg_pool,
            settings.pg_acquire_timeout,
            store::StatementTimeouts {
                statement: settings.pg_statement_timeout,
                lock: settings.pg_lock_timeout,
            },
        )
        .await
        .context("connecting to postgres")?;
        store::migrate(&pool).await.context("applying migrations")?;
        let background = CancellationToken::new();
        let keys = KeyRing::load(turnstile_store::keys::StoredKeys(pool.clone()))
            .await
            .context("loading the API keys")?;
        keys.refresh_every(settings.callers.key_refresh, background.clone());
        let limits = CallerLimits::new(
            settings.callers.key_limit(),
            settings.callers.user_limit(),
            background.clone(),
        );
        let state = AppState {
            pool,
            inflight: Arc::new(Semaphore::new(settings.max_inflight)),
            limits: limits.clone(),
            outcome_deadline: settings.outcome_deadline,
        };
        let gatekeeper = Gatekeeper {
            certificate_names_tenant: settings.tls.client_tenant,
            keys,
            limits,
            refusals: None,
        };
        let router = router(state, gatekeeper, &settings);
        let listener = turnstile_http::listener::bind(settings.http_addr)
            .with_context(|| format!("binding {}", settings.http_addr))?;
        info!(
            addr = %listener.local_addr()?,
            pg_pool = settings.pg_pool,
            max_inflight = settings.max_inflight,
            "sql-baseline ready"
        );
        let tls = turnstile_http::tls::ServerTls::from_settings(&settings.tls).context("setting up tls")?;
        Ok(Self {
            listener,
            router,
            tls,
            background,
        })
    }

    /// The bound address (the real port when built with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then drains in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Some(tls) = &self.tls {
            tokio::spawn(tls.clone().watch(self.background.clone()));
        }
        let _stop_background = self.background.drop_guard();
        turnstile_http::serve::serve(
            self.listener,
            self.router,
            turnstile_http::serve::ServeLimits::default(),
            self.tls.map(|tls| tls.public),
            async move { shutdown.cancelled().await },
        )
        .await?;
        Ok(())
    }
}

/// The same routes, keys and buckets as claim-api's, so the comparison
/// stays like for like.
fn router(state: AppState, gatekeeper: Gatekeeper, settings: &Settings) -> Router {
    let v1 = V1Routes {
        create_claim: post(claims::create_claim),
        get_claim: get(claims::get_claim),
        create_coupon: post(resources::create_coupon),
        get_coupon: get(resources::get_coupon),
        create_sku: post(resources::create_sku),
        get_sku: get(resources::get_sku),
    }
    .into_router()
    .layer(axum::middleware::from_fn_with_state(gatekeeper, auth::authenticate));
    Router::new()
        .merge(v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(Extension(BodyLimit(settings.max_body_bytes)))
        .with_state(state)
}
