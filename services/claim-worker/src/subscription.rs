//! Keeping the group's subscription across topics that vanish.
//!
//! A subscribed topic that is deleted, or lost with a broker restarted
//! without its data, is revoked from every member; librdkafka does not
//! always assign the topic again once it is back (a topic recreated under
//! the same name and partition count was still unassigned 90 s later), so
//! the worker subscribes again:
//! - at once when its own topic keeper had to recreate a topic, or a
//!   broker answers again after all were lost (one that restarted without
//!   its data has lost the group, and a member that rejoined before the
//!   topics were back holds nothing);
//! - when it held partitions and has held none for [`LOST_AFTER_CHECKS`]
//!   topic checks in a row, whoever recreated the topic;
//! - when it still holds a partition whose position lies past the
//!   partition's end: the topic was recreated under it (deleted, or lost
//!   with the broker's data, and made again by another service) and the
//!   member goes on fetching the old one, silently, consuming nothing.
//!   It unsubscribes first, so the partitions are revoked and fetched
//!   afresh from the new topic's start. A member that is
//!   idle by design (more workers than partitions) subscribes again at
//!   most once per loss, since it must hold partitions again before it can
//!   lose them again.

use std::{sync::Arc, time::Duration};

use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use turnstile_bus::GroupContext;

/// Topic checks in a row with no partition, after holding some, before the
/// worker subscribes again.
pub(crate) const LOST_AFTER_CHECKS: u32 = 3;

/// Subscribes again as the module says, checking every `every`, until
/// `stop` fires.
pub(crate) async fn keep_subscribed(
    mut recreations: watch::Receiver<u64>,
    mut returns: watch::Receiver<u64>,
    consumer: Arc<StreamConsumer<GroupContext>>,
    topic: String,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut loss = Loss::default();
    loop {
        let recreated = tokio::select! {
            () = stop.cancelled() => return,
            changed = recreations.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
            changed = returns.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
            _ = ticks.tick() => false,
        };
        let assigned = consumer.assignment().map_or(0, |a| a.count());
        let lost = loss.observe(assigned);
        let behind_its_end = assigned > 0 && !recreated && !lost && {
            let consumer = Arc::clone(&consumer);
            tokio::task::spawn_blocking(move || position_past_end(&consumer))
                .await
                .unwrap_or(false)
        };
        if behind_its_end {
            consumer.unsubscribe();
        }
        if recreated || lost || behind_its_end {
            let reason = if behind_its_end {
                "position past the partition's end: the topic was recreated"
            } else if recreated {
                "topic recreated or broker back"
            } else {
                "every partition lost"
            };
            match consumer.subscribe(&[&topic]) {
                Ok(()) => info!(topic, reason, "subscribed again"),
                Err(e) => warn!(topic, reason, error = %e, "subscribing again failed"),
            }
            loss = Loss::default();
        }
    }
}

/// Whether some assigned partition's position is past its high watermark,
/// which only a topic recreated under the member explains. Blocks (one
/// ListOffsets round trip per partition): call it from a blocking task.
fn position_past_end(consumer: &StreamConsumer<GroupContext>) -> bool {
    let Ok(positions) = consumer.position() else {
        return false;
    };
    positions.elements().iter().any(|element| {
        let rdkafka::Offset::Offset(position) = element.offset() else {
            return false;
        };
        consumer
            .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(2))
            .is_ok_and(|(_, high)| position > high)
    })
}

/// Whether a member that held partitions has lost them all for long
/// enough. Pure, so its rule is tested without a broker.
#[derive(Debug, Default, Clone, Copy)]
struct Loss {
    held: bool,
    empty_checks: u32,
}

impl Loss {
    /// Records one check's assignment size; returns whether to subscribe
    /// again.
    fn observe(&mut self, assigned: usize) -> bool {
        if assigned > 0 {
            *self = Self {
                held: true,
                empty_checks: 0,
            };
            return false;
        }
        if self.held {
            self.empty_checks += 1;
        }
        self.held && self.empty_checks >= LOST_AFTER_CHECKS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_member_never_subscribes_again() {
        let mut loss = Loss::default();
        assert!((0..100).all(|_| !loss.observe(0)));
    }

    #[test]
    fn a_member_that_lost_everything_subscribes_again_after_the_checks() {
        let mut loss = Loss::default();
        assert!(!loss.observe(2));
        assert!(!loss.observe(0));
        assert!(!loss.observe(0));
        assert!(loss.observe(0), "the third empty check in a row");
    }

    #[test]
    fn partitions_back_in_between_reset_the_count() {
        let mut loss = Loss::default();
        assert!(!loss.observe(1));
        assert!(!loss.observe(0));
        assert!(!loss.observe(0));
        assert!(!loss.observe(1));
        assert!(!loss.observe(0));
        assert!(!loss.observe(0));
        assert!(loss.observe(0));
    }
}
