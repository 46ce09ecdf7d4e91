//! `backend-switch`: the workers are replaced mid-sale by workers locking
//! in PostgreSQL, whose tokens start far below the Redis tokens the
//! database accepted.

use anyhow::Result;
use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{Fault, Findings, Run};
use crate::flash_sale::FlashSaleReport;

#[derive(Debug)]
pub(in crate::chaos) struct BackendSwitch;

impl Fault for BackendSwitch {
    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            run.rig
                .replace_workers(2, &[("TURNSTILE_LOCK_BACKEND", "postgres".to_owned())], &[])
                .await?;
            Ok("both workers (Redis locks) replaced by two locking in PostgreSQL".to_owned())
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
