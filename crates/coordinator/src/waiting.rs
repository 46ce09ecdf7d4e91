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

/// Since when the loop has been waiting on the consumer with nothing in
/// hand; nothing while it holds messages or works on them. Cheap to clone:
/// the loop marks it, the subscription keeper reads it.
#[derive(Debug, Clone)]
pub struct Waiting {
    origin: Instant,
    /// Milliseconds since `origin` plus one at which the wait began; 0
    /// while not waiting.
    since: Arc<AtomicU64>,
}

impl Default for Waiting {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            since: Arc::default(),
        }
    }
}

impl Waiting {
    /// The loop begins to wait for a first message.
    pub fn begin(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.since.store(ms + 1, Ordering::Relaxed);
    }

    /// The loop has a message in hand, or stopped waiting.
    pub fn end(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// When the current wait began, if the loop is waiting.
    pub fn since(&self) -> Option<Instant> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.origin + Duration::from_millis(ms - 1)),
        }
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
