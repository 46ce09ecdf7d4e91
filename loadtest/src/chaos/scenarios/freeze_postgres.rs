//! `freeze-postgres`: SIGSTOP every PostgreSQL process for 8 s, then
//! SIGCONT: the API answers 503 or waits, nothing accepted is lost.

use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;

use super::{Fault, Findings, Run};

#[derive(Debug)]
pub(in crate::chaos) struct FreezePostgres;

impl Fault for FreezePostgres {
    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            run.postgres.freeze(Duration::from_secs(8)).await?;
            Ok("SIGSTOP every PostgreSQL process for 8 s, then SIGCONT".to_owned())
        })
    }
}
