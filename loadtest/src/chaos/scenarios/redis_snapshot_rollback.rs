//! `redis-snapshot-rollback`: the lock Redis is snapshotted early in the
//! sale, then killed and restarted from that older snapshot: its token
//! counter is behind the database's fence, and the first refused write
//! repairs it.

use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{Fault, Findings, Run};
use crate::flash_sale::FlashSaleReport;

#[derive(Debug)]
pub(in crate::chaos) struct RedisSnapshotRollback;

impl Fault for RedisSnapshotRollback {
    fn lead_in<'a>(&'a mut self, run: &'a mut Run) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // The older snapshot: once some claims were decided, well before
            // the fault.
            let eighth = Duration::from_secs_f64(run.args.duration as f64 / 8.0);
            run.rig.idle(eighth).await;
            run.redis.snapshot().await?;
            run.rig.idle(eighth).await;
            Ok(())
        })
    }

    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            run.redis.roll_back().await?;
            Ok("the lock Redis killed and restarted from a snapshot taken earlier in the sale".to_owned())
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
            let repairs = run.rig.worker_counter("turnstile_fence_repairs_total").await;
            findings.check("token_counter_repaired", repairs >= 1.0);
            Ok(())
        })
    }
}
