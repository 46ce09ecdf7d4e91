//! `overload`: an offered rate far above capacity: 429s must appear and
//! nothing breaks.

use anyhow::Result;
use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{Fault, Findings, Run};
use crate::flash_sale::FlashSaleReport;

#[derive(Debug)]
pub(in crate::chaos) struct Overload;

impl Fault for Overload {
    fn env(&self) -> Vec<(&'static str, String)> {
        // No admission queue: the excess is refused at once, which is the
        // shedding this scenario checks (a queue of 1 024 absorbs 20 times
        // the normal rate on this machine, with no 429 at all).
        vec![("TURNSTILE_ADMISSION_QUEUE", "0".to_owned())]
    }

    fn load(&self, rate: f64, duration: u64) -> (f64, u64) {
        (rate * 20.0, duration)
    }

    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        let rate = run.rate;
        Box::pin(async move { Ok(format!("{rate:.0} claims/s offered, 20x the normal rate")) })
    }

    fn check<'a>(
        &'a self,
        _: &'a Run,
        _: &'a PgPool,
        sale: &'a FlashSaleReport,
        findings: &'a mut Findings,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Shed for load, not refused by a key's or a user's own rate.
            findings.check("shed_with_429", sale.throttled_429 > sale.rate_limited_429);
            Ok(())
        })
    }
}
