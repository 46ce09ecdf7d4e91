//! `broker-restart-empty`: SIGKILL the broker and start it again on the
//! same port without its data (its log was in memory): topics and group
//! are gone. The services recreate the topics, the workers consume again
//! (not everything after the return is swept), and everything accepted
//! before the broker came back is decided within 30 s of its return.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{
    Fault, Findings, Run,
    broker_return::{self, Outage},
};
use crate::{chaos::rig::epoch_now, flash_sale::FlashSaleReport};

#[derive(Debug, Default)]
pub(in crate::chaos) struct BrokerRestartEmpty {
    outage: Option<Outage>,
}

impl Fault for BrokerRestartEmpty {
    fn needs_private_broker(&self) -> bool {
        true
    }

    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let broker = run.broker.as_mut().context("no private broker")?;
            broker.kill().await?;
            let down_at = epoch_now();
            run.rig.idle(Duration::from_secs(1)).await;
            broker.restart().await?;
            let up_at = epoch_now();
            self.outage = Some(Outage {
                down_at,
                up_at,
                swept_at_return: run.rig.worker_counter("turnstile_claims_swept_total").await,
            });
            Ok("SIGKILL the broker (in-memory log), started again empty on the same port 1 s later".to_owned())
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
            let outage = self.outage.context("the broker's outage was not recorded")?;
            broker_return::decided_while_down(run, pool, &outage, findings).await?;
            broker_return::check_return(run, pool, &outage, findings).await
        })
    }
}
