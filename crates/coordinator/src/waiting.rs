//! Whether the consume loop is waiting on the consumer with nothing in
//! hand, and since when: what the [`crate::subscription`] keeper needs to
//! tell an idle member from one that fetches nothing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Since when something has been going on, or nothing: a moment one task
/// marks and another reads, without a lock. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Since {
    origin: Instant,
    /// Milliseconds since `origin` plus one at which it began; 0 while
    /// nothing goes on.
    mark: Arc<AtomicU64>,
}

impl Default for Since {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            mark: Arc::default(),
        }
    }
}

impl Since {
    /// It begins now.
    pub(crate) fn begin(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.mark.store(ms + 1, Ordering::Relaxed);
    }

    /// It ended.
    pub(crate) fn end(&self) {
        self.mark.store(0, Ordering::Relaxed);
    }

    /// When it began, if it goes on.
    pub(crate) fn get(&self) -> Option<Instant> {
        match self.mark.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.origin + Duration::from_millis(ms - 1)),
        }
    }
}

/// Since when the loop has been waiting on the consumer with nothing in
/// hand; nothing while it holds messages or works on them. Cheap to clone:
/// the loop marks it, the subscription keeper reads it.
#[derive(Debug, Clone, Default)]
pub struct Waiting(Since);

impl Waiting {
    /// The loop begins to wait for a first message.
    pub(crate) fn begin(&self) {
        self.0.begin();
    }

    /// The loop has a message in hand, or stopped waiting.
    pub(crate) fn end(&self) {
        self.0.end();
    }

    /// When the current wait began, if the loop is waiting.
    pub fn since(&self) -> Option<Instant> {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_seen_from_its_beginning_until_it_ends() {
        let waiting = Waiting::default();
        assert_eq!(waiting.since(), None);
        let before = Instant::now();
        waiting.clone().begin();
        let since = waiting.since().expect("waiting");
        assert!(since <= Instant::now() && since + Duration::from_millis(1) >= before);
        waiting.end();
        assert_eq!(waiting.since(), None);
    }
}
