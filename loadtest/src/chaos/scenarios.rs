//! The faults, one module each, behind one trait: what a scenario adds to
//! the services' environment and to the sale, the fault it injects while
//! the sale runs, and what it checks once the sale is over.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgPool;
use turnstile_claim::ResourceKey;
use turnstile_private_stores::{PrivateBroker, PrivatePostgres, PrivateRedis};

use super::{ChaosArgs, rig::Rig};
use crate::{credentials::Credentials, flash_sale::FlashSaleReport};

pub(super) mod backend_switch;
pub(super) mod broker_down_60s;
pub(super) mod broker_restart_empty;
mod broker_return;
pub(super) mod decided_topic_unwritable;
pub(super) mod dup_keys;
pub(super) mod freeze_postgres;
pub(super) mod kill_redis;
pub(super) mod kill_worker;
pub(super) mod overload;
pub(super) mod pause_worker;
pub(super) mod pg_crash_during_accept;
pub(super) mod poison_decodable;
pub(super) mod publish_fails_after_commit;
pub(super) mod rebalance_storm;
pub(super) mod redis_snapshot_rollback;
pub(super) mod restart_postgres;
pub(super) mod topic_deleted;

/// One scenario's fault. A fresh one is made for each run
/// ([`super::Scenario::fault`]), so it may keep what its injection saw
/// (when the broker went down, which worker it paused) for its checks.
pub(super) trait Fault: Send + Sync {
    /// Environment added to every service's (a failpoint, a setting).
    fn env(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Environment added to the workers' only (a worker's failpoint).
    fn worker_env(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Whether it kills, restarts or edits the broker: then it runs on a
    /// broker of its own, never the shared one.
    fn needs_private_broker(&self) -> bool {
        false
    }

    /// The sale's offered rate and seconds, from `--rate` and `--duration`.
    fn load(&self, rate: f64, duration: u64) -> (f64, u64) {
        (rate, duration)
    }

    /// Waits, while the sale runs, for the moment the fault lands: by
    /// default a quarter of the way in.
    fn lead_in<'a>(&'a mut self, run: &'a mut Run) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            run.rig
                .idle(Duration::from_secs_f64(run.args.duration as f64 / 4.0))
                .await;
            Ok(())
        })
    }

    /// Injects the fault; returns what was done, in words.
    fn inject<'a>(&'a mut self, run: &'a mut Run, findings: &'a mut Findings) -> BoxFuture<'a, Result<String>>;

    /// Checks what the scenario promises besides the sale's invariants,
    /// once the sale is over (`pool`: the run's database).
    fn check<'a>(
        &'a self,
        run: &'a Run,
        pool: &'a PgPool,
        sale: &'a FlashSaleReport,
        findings: &'a mut Findings,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = (run, pool, sale, findings);
        Box::pin(async { Ok(()) })
    }
}

/// What a fault acts on: the run's private stores, its services and the
/// names of its sale and topics.
pub(super) struct Run {
    pub args: ChaosArgs,
    /// Names the run's topics, consumer group, logs and sale.
    pub run_id: String,
    pub rig: Rig,
    pub postgres: PrivatePostgres,
    pub redis: PrivateRedis,
    /// The run's own broker, for the scenarios that kill or edit it.
    pub broker: Option<PrivateBroker>,
    /// The broker the services use: the shared one, or `broker`.
    pub brokers: String,
    pub requested_topic: String,
    pub decided_topic: String,
    pub lock_ttl: Duration,
    pub session: Duration,
    pub credentials: Credentials,
    /// The sale's one coupon.
    pub hot_coupon: ResourceKey,
    /// The offered claims per second.
    pub rate: f64,
    /// When the sale started.
    pub started: Instant,
}

/// What a scenario adds to the report: checks, each `true` when it held,
/// and the numbers behind them.
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub checks: serde_json::Map<String, Value>,
    pub measured: serde_json::Map<String, Value>,
}

impl Findings {
    pub fn check(&mut self, name: &str, held: bool) {
        self.checks.insert(name.to_owned(), Value::Bool(held));
    }

    pub fn measure(&mut self, name: &str, value: Value) {
        self.measured.insert(name.to_owned(), value);
    }
}
