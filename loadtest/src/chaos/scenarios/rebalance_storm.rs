//! `rebalance-storm`: start and stop workers every second while claims flow.

use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;

use super::{Fault, Findings, Run};

#[derive(Debug)]
pub(in crate::chaos) struct RebalanceStorm;

impl Fault for RebalanceStorm {
    fn inject<'a>(&'a mut self, run: &'a mut Run, _: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let rig = &mut run.rig;
            let mut changes = 0;
            while run.started.elapsed() < Duration::from_secs(run.args.duration) {
                rig.add_worker().await?;
                rig.idle(Duration::from_millis(700)).await;
                if rig.workers.len() > 1 {
                    rig.workers.remove(0).stop().await;
                }
                changes += 2;
            }
            Ok(format!("{changes} worker starts and stops while claims flowed"))
        })
    }
}
