//! `publish-fails-after-commit`: claim-api drops the publish of 20 claims
//! after their commit (a failpoint): they were answered 202, and the
//! sweeper decides them.

use anyhow::Result;
use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{Fault, Findings, Run};
use crate::flash_sale::FlashSaleReport;

/// Claims whose publish is dropped.
const UNPUBLISHED: u32 = 20;

#[derive(Debug)]
pub(in crate::chaos) struct PublishFailsAfterCommit;

impl Fault for PublishFailsAfterCommit {
    fn env(&self) -> Vec<(&'static str, String)> {
        // After 50 publishes, claim-api drops the next 20 after their commit.
        vec![(
            "FAILPOINTS",
            format!("publish-after-commit=50*off->{UNPUBLISHED}*return"),
        )]
    }

    fn inject<'a>(&'a mut self, _: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async {
            Ok(format!(
                "claim-api dropped the publish of {UNPUBLISHED} claims after their commit (failpoint)"
            ))
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
            let unpublished = run.rig.api_counter("turnstile_claims_unpublished_total").await;
            findings.check(
                "unpublished_claims_accepted_and_decided",
                unpublished == f64::from(UNPUBLISHED),
            );
            Ok(())
        })
    }
}
