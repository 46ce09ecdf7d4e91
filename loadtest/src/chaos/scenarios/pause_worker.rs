//! `pause-worker`: SIGSTOP a worker past its lock ttl and its group
//! session, then SIGCONT: it wakes up a zombie and the fence refuses it.

use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;
use tokio::time::sleep;

use super::{Fault, Findings, Run};

#[derive(Debug, Default)]
pub(in crate::chaos) struct PauseWorker {
    /// The worker that announced a held lease: the one to pause.
    stalled: Option<usize>,
}

impl Fault for PauseWorker {
    fn env(&self) -> Vec<(&'static str, String)> {
        // On its 21st resource batch, the worker on the hot partition holds
        // its lease 3 s between taking the token and writing: the window the
        // stop must land in to make a zombie.
        vec![(
            "FAILPOINTS",
            "hold-lease-before-write=20*off->1*return(3000)".to_owned(),
        )]
    }

    /// The pause lands inside a held lease (announced in the worker's log).
    fn lead_in<'a>(&'a mut self, run: &'a mut Run) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.stalled = Some(
                run.rig
                    .wait_for_log("failpoint: holding lease before write", Duration::from_secs(30))
                    .await?,
            );
            Ok(())
        })
    }

    fn inject<'a>(&'a mut self, run: &'a mut Run, findings: &'a mut Findings) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let rig = &mut run.rig;
            let zombie = self.stalled.unwrap_or(0);
            // Past the lease ttl and twice the group session: the other
            // worker owns the partition and has written under a newer
            // token before the zombie wakes up and tries its write.
            let pause = run.session * 2;
            rig.workers[zombie].signal("STOP")?;
            sleep(pause).await;
            rig.workers[zombie].signal("CONT")?;
            // Its write is refused once it runs: wait for that, not a time.
            let refused = rig
                .wait_for_log_of(
                    zombie,
                    "database refused a stale fencing token",
                    Duration::from_secs(30),
                )
                .await
                .is_ok();
            findings.check("zombie_write_refused_by_fence", refused);
            Ok(format!(
                "SIGSTOP {} while it held a lease, for {:.0} s (lock ttl {:.0} s, group session {:.0} s), then SIGCONT",
                rig.workers[zombie].name,
                pause.as_secs_f64(),
                run.lock_ttl.as_secs_f64(),
                run.session.as_secs_f64()
            ))
        })
    }
}
