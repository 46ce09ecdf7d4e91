//! What `broker-restart-empty` and `broker-down-60s` both check once the
//! sale is over: what was decided while the broker was away, and that
//! after its return the workers consumed again and the backlog drained.

use anyhow::Result;
use serde_json::json;
use sqlx::PgPool;

use super::{Findings, Run};
use crate::chaos::{
    probes::{backlog_drained_after, decided_between, decided_through_kafka, topics_recreated},
    rig::epoch_now,
};

/// When the broker went away and came back, in Unix seconds, and the
/// workers' count of swept claims when it came back: what the sweeper
/// decided after it is not Kafka's doing.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outage {
    pub down_at: f64,
    pub up_at: f64,
    pub swept_at_return: f64,
}

/// Measures the topics recreated and the claims decided while the broker
/// was down; returns the latter.
pub(super) async fn decided_while_down(
    run: &Run,
    pool: &PgPool,
    outage: &Outage,
    findings: &mut Findings,
) -> Result<i64> {
    findings.measure("topics_recreated", json!(topics_recreated(&run.rig).await));
    let while_down = decided_between(pool, outage.down_at, outage.up_at).await?;
    findings.measure("decided_while_down", json!(while_down));
    Ok(while_down)
}

/// Checks that claims were decided after the broker's return, some of them
/// consumed from Kafka, and that everything accepted before it returned
/// was decided within 30 s of its return.
pub(super) async fn check_return(run: &Run, pool: &PgPool, outage: &Outage, findings: &mut Findings) -> Result<()> {
    let after = decided_between(pool, outage.up_at, epoch_now()).await?;
    findings.measure("decided_after_return", json!(after));
    findings.check("decided_after_return", after > 0);
    let through_kafka = decided_through_kafka(&run.rig, after, outage.swept_at_return, findings).await;
    findings.check("consumed_again_after_return", through_kafka > 0.0);
    // Everything accepted before the broker returned is decided
    // within 30 s of its return.
    let drained = backlog_drained_after(pool, outage.up_at).await?;
    findings.measure("backlog_decided_s_after_return", json!(drained));
    findings.check(
        "backlog_decided_within_30s_of_return",
        drained.is_some_and(|s| s <= 30.0),
    );
    Ok(())
}
