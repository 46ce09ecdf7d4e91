//! The worker's `/readyz`: whether its announcements are moving.
//!
//! A worker that decides but cannot settle or announce is a worker to look
//! at: its partitions' offsets stop moving (a settle stalled on Postgres),
//! or the outbox grows old (the relay cannot reach Kafka). `/healthz`
//! stays the liveness probe; `/readyz` answers 503 with the stalled checks
//! named, so an operator or an orchestrator can tell the two apart.

use std::time::Duration;

use axum::{Json, http::StatusCode, response::IntoResponse};
use serde::Serialize;
use turnstile_bus::KafkaHealth;
use turnstile_coordinator::SettleClock;

use crate::WorkerMetrics;

/// A settle stalled longer than this makes the worker not ready: past the
/// producer's delivery timeout and a few Postgres retries.
pub(crate) const SETTLE_STALL: Duration = Duration::from_secs(30);
/// An announcement owed longer than this makes the worker not ready.
pub(crate) const ANNOUNCE_STALL: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
struct Report {
    status: &'static str,
    settle_busy_seconds: f64,
    announce_backlog: i64,
    announce_oldest_seconds: f64,
    kafka_up: bool,
    stalled: Vec<&'static str>,
}

/// The `/readyz` answer.
pub(crate) fn report(settle: &SettleClock, metrics: &WorkerMetrics, kafka: &KafkaHealth) -> impl IntoResponse + use<> {
    let settle_busy = settle.busy_for();
    let oldest = metrics.announce_oldest_seconds.get();
    let mut stalled = Vec::new();
    if settle_busy > SETTLE_STALL {
        stalled.push("settle");
    }
    if oldest > ANNOUNCE_STALL.as_secs_f64() {
        stalled.push("announce");
    }
    let report = Report {
        status: if stalled.is_empty() { "ready" } else { "stalled" },
        settle_busy_seconds: settle_busy.as_secs_f64(),
        announce_backlog: metrics.announce_backlog.get(),
        announce_oldest_seconds: oldest,
        kafka_up: kafka.is_up(),
        stalled,
    };
    let status = if report.stalled.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}
