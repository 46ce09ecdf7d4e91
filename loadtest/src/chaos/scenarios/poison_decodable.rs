//! `poison-decodable`: valid JSON the API would never send (quantity 0),
//! and a valid event for a claim that does not exist, on the hot
//! partition: both are dead-lettered at once and nothing stalls.

use anyhow::Result;
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::PgPool;
use turnstile_claim::ResourceKey;

use super::{Fault, Findings, Run};
use crate::flash_sale::FlashSaleReport;

#[derive(Debug)]
pub(in crate::chaos) struct PoisonDecodable;

impl Fault for PoisonDecodable {
    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            poison(&run.args.brokers, &run.requested_topic, &run.hot_coupon).await?;
            Ok(
                "on the hot coupon's partition: an event with quantity 0 and one for a claim that does not exist"
                    .to_owned(),
            )
        })
    }

    fn check<'a>(
        &'a self,
        run: &'a Run,
        _: &'a PgPool,
        _: &'a FlashSaleReport,
        findings: &'a mut Findings,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let dead = run.rig.worker_counter("turnstile_dead_lettered_total").await;
            findings.check("poison_dead_lettered", dead >= 2.0);
            Ok(())
        })
    }
}

/// Puts two decodable poison messages on `topic`, keyed by `resource` (so
/// on its partition): an event with quantity 0, and a valid event naming a
/// claim that does not exist. Written by hand, as a foreign producer would.
async fn poison(brokers: &str, topic: &str, resource: &ResourceKey) -> Result<()> {
    let kafka = turnstile_bus::KafkaConnection::new(brokers);
    let publisher = turnstile_bus::Publisher::connect(&kafka, &turnstile_bus::ProducerTuning::default())?;
    let tenant = resource.tenant.as_str();
    // `tenant/kind:id`, as the API keys its own events.
    let key = resource.to_string();
    for quantity in [0, 1] {
        let event = json!({
            "claim_id": uuid::Uuid::new_v4(),
            "tenant_id": tenant,
            "resource": {"tenant": tenant, "kind": resource.kind.as_str(), "id": resource.id.as_str()},
            "user_id": "poison",
            "quantity": quantity,
            "accepted_at_ms": 1_795_000_000_000_i64,
        });
        publisher
            .send_raw(topic, key.as_bytes(), &serde_json::to_vec(&event)?)
            .await?;
    }
    Ok(())
}
