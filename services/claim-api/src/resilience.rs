//! Circuit breakers (the `failsafe` crate) around each dependency (the
//! load-shedding checks are admission's).

use std::{sync::Arc, time::Duration};

use failsafe::{StateMachine, backoff, failure_policy};
use prometheus::IntGauge;

use crate::problem::ApiError;

type Machine = StateMachine<failure_policy::ConsecutiveFailures<backoff::Exponential>, ()>;

/// One dependency's circuit: after 5 consecutive failures it opens for 1 s,
/// doubling up to 30 s while failures continue; calls are refused with 503
/// meanwhile instead of piling up on a dead dependency.
#[derive(Clone)]
pub struct Breaker {
    name: &'static str,
    machine: Arc<Machine>,
    open_gauge: IntGauge,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker for `name`, reporting its state to `open_gauge`.
    pub fn new(name: &'static str, open_gauge: IntGauge) -> Self {
        let policy = failure_policy::consecutive_failures(
            5,
            backoff::exponential(Duration::from_secs(1), Duration::from_secs(30)),
        );
        Self {
            name,
            machine: Arc::new(failsafe::Config::new().failure_policy(policy).build()),
            open_gauge,
        }
    }

    /// Refuses at once while the circuit is open.
    pub fn permit(&self) -> Result<(), ApiError> {
        if self.machine.is_call_permitted() {
            Ok(())
        } else {
            self.open_gauge.set(1);
            Err(ApiError::Unavailable {
                dependency: self.name,
                retry_after: 1,
            })
        }
    }

    /// Records the outcome of a call.
    pub fn record(&self, ok: bool) {
        if ok {
            self.machine.on_success();
            self.open_gauge.set(0);
        } else {
            self.machine.on_error();
        }
    }

    /// The 503 for a failed call to this dependency.
    pub fn unavailable(&self) -> ApiError {
        ApiError::Unavailable {
            dependency: self.name,
            retry_after: 1,
        }
    }
}
