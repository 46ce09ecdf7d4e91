//! The adaptive concurrency limit in front of claim admission.
//!
//! `tower-acc`'s Vegas algorithm keeps the number of claims being admitted
//! at once near what Postgres and Kafka can take without queueing: it watches
//! admission latency, raises the limit while latency stays at its baseline and
//! lowers it when queueing shows up or dependencies fail. A claim that finds
//! the limit reached is shed at once (`load_shed`) and answered 429, before
//! anything is written or published.

use tower::{BoxError, ServiceBuilder, util::BoxCloneSyncService};
use tower_acc::{ConcurrencyLimitLayer, Vegas};

use crate::{
    accept::AcceptQueue,
    problem::ApiError,
    routes::claims::{AcceptJob, Admitted},
};

/// The limited admission service.
pub type Admission = BoxCloneSyncService<AcceptJob, Admitted, BoxError>;

/// Builds admission into `queue` with a limit that adapts between 1 and
/// `max_inflight`.
pub fn admission(max_inflight: usize, queue: AcceptQueue) -> Admission {
    let vegas = Vegas::builder()
        .initial_limit((max_inflight / 4).max(1))
        .max_limit(max_inflight)
        .build();
    // Only dependency trouble counts as a failure; a client's bad request
    // says nothing about capacity.
    let failed =
        |result: &Result<Admitted, ApiError>| matches!(result, Err(ApiError::Unavailable { .. } | ApiError::Internal));
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .load_shed()
            .layer(ConcurrencyLimitLayer::with_classifier(vegas, failed))
            .service_fn(move |job| queue.clone().admit(job)),
    )
}
