//! `kill-redis`: SIGKILL the lock (and cache) Redis and restart it empty.

use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;
use tokio::time::sleep;

use super::{Fault, Findings, Run};

#[derive(Debug)]
pub(in crate::chaos) struct KillRedis;

impl Fault for KillRedis {
    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            run.redis.kill().await?;
            sleep(Duration::from_secs(1)).await;
            run.redis.restart().await?;
            Ok("SIGKILL the lock and cache Redis, restarted it empty 1 s later".to_owned())
        })
    }
}
