//! What more than one scenario reads after its fault: decisions in the
//! database over a span of time, and the services' counts of swept claims
//! and recreated topics.

use anyhow::Result;
use serde_json::json;

use super::{rig::Rig, scenarios::Findings};

/// Of `decided` claims decided since the broker or its topics came back,
/// those the workers consumed from Kafka rather than swept from the
/// database (`swept_then`: the workers' swept count at that moment). A
/// worker restarted since lost its count, which can only make this larger.
pub(super) async fn decided_through_kafka(rig: &Rig, decided: i64, swept_then: f64, findings: &mut Findings) -> f64 {
    let swept = (rig.worker_counter("turnstile_claims_swept_total").await - swept_then).max(0.0);
    let through_kafka = (decided as f64 - swept).max(0.0);
    findings.measure("swept_since", json!(swept));
    findings.measure("decided_through_kafka_since", json!(through_kafka));
    through_kafka
}

/// Topics the running services found missing and created again.
pub(super) async fn topics_recreated(rig: &Rig) -> f64 {
    const NAME: &str = "turnstile_kafka_topics_recreated_total";
    rig.api_counter(NAME).await + rig.worker_counter(NAME).await
}

/// Claims decided in `[from, to)` (Unix seconds).
pub(super) async fn decided_between(pool: &sqlx::PgPool, from: f64, to: f64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM claims WHERE decided_at >= to_timestamp($1) AND decided_at < to_timestamp($2)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?)
}

/// Seconds from `at` (Unix seconds) to the last decision of the claims
/// accepted before it (0 when they were all decided before it); `None`
/// while one of them is still pending.
pub(super) async fn backlog_drained_after(pool: &sqlx::PgPool, at: f64) -> Result<Option<f64>> {
    let (pending, last): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), extract(epoch FROM max(decided_at))::float8
           FROM claims WHERE accepted_at < to_timestamp($1)",
    )
    .bind(at)
    .fetch_one(pool)
    .await?;
    Ok((pending == 0).then(|| last.map_or(0.0, |t| (t - at).max(0.0))))
}
