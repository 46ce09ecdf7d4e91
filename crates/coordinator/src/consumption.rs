//! Pausing and leaving: what the consume loop does to the group member
//! when a dependency fails and when it stops.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use turnstile_bus::GroupContext;

/// The longest pause after a dependency failure.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The pause after `failures` failed batches in a row: 200 ms, doubling,
/// up to [`MAX_BACKOFF`].
pub fn backoff_after(failures: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(6))).min(MAX_BACKOFF)
}

/// Pauses the member's partitions for [`backoff_after`]`(failures)`, or
/// until `shutdown`: a dead database or lock store then costs idle
/// waiting rather than a hot redelivery loop.
pub async fn pause_after_failures(
    consumer: &StreamConsumer<GroupContext>,
    failures: u32,
    shutdown: &CancellationToken,
) {
    let assignment = consumer.assignment().ok();
    if let Some(assignment) = &assignment {
        let _ = consumer.pause(assignment);
    }
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = sleep(backoff_after(failures)) => {}
    }
    if let Some(assignment) = &assignment {
        let _ = consumer.resume(assignment);
    }
}

/// Commits the offsets stored so far and leaves the group.
pub fn leave(consumer: &StreamConsumer<GroupContext>) {
    info!("shutting down: committing stored offsets and leaving the group");
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored since the last commit is the usual reason.
        debug!(error = %e, "final offset commit");
    }
    consumer.unsubscribe();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_ceiling() {
        assert_eq!(backoff_after(1), Duration::from_millis(200));
        assert_eq!(backoff_after(2), Duration::from_millis(400));
        assert_eq!(backoff_after(5), Duration::from_millis(3_200));
        assert_eq!(backoff_after(6), MAX_BACKOFF);
        assert_eq!(backoff_after(u32::MAX), MAX_BACKOFF);
    }
}
