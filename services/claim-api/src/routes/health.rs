//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;

/// How long a readiness check is reused: probes and load balancers may ask
/// as often as they like, and the dependencies see at most one check a
/// second.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// Whether each dependency answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Postgres answered `SELECT 1`.
    pub postgres: bool,
    /// Redis answered `PING`.
    pub redis: bool,
    /// Kafka returned cluster metadata. Reported, not required: without
    /// Kafka claims are still accepted, and decided by the sweeper.
    pub kafka: bool,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Postgres and Redis answer within a second (checked at most once per
/// [`READINESS_TTL`]).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    // One check at a time; whoever waited gets its result.
    let mut cached = state.readiness.lock().await;
    let readiness = match &*cached {
        Some((at, readiness)) if at.elapsed() < READINESS_TTL => readiness.clone(),
        _ => {
            let readiness = check(&state).await;
            *cached = Some((std::time::Instant::now(), readiness.clone()));
            readiness
        }
    };
    drop(cached);
    let status = if readiness.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// Asks each dependency once.
async fn check(state: &AppState) -> Readiness {
    state.metrics.readiness_checks.inc();
    let limit = Duration::from_secs(1);
    let postgres = async {
        matches!(
            tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(state.reads.primary())).await,
            Ok(Ok(_))
        )
    };
    let redis = async {
        let mut conn = state.redis.clone();
        matches!(
            tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        )
    };
    let kafka = async {
        let publisher = state.publisher.clone();
        let topic = state.topics.requested.clone();
        matches!(
            tokio::task::spawn_blocking(move || publisher.reaches(&topic, limit)).await,
            Ok(true)
        )
    };
    let (postgres, redis, kafka) = tokio::join!(postgres, redis, kafka);
    // Kafka is reported, not required: claims are accepted by their
    // commit, and the sweeper decides them while the broker is away.
    let ready = postgres && redis;
    Readiness {
        status: if ready { "ready" } else { "not_ready" },
        postgres,
        redis,
        kafka,
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus metrics")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    for (name, pool) in [("api_write", &state.write_pool), ("api_read", state.reads.pool())] {
        state.pool_gauges.observe(name, pool.size(), pool.num_idle());
    }
    state.door.observe();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        turnstile_telemetry::render_metrics(&state.registry),
    )
        .into_response()
}
