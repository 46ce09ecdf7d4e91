//! `topic-deleted`: an admin `DeleteTopics` of the run's
//! `claims.requested` and `claims.decided` on the live broker: they are
//! recreated (`turnstile_kafka_topics_recreated_total`) and claims keep
//! being decided, some of them consumed from Kafka again (not all swept).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{Fault, Findings, Run};
use crate::{
    chaos::{
        PARTITIONS,
        probes::{decided_between, decided_through_kafka, topics_recreated},
        rig::epoch_now,
    },
    flash_sale::FlashSaleReport,
};

#[derive(Debug, Default)]
pub(in crate::chaos) struct TopicDeleted {
    /// When the topics were deleted, in Unix seconds, and the workers'
    /// count of swept claims just before.
    deleted: Option<(f64, f64)>,
}

impl Fault for TopicDeleted {
    fn needs_private_broker(&self) -> bool {
        true
    }

    fn inject<'a>(&'a mut self, run: &'a mut Run, findings: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let (requested, decided) = (run.requested_topic.as_str(), run.decided_topic.as_str());
            let swept_then = run.rig.worker_counter("turnstile_claims_swept_total").await;
            delete_topics(&run.brokers, &[requested, decided]).await?;
            self.deleted = Some((epoch_now(), swept_then));
            // The keepers look every 2 s; a service that died with the
            // deletion would lose its count, so it is read now too.
            run.rig.idle(Duration::from_secs(5)).await;
            findings.measure("topics_recreated_5s_after", json!(topics_recreated(&run.rig).await));
            Ok(format!("DeleteTopics {requested} and {decided} on the live broker"))
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
            let (deleted_at, swept_then) = self.deleted.context("the deletion was not recorded")?;
            let early = findings
                .measured
                .get("topics_recreated_5s_after")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let recreated = topics_recreated(&run.rig).await.max(early);
            findings.measure("topics_recreated", json!(recreated));
            // A service that crashed lost its count, and created the
            // topics again when it started: then the topics being back
            // with their layout is what tells.
            let restarted = run.rig.restarts.iter().any(|r| r.restarted_at_epoch_s >= deleted_at);
            let partitions = topic_partitions(
                &run.brokers,
                &[run.requested_topic.as_str(), run.decided_topic.as_str()],
            )?;
            findings.measure("partitions_after", json!(partitions));
            let back = partitions.iter().all(|&n| n == PARTITIONS);
            findings.check("topics_back_with_their_layout", back);
            findings.check("topics_recreated", recreated >= 1.0 || (restarted && back));
            let after = decided_between(pool, deleted_at, epoch_now()).await?;
            findings.measure("decided_after_deletion", json!(after));
            findings.check("decided_after_deletion", after > 0);
            let through_kafka = decided_through_kafka(&run.rig, after, swept_then, findings).await;
            findings.check("consumed_again_after_recreation", through_kafka > 0.0);
            Ok(())
        })
    }
}

/// An admin `DeleteTopics` of `topics`, as an operator (or a script) would
/// send it; every topic must have been deleted.
async fn delete_topics(brokers: &str, topics: &[&str]) -> Result<()> {
    use rdkafka::{
        admin::{AdminClient, AdminOptions},
        client::DefaultClientContext,
        config::ClientConfig,
    };

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("an admin client for DeleteTopics")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(topics, &options).await? {
        if let Err((topic, code)) = result {
            bail!("DeleteTopics {topic}: {code}");
        }
    }
    Ok(())
}

/// The partitions each of `topics` has on the broker (0: missing). Asked
/// once the topics exist again: a metadata answer about a deleted topic is
/// what crashes librdkafka (see docs/architecture.md).
fn topic_partitions(brokers: &str, topics: &[&str]) -> Result<Vec<i32>> {
    use rdkafka::{config::ClientConfig, consumer::BaseConsumer, consumer::Consumer};

    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    topics
        .iter()
        .map(|topic| {
            let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == *topic && t.error().is_none())
                .map_or(0, |t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
        })
        .collect()
}
