//! `pg-crash-during-accept`: `pg_ctl stop -m immediate` while batches
//! commit, then start again (crash recovery). Every `202` is decided, no
//! refused key is taken, no `500`; `504 outcome-unknown` answers are
//! allowed and counted (such a key may or may not have a claim).

use anyhow::Result;
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::PgPool;

use super::{Fault, Findings, Run};
use crate::flash_sale::FlashSaleReport;

#[derive(Debug)]
pub(in crate::chaos) struct PgCrashDuringAccept;

impl Fault for PgCrashDuringAccept {
    fn inject<'a>(&'a mut self, run: &'a mut Run, findings: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let took = run.postgres.crash_and_restart().await?;
            findings.measure("postgres_down_s", json!(took.as_secs_f64()));
            Ok(format!(
                "pg_ctl stop -m immediate while batches were committing, started again ({:.1} s down)",
                took.as_secs_f64()
            ))
        })
    }

    fn check<'a>(
        &'a self,
        _: &'a Run,
        _: &'a PgPool,
        sale: &'a FlashSaleReport,
        findings: &'a mut Findings,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let status = |code: &str| sale.answers_by_status.get(code).copied().unwrap_or(0);
            findings.measure("outcome_unknown_504", json!(status("504")));
            findings.measure("unavailable_503", json!(status("503")));
            findings.measure("internal_500", json!(status("500")));
            // A 500 may hide a commit: the contract allows 503 (nothing
            // recorded) and 504 (outcome unknown) only.
            findings.check("no_500", status("500") == 0);
            Ok(())
        })
    }
}
