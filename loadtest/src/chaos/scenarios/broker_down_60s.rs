//! `broker-down-60s`: SIGKILL the broker and keep it down 60 s while claims
//! keep arriving, then start it again (empty). The API keeps answering
//! `202` (the `503`s of a starved Postgres are counted, no `500`), the
//! workers decide from the database
//! (`turnstile_claims_decided_without_kafka_total`, and decisions committed
//! in the outage's second half), and the backlog is decided within 30 s of
//! the return.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::PgPool;

use super::{
    Fault, Findings, Run,
    broker_return::{self, Outage},
};
use crate::{
    chaos::{
        probes::decided_between,
        rig::{Rig, epoch_now},
    },
    flash_sale::FlashSaleReport,
};

/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(in crate::chaos) struct BrokerDown60s {
    outage: Option<Outage>,
}

impl Fault for BrokerDown60s {
    fn needs_private_broker(&self) -> bool {
        true
    }

    /// The outage lasts a minute, and claims keep arriving through it.
    fn load(&self, rate: f64, duration: u64) -> (f64, u64) {
        (rate, duration + OUTAGE.as_secs())
    }

    fn inject<'a>(&'a mut self, run: &'a mut Run, findings: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let rig = &mut run.rig;
            let broker = run.broker.as_mut().context("no private broker")?;
            let before = claim_answers(rig).await;
            broker.kill().await?;
            let down_at = epoch_now();
            rig.idle(OUTAGE).await;
            let during = claim_answers(rig).await.since(&before);
            // Read before the broker returns: a worker restarted since
            // would have lost its count.
            let without_kafka = rig.worker_counter("turnstile_claims_decided_without_kafka_total").await;
            broker.restart().await?;
            let up_at = epoch_now();
            self.outage = Some(Outage {
                down_at,
                up_at,
                swept_at_return: rig.worker_counter("turnstile_claims_swept_total").await,
            });
            findings.measure("api_2xx_while_down", json!(during.ok));
            findings.measure("api_429_while_down", json!(during.throttled));
            findings.measure("api_5xx_while_down", json!(during.failed));
            findings.measure("decided_without_kafka", json!(without_kafka));
            findings.check("decided_without_kafka", without_kafka > 0.0);
            findings.check("api_accepted_while_down", during.ok > 0.0);
            Ok(format!(
                "SIGKILL the broker, kept down {} s while claims arrived, started again (empty)",
                OUTAGE.as_secs()
            ))
        })
    }

    fn check<'a>(
        &'a self,
        run: &'a Run,
        pool: &'a PgPool,
        sale: &'a FlashSaleReport,
        findings: &'a mut Findings,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let outage = self.outage.context("the broker's outage was not recorded")?;
            let (down_at, up_at) = (outage.down_at, outage.up_at);
            let while_down = broker_return::decided_while_down(run, pool, &outage, findings).await?;
            // The second half of the outage: nothing Kafka delivered
            // before it went down is still being decided then.
            let late = decided_between(pool, (down_at + up_at) / 2.0, up_at).await?;
            findings.measure("decided_in_outage_second_half", json!(late));
            findings.measure("decided_per_s_while_down", json!(while_down as f64 / (up_at - down_at)));
            findings.check("decided_while_down", late > 0);
            // A 503 while the broker is down is Postgres not answering
            // in time (no pool connection within its timeout, on two
            // cores that librdkafka's reconnecting clients also load),
            // and promises that nothing was recorded (judged with every
            // other refusal by refused_keys_taken); nothing about Kafka
            // answers 503. A 500 would be a bug.
            let status = |code: &str| sale.answers_by_status.get(code).copied().unwrap_or(0);
            findings.measure("unavailable_503", json!(status("503")));
            findings.check("no_500", status("500") == 0);
            broker_return::check_return(run, pool, &outage, findings).await
        })
    }
}

/// The API's answers to claims so far, by status class.
#[derive(Debug, Clone, Copy, Default)]
struct ClaimAnswers {
    ok: f64,
    throttled: f64,
    failed: f64,
}

impl ClaimAnswers {
    /// The answers given since `earlier` (0 when the API restarted since,
    /// which the restarts report shows).
    fn since(&self, earlier: &Self) -> Self {
        Self {
            ok: (self.ok - earlier.ok).max(0.0),
            throttled: (self.throttled - earlier.throttled).max(0.0),
            failed: (self.failed - earlier.failed).max(0.0),
        }
    }
}

/// claim-api's count of answers to `POST /v1/claims`.
async fn claim_answers(rig: &Rig) -> ClaimAnswers {
    const NAME: &str = "turnstile_http_requests_total";
    let of = |class: &'static str| {
        let labels = [r#"method="POST""#, r#"route="/v1/claims""#, class];
        async move { rig.api_counter_where(NAME, &labels).await }
    };
    ClaimAnswers {
        ok: of(r#"status_class="2xx""#).await,
        throttled: rig.api_counter("turnstile_claims_throttled_total").await,
        failed: of(r#"status_class="5xx""#).await,
    }
}
