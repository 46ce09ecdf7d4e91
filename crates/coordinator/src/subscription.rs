//! Keeping the group's subscription across topics that vanish.
//!
//! A subscribed topic that is deleted, or lost with a broker restarted
//! without its data, is revoked from every member; librdkafka does not
//! always assign the topic again once it is back (a topic recreated under
//! the same name and partition count was still unassigned 90 s later), so
//! the member subscribes again:
//! - at once when its own topic keeper had to recreate a topic, or a
//!   broker answers again after all were lost (one that restarted without
//!   its data has lost the group, and a member that rejoined before the
//!   topics were back holds nothing);
//! - when it held partitions and has held none for [`LOST_AFTER_CHECKS`]
//!   topic checks in a row, whoever recreated the topic;
//! - when a partition it holds was recreated under it (deleted, or lost
//!   with the broker's data, and made again by another service), so that
//!   it goes on fetching the old one, silently, consuming nothing: the
//!   partition ends before it ended at an earlier check (a log only
//!   grows), or is known again after the broker said it did not know it,
//!   or grew since the last check while the member's position in it stood
//!   still past its end (a position is never past a log's end once a
//!   batch is written after it: the member is waiting at the old log's
//!   end for offsets the new log has not reached), or ran past the
//!   member's position while the member's position stood still and its
//!   pipeline waited on the consumer for the whole time between two
//!   checks (librdkafka fetches nothing more from a partition whose topic
//!   it saw vanish, when the new log goes on from the old log's end:
//!   tansu 0.6 can keep a deleted topic's offsets), or, held for the first
//!   time, the group's position in it (the old log's) lies far past its
//!   end. It unsubscribes first, so the partitions are revoked and fetched
//!   afresh from the new topic's start. A position is judged against a
//!   growing end, or only far past a first one, because tansu 0.6 reports
//!   a partition's end as the last batch's first offset plus one: a
//!   position a batch past that end is what every caught-up member of a
//!   partition written in batches has. A recreated log that outgrew the
//!   old one before a check goes unnoticed; its first messages are then
//!   handled by the sweeper.
//!
//! A member that is idle by design (more workers than partitions)
//! subscribes again at most once per loss, since it must hold partitions
//! again before it can lose them again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use turnstile_bus::GroupContext;

use crate::waiting::Waiting;

/// Topic checks in a row with no partition, after holding some, before the
/// worker subscribes again.
pub const LOST_AFTER_CHECKS: u32 = 3;

/// Subscribes again as the module says, checking every `every`, until
/// `stop` fires.
pub async fn keep_subscribed(
    mut recreations: watch::Receiver<u64>,
    mut returns: watch::Receiver<u64>,
    consumer: Arc<StreamConsumer<GroupContext>>,
    waiting: Waiting,
    topic: String,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut loss = Loss::default();
    let mut ends = Ends::default();
    let mut last_check = Instant::now();
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
        // The pipeline waited on the consumer all along since the last
        // check: whatever a partition held past its position was not
        // fetched.
        let idle = waiting.since().is_some_and(|since| since <= last_check);
        last_check = Instant::now();
        let assigned = consumer.assignment().map_or(0, |a| a.count());
        let lost = loss.observe(assigned);
        let behind_its_end = assigned > 0 && !recreated && !lost && {
            let consumer = Arc::clone(&consumer);
            let read = tokio::task::spawn_blocking(move || partition_ends(&consumer))
                .await
                .unwrap_or_default();
            debug!(?read, idle, "partition ends");
            ends.observe(read, idle)
        };
        if behind_its_end {
            consumer.unsubscribe();
        }
        if recreated || lost || behind_its_end {
            let reason = if behind_its_end {
                "a partition's log was recreated under the member"
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
            ends = Ends::default();
        }
    }
}

/// What the broker said of a partition's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Its high watermark.
    At(i64),
    /// It does not know the partition: its topic is gone.
    Unknown,
}

/// Each assigned partition's end, as the broker reports it. Blocks (one
/// ListOffsets round trip per partition): call it from a blocking task. A
/// partition the broker did not answer for otherwise is left out.
fn partition_ends(consumer: &StreamConsumer<GroupContext>) -> Vec<PartitionEnd> {
    use rdkafka::types::RDKafkaErrorCode;
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    positions
        .elements()
        .iter()
        .filter_map(|element| {
            let (topic, partition) = (element.topic(), element.partition());
            let position = match element.offset() {
                rdkafka::Offset::Offset(position) => Some(position),
                _ => None,
            };
            let end = match consumer.fetch_watermarks(topic, partition, Duration::from_secs(2)) {
                Ok((_, high)) => End::At(high),
                Err(e)
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::UnknownTopicOrPartition
                                | RDKafkaErrorCode::UnknownTopic
                                | RDKafkaErrorCode::UnknownPartition
                        )
                    ) =>
                {
                    End::Unknown
                }
                Err(e) => {
                    debug!(topic, partition, error = %e, "partition end not read");
                    return None;
                }
            };
            Some(PartitionEnd {
                key: (topic.to_owned(), partition),
                end,
                position,
            })
        })
        .collect()
}

/// One partition's end, and the member's position in it when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionEnd {
    key: (String, i32),
    end: End,
    position: Option<i64>,
}

/// Whether a position lies so far past a partition's end that the log
/// cannot be the one the position was taken in. tansu 0.6 reports an end
/// up to a producer batch short of the true one (the last batch's first
/// offset plus one), so a position only a little past the end is every
/// caught-up member of a partition written in batches; twice the end plus
/// a hundred leaves room for batches far larger than the API's.
fn far_past_the_end(position: i64, end: i64) -> bool {
    position > end.saturating_mul(2).saturating_add(100)
}

/// Whether a partition's log grew since the last check while the member's
/// position stood still past its end. In one log that cannot be: the
/// position was at most the log's true end, so a batch written since
/// starts at or after it and the end reported now is past it. So the
/// position was taken in another log, one that ended further on.
fn waiting_past_a_growing_end(last: Seen, now: Seen) -> bool {
    match (last.position, now.position) {
        (Some(before), Some(position)) => before == position && now.end > last.end && position > now.end,
        _ => false,
    }
}

/// Whether a partition's log held something past the member's position at
/// the last check and the position has not moved since, though the
/// member's pipeline waited on the consumer all the while (`idle`): the
/// consumer fetched nothing from a partition that had something to give.
fn starved(last: Seen, now: Seen, idle: bool) -> bool {
    match (last.position, now.position) {
        (Some(before), Some(position)) => idle && before == position && last.end > position,
        _ => false,
    }
}

/// One check's end of a partition and the member's position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    end: i64,
    position: Option<i64>,
}

/// The furthest end seen of each partition since the member last
/// subscribed, the last check's end and position, and the partitions the
/// broker said it did not know. Pure, so its rule is tested without a
/// broker.
#[derive(Debug, Default, Clone)]
struct Ends {
    furthest: std::collections::HashMap<(String, i32), i64>,
    last: std::collections::HashMap<(String, i32), Seen>,
    unknown: std::collections::HashSet<(String, i32)>,
}

impl Ends {
    /// Records one check's ends; returns whether some partition's log was
    /// recreated: it ends before it ended earlier, is known again after the
    /// broker did not know it, grew while the member waited past its end,
    /// held more than the member's position while the member waited on
    /// the consumer with nothing (`idle`, since the last check), or, held
    /// for the first time, the member's position (the group's, from the
    /// old log) lies far past its end.
    fn observe(&mut self, ends: Vec<PartitionEnd>, idle: bool) -> bool {
        let mut recreated = false;
        for PartitionEnd { key, end, position } in ends {
            match end {
                End::Unknown => {
                    self.unknown.insert(key.clone());
                    self.last.remove(&key);
                }
                End::At(end) => {
                    recreated |= self.unknown.remove(&key);
                    let now = Seen { end, position };
                    if let Some(last) = self.last.insert(key.clone(), now) {
                        recreated |= waiting_past_a_growing_end(last, now) || starved(last, now, idle);
                    }
                    match self.furthest.get_mut(&key) {
                        Some(furthest) => {
                            recreated |= end < *furthest;
                            *furthest = (*furthest).max(end);
                        }
                        None => {
                            recreated |= position.is_some_and(|p| far_past_the_end(p, end));
                            self.furthest.insert(key, end);
                        }
                    }
                }
            }
        }
        recreated
    }
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

    fn end(partition: i32, end: i64) -> PartitionEnd {
        at(partition, end, None)
    }

    fn at(partition: i32, end: i64, position: Option<i64>) -> PartitionEnd {
        PartitionEnd {
            key: ("t".to_owned(), partition),
            end: End::At(end),
            position,
        }
    }

    #[test]
    fn a_partition_first_held_far_past_its_end_was_recreated_and_one_batch_past_is_not() {
        // Caught up on a partition written in batches: tansu's end is a
        // batch short.
        assert!(!Ends::default().observe(vec![at(0, 11, Some(15)), at(1, 1, Some(5))], false));
        // The group's position in the old log, in a new one.
        assert!(Ends::default().observe(vec![at(0, 36, Some(600))], false));
        // Only the first check of a partition: later ones compare ends.
        let mut ends = Ends::default();
        assert!(!ends.observe(vec![at(0, 500, Some(510))], false));
        assert!(!ends.observe(vec![at(0, 500, Some(5_000))], false));
    }

    #[test]
    fn a_partition_known_again_after_the_broker_did_not_know_it_was_recreated() {
        let mut ends = Ends::default();
        assert!(!ends.observe(vec![end(0, 40)], false));
        assert!(!ends.observe(
            vec![PartitionEnd {
                key: ("t".to_owned(), 0),
                end: End::Unknown,
                position: None,
            }],
            false
        ));
        // Back, and already longer than before: recreated all the same.
        assert!(ends.observe(vec![end(0, 90)], false));
        assert!(!ends.observe(vec![end(0, 95)], false));
    }

    #[test]
    fn growing_or_steady_logs_are_no_recreation() {
        let mut ends = Ends::default();
        assert!(!ends.observe(vec![end(0, 0), end(1, 5)], false));
        assert!(!ends.observe(vec![end(0, 7), end(1, 5)], false));
        // A partition the broker did not answer for is no news.
        assert!(!ends.observe(vec![end(0, 9)], false));
        assert!(!ends.observe(vec![end(0, 9), end(1, 5)], false));
    }

    #[test]
    fn a_log_that_grows_while_the_member_waits_past_its_end_was_recreated() {
        // Held since before the deletion, caught up a batch past tansu's
        // end; the checks that would have seen the end fall short were
        // missed (the broker did not answer), and the new log is checked
        // when it is already as long as the old one was.
        let mut ends = Ends::default();
        assert!(!ends.observe(vec![at(2, 590, Some(600))], false));
        assert!(ends.observe(vec![at(2, 595, Some(600))], false));
        // A member that read the batch past the old end is not fooled.
        let mut ends = Ends::default();
        assert!(!ends.observe(vec![at(2, 590, Some(600))], false));
        assert!(!ends.observe(vec![at(2, 601, Some(640))], false));
        assert!(
            !ends.observe(vec![at(2, 601, Some(640))], false),
            "no new batch: no news"
        );
    }

    #[test]
    fn a_partition_with_more_to_give_to_an_idle_member_starves_it() {
        // tansu kept the deleted log's offsets; librdkafka fetches nothing
        // more from the partition it saw vanish.
        let mut ends = Ends::default();
        assert!(!ends.observe(vec![at(1, 586, Some(584))], false));
        assert!(
            !ends.observe(vec![at(1, 831, Some(584))], false),
            "busy: it may be behind"
        );
        assert!(ends.observe(vec![at(1, 1229, Some(584))], true));
        // Caught up a batch past tansu's end, nothing new: idle, not starved.
        let mut ends = Ends::default();
        assert!(!ends.observe(vec![at(1, 586, Some(590))], true));
        assert!(!ends.observe(vec![at(1, 586, Some(590))], true));
        // Something to give, and it was taken.
        let mut ends = Ends::default();
        assert!(!ends.observe(vec![at(1, 600, Some(584))], true));
        assert!(!ends.observe(vec![at(1, 700, Some(650))], true));
    }

    #[test]
    fn a_member_of_one_log_never_waits_past_a_growing_end() {
        use proptest::prelude::*;
        // Batches of any size appended to one log, the member catching up
        // or not between checks; tansu's end is the last batch's first
        // offset plus one.
        proptest!(|(steps in proptest::collection::vec((1i64..500, 0usize..3, any::<bool>()), 1..60))| {
            let (mut last_start, mut true_end, mut position) = (None::<i64>, 0i64, None::<i64>);
            let mut last: Option<Seen> = None;
            for (batch, written, caught_up) in steps {
                for _ in 0..written {
                    last_start = Some(true_end);
                    true_end += batch;
                }
                if caught_up {
                    position = Some(true_end);
                }
                let now = Seen { end: last_start.map_or(0, |start| start + 1), position };
                if let Some(last) = last {
                    prop_assert!(!waiting_past_a_growing_end(last, now), "{last:?} then {now:?}");
                }
                last = Some(now);
            }
        });
    }

    #[test]
    fn a_log_that_ends_before_it_ended_was_recreated() {
        let mut ends = Ends::default();
        assert!(!ends.observe(vec![end(0, 40), end(1, 12)], false));
        assert!(ends.observe(vec![end(0, 40), end(1, 3)], false));
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
