//! Poison: events that fail the same non-transient way every time. A
//! resource's events that failed [`POISON_ATTEMPTS`] times go to the
//! dead-letter topic, so no input stalls its partition for long; transient
//! failures (a dependency down) are not counted, since they are not the
//! input's fault.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

/// How many times one resource's events may fail the same non-transient
/// way (a statement the database refuses) before they are dead-lettered.
/// With the consume loop's back-off between attempts this bounds the stall
/// at about 3 s.
pub const POISON_ATTEMPTS: u32 = 5;

/// Non-transient failures so far, by the partition and offset of the
/// failing resource's first event. Shared by the partitions a loop handles
/// at once.
#[derive(Debug, Default)]
pub struct PoisonCounter {
    attempts: Mutex<HashMap<(i32, i64), u32>>,
}

impl PoisonCounter {
    /// Counts a non-transient failure of the events starting at `offset`;
    /// returns whether they have now failed [`POISON_ATTEMPTS`] times (and
    /// forgets them: they go to the dead-letter topic).
    pub fn failed(&self, partition: i32, offset: i64) -> bool {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = attempts.entry((partition, offset)).or_default();
        *count += 1;
        if *count >= POISON_ATTEMPTS {
            attempts.remove(&(partition, offset));
            true
        } else {
            false
        }
    }

    /// The events starting at `offset` were handled: their failures no
    /// longer count.
    pub fn handled(&self, partition: i32, offset: i64) {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        if !attempts.is_empty() {
            attempts.remove(&(partition, offset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fifth_failure_of_the_same_events_is_poison() {
        let counter = PoisonCounter::default();
        assert!((1..POISON_ATTEMPTS).all(|_| !counter.failed(0, 10)));
        assert!(counter.failed(0, 10));
        assert!(!counter.failed(0, 10), "counted afresh once dead-lettered");
    }

    #[test]
    fn a_success_forgets_the_failures_and_places_are_apart() {
        let counter = PoisonCounter::default();
        for _ in 1..POISON_ATTEMPTS {
            counter.failed(0, 10);
            counter.failed(1, 10);
        }
        counter.handled(0, 10);
        assert!(!counter.failed(0, 10));
        assert!(counter.failed(1, 10), "another partition's count is its own");
    }
}
