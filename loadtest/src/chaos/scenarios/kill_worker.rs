//! `kill-worker`: SIGKILL a worker mid-batch and start a new one.

use anyhow::Result;
use futures::future::BoxFuture;

use super::{Fault, Findings, Run};

#[derive(Debug)]
pub(in crate::chaos) struct KillWorker;

impl Fault for KillWorker {
    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let rig = &mut run.rig;
            rig.workers[0].signal("KILL")?;
            let killed = rig.workers.remove(0);
            let name = killed.name.clone();
            drop(killed);
            rig.add_worker().await?;
            Ok(format!("SIGKILL {name}, started a replacement"))
        })
    }
}
