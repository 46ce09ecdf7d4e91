//! `restart-postgres`: stop PostgreSQL (fast shutdown) and start it again.

use anyhow::Result;
use futures::future::BoxFuture;

use super::{Fault, Findings, Run};

#[derive(Debug)]
pub(in crate::chaos) struct RestartPostgres;

impl Fault for RestartPostgres {
    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let took = run.postgres.restart().await?;
            Ok(format!(
                "PostgreSQL fast shutdown and start ({:.1} s down)",
                took.as_secs_f64()
            ))
        })
    }
}
