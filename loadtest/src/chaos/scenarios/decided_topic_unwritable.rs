//! `decided-topic-unwritable`: the workers start with the failpoint
//! `announce-refused` (no `ClaimDecided` can be queued) and are replaced
//! by normal workers half-way through. Decisions go on meanwhile, owed in
//! `decision_outbox`; at the end the outbox is empty and every decided
//! claim's `ClaimDecided` is on the topic (read from its start).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::time::sleep;

use super::{Fault, Findings, Run};
use crate::{
    chaos::{probes::decided_between, rig::epoch_now},
    flash_sale::FlashSaleReport,
};

#[derive(Debug, Default)]
pub(in crate::chaos) struct DecidedTopicUnwritable {
    /// When the announcing workers were replaced, in Unix seconds.
    replaced_at: Option<f64>,
}

impl Fault for DecidedTopicUnwritable {
    fn worker_env(&self) -> Vec<(&'static str, String)> {
        // Every announcement the workers try fails to queue, until they are
        // replaced by workers without the failpoint.
        vec![("FAILPOINTS", "announce-refused=return".to_owned())]
    }

    fn inject<'a>(&'a mut self, run: &'a mut Run, findings: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            // Half-way in: announcements have failed for as long again.
            run.rig
                .idle(Duration::from_secs_f64(run.args.duration as f64 / 4.0))
                .await;
            let pool = sqlx::PgPool::connect(&run.postgres.url()).await?;
            let owed = outbox_owed(&pool, &run.decided_topic).await?;
            let decided = decided_between(&pool, 0.0, epoch_now()).await?;
            pool.close().await;
            run.rig.replace_workers(2, &[], &["FAILPOINTS"]).await?;
            self.replaced_at = Some(epoch_now());
            findings.measure("owed_when_replaced", json!(owed));
            findings.measure("decided_while_refused", json!(decided));
            findings.check("announcements_owed_while_refused", owed > 0);
            findings.check("decided_while_announcements_failed", decided > 0);
            Ok("every ClaimDecided failed to queue (failpoint announce-refused) until both workers were replaced half-way through"
                .to_owned())
        })
    }

    fn check<'a>(
        &'a self,
        run: &'a Run,
        pool: &'a PgPool,
        _: &'a FlashSaleReport,
        findings: &'a mut Findings,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let replaced_at = self.replaced_at.context("the replacement was not recorded")?;
            let (drained, owed) = wait_for_outbox(pool, &run.decided_topic, Duration::from_secs(30)).await?;
            findings.measure("owed_at_end", json!(owed));
            findings.check("outbox_drained", drained);
            let decided: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT claim_id FROM claims WHERE status <> 'pending'")
                .fetch_all(pool)
                .await?;
            let unannounced = unannounced(
                &run.brokers,
                &run.decided_topic,
                &run.run_id,
                &decided,
                Duration::from_secs(30),
            )
            .await?;
            findings.measure("decided", json!(decided.len()));
            findings.measure("decided_unannounced", json!(unannounced));
            findings.check("every_decision_announced", unannounced == 0);
            let after = decided_between(pool, replaced_at, epoch_now()).await?;
            findings.measure("decided_after_replacement", json!(after));
            Ok(())
        })
    }
}

/// Announcements owed to `topic` (rows of `decision_outbox`).
async fn outbox_owed(pool: &sqlx::PgPool, topic: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM decision_outbox WHERE topic = $1")
            .bind(topic)
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until nothing is owed to `topic`, or `within`; returns whether it
/// drained and what is still owed.
async fn wait_for_outbox(pool: &sqlx::PgPool, topic: &str, within: Duration) -> Result<(bool, i64)> {
    let deadline = Instant::now() + within;
    loop {
        let owed = outbox_owed(pool, topic).await?;
        if owed == 0 || Instant::now() > deadline {
            return Ok((owed == 0, owed));
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// How many of `decided` have no `ClaimDecided` on `topic`, read from its
/// start by a group of its own, for at most `within`.
async fn unannounced(
    brokers: &str,
    topic: &str,
    run_id: &str,
    decided: &[uuid::Uuid],
    within: Duration,
) -> Result<usize> {
    use rdkafka::{Message, consumer::Consumer};

    let mut missing: std::collections::HashSet<uuid::Uuid> = decided.iter().copied().collect();
    let kafka = turnstile_bus::KafkaConnection::new(brokers);
    let reader = turnstile_bus::reader_from_start(&kafka, &format!("chaos-{run_id}-announced"))?;
    reader.subscribe(&[topic])?;
    let deadline = tokio::time::Instant::now() + within;
    while !missing.is_empty() {
        let Ok(received) = tokio::time::timeout_at(deadline, reader.recv()).await else {
            break;
        };
        let Ok(message) = received else { continue };
        let claim_id = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
            .and_then(|v| v.get("claim_id")?.as_str()?.parse::<uuid::Uuid>().ok());
        if let Some(id) = claim_id {
            missing.remove(&id);
        }
    }
    Ok(missing.len())
}
