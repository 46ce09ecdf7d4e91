//! Liveness and readiness.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::app::AppState;

/// The process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Postgres answers within a second.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let postgres = matches!(
        tokio::time::timeout(Duration::from_secs(1), sqlx::query("SELECT 1").execute(&state.pool)).await,
        Ok(Ok(_))
    );
    let status = if postgres {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if postgres { "ready" } else { "not_ready" }, "postgres": postgres });
    (status, Json(body)).into_response()
}
