//! The adaptive concurrency limit in front of claim admission.
//!
//! `tower-acc`'s AIMD algorithm keeps the number of claims being admitted at
//! once where admission still answers within its objective
//! (`TURNSTILE_ADMISSION_SLO_MS`, default [`DEFAULT_ADMISSION_SLO`]): it adds one
//! to the limit while admissions succeed in time under load, and cuts it by
//! 10% when one takes longer or a dependency fails. A claim that finds the
//! limit reached is shed at once (`load_shed`) and answered 429, before
//! anything is written or published.
//!
//! Not Vegas (the first version): Vegas reads any rise of latency above its
//! baseline as queueing and lowers the limit, but admission is
//! group-committed, so a busier API answers each claim a little later
//! *because* it records more claims per commit; Vegas would hold the limit
//! down exactly when batching pays. Measured on the 2-core machine (release
//! build, 3 000 claims/s offered for 10 s on one hot coupon): Vegas with one
//! commit per claim accepted 7 071 of 30 000 (707/s, 76% shed); AIMD with
//! group commit accepted 29 159 (2 916/s, 3% shed, mean batch 3.1). The two
//! changes landed together, so the split between them is not measured.

use std::time::Duration;
use tower::{BoxError, ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

use tower_acc::{Aimd, ConcurrencyLimitLayer};

use crate::{
    accept::{AcceptJob, AcceptQueue, Admitted},
    problem::ApiError,
};

/// Admission slower than this counts as congestion, unless configured.
///
/// 100 ms, not the first 250: at 5 000 claims/s offered on the 2-core
/// machine, three interleaved pairs of runs gave an end-to-end p99 of
/// 140/187/151 ms with 100 ms against 176/273/166 ms with 250 ms, and
/// 4 322/4 206/4 567 against 4 719/4 026/4 425 claims decided per second.
pub const DEFAULT_ADMISSION_SLO: Duration = Duration::from_millis(100);

/// The limit never falls below this: enough to fill a few group commits.
const MIN_LIMIT: usize = 8;

/// The limited admission service. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    service: BoxCloneSyncService<AcceptJob, Admitted, BoxError>,
}

impl Admission {
    /// Admits `job`, or says why not: a full limit is `429` with the cause
    /// `concurrency`; every other refusal is admission's own [`ApiError`].
    pub async fn admit(&self, job: AcceptJob) -> Result<Admitted, ApiError> {
        self.service
            .clone()
            .oneshot(job)
            .await
            .map_err(|e| match e.downcast::<ApiError>() {
                Ok(api) => *api,
                Err(other) if other.is::<tower::load_shed::error::Overloaded>() => ApiError::Overloaded {
                    cause: "concurrency",
                    retry_after: 1,
                },
                Err(other) => {
                    tracing::error!(error = %other, "admission failed");
                    ApiError::Internal
                }
            })
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").finish_non_exhaustive()
    }
}

/// Builds admission into `queue` with a limit that adapts between
/// [`MIN_LIMIT`] and `max_inflight`, backing off when an admission takes
/// longer than `slo`.
pub fn admission(max_inflight: usize, slo: Duration, queue: AcceptQueue) -> Admission {
    let max = max_inflight.max(MIN_LIMIT);
    let aimd = Aimd::builder()
        .min_limit(MIN_LIMIT)
        .initial_limit((max / 4).max(MIN_LIMIT))
        .max_limit(max)
        .backoff_ratio(0.9)
        .timeout(slo)
        .build();
    // Only dependency trouble counts as a failure; a client's bad request
    // says nothing about capacity.
    let failed =
        |result: &Result<Admitted, ApiError>| matches!(result, Err(ApiError::Unavailable { .. } | ApiError::Internal));
    Admission {
        service: BoxCloneSyncService::new(
            ServiceBuilder::new()
                .load_shed()
                .layer(ConcurrencyLimitLayer::with_classifier(aimd, failed))
                .service_fn(move |job| queue.clone().admit(job)),
        ),
    }
}
