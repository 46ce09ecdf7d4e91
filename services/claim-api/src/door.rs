//! The door: claims answered before they are recorded.
//!
//! Once a coupon has sold out, every further claim on it is rejected, and a
//! user at a coupon's per-user limit has every further claim rejected; in a
//! flash sale that is most of the crowd. Each decision a worker announces
//! carries what was left and what its user held right after it
//! ([`turnstile_claim::DecisionFact`]); the API learns them from the
//! decisions it tails anyway (for `Prefer: wait`), in per-resource order, into
//! [`DoorKnowledge`], which answers only what the pipeline would answer at
//! any later moment, reason included (its module says why).
//!
//! A claim the door can answer is still looked up by its key, in the
//! accept batch's one read (`crate::accept`): a key already recorded (a
//! retry of a granted claim, or the key reused with another body) goes the
//! usual way, to be replayed or refused `422`. Only a key that is not
//! recorded is answered at the door: `200`, the same body as the pipeline's
//! rejection, and nothing written, published or decided, so a `GET` of its
//! id answers `404`. Every API replica learns the same from the feed, and a
//! restarted one learns each resource again from its next decision.
//!
//! Memory: per resource one number and the users at its limit, each of whom
//! holds a unit, so at most the stock on sale plus the resources.

use std::sync::{
    Arc, PoisonError, RwLock,
    atomic::{AtomicBool, Ordering},
};

use prometheus::{IntCounterVec, IntGaugeVec};
use turnstile_claim::{ClaimDecided, DoorKnowledge, RejectReason, ResourceKey};

/// What the API knows of finished resources, shared by its tasks. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Door {
    knowledge: Arc<RwLock<DoorKnowledge>>,
    /// Some claim could be answered: a resource sold out or a user at a
    /// limit was learned. Admission reads a refused claim only then.
    settled_some: Arc<AtomicBool>,
    answers: IntCounterVec,
    known: IntGaugeVec,
}

impl Door {
    /// Knows nothing yet; counts its answers in `answers` (label `reason`)
    /// and reports what it holds in `known` (label `what`).
    pub fn new(answers: IntCounterVec, known: IntGaugeVec) -> Self {
        for reason in [RejectReason::SoldOut, RejectReason::PerUserLimit] {
            answers.with_label_values(&[reason.as_str()]);
        }
        let door = Self {
            knowledge: Arc::new(RwLock::new(DoorKnowledge::new())),
            settled_some: Arc::new(AtomicBool::new(false)),
            answers,
            known,
        };
        door.observe();
        door
    }

    /// The instruments' names and help, for the registry: the answers
    /// counter and the knowledge gauge.
    pub fn instruments() -> Result<(IntCounterVec, IntGaugeVec), prometheus::Error> {
        Ok((
            IntCounterVec::new(
                prometheus::Opts::new(
                    "turnstile_door_answers_total",
                    "Claims answered at the door: rejected from what earlier decisions settled (sold out, or \
                     the user at the per-user limit), with nothing recorded.",
                ),
                &["reason"],
            )?,
            IntGaugeVec::new(
                prometheus::Opts::new(
                    "turnstile_door_known",
                    "What the door holds: resources with a decision learned, of which sold out, and users at \
                     a per-user limit (its memory is about one entry per resource and per such user).",
                ),
                &["what"],
            )?,
        ))
    }

    /// Sets the knowledge gauge (at each scrape: it walks the resources).
    pub fn observe(&self) {
        let size = self.knowledge.read().unwrap_or_else(PoisonError::into_inner).size();
        for (what, n) in [
            ("resources", size.resources),
            ("sold_out", size.sold_out),
            ("users_at_limit", size.users_at_limit),
        ] {
            self.known
                .with_label_values(&[what])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Takes in a decision from the feed.
    pub fn learn(&self, decided: &ClaimDecided) {
        if let Some(fact) = &decided.door {
            self.knowledge
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .learn(&decided.resource, fact);
            let at_limit = fact.per_user_limit.is_some_and(|limit| fact.user_holds >= limit);
            if fact.remaining == 0 || at_limit {
                self.settled_some.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Whether the door may answer some claim: it learned a resource sold
    /// out or a user at a limit (and stays so: reading a refused claim
    /// needlessly costs a parse, never a wrong answer).
    pub fn may_answer(&self) -> bool {
        self.settled_some.load(Ordering::Relaxed)
    }

    /// The rejection a new claim would get, when the door knows it.
    pub fn answer(&self, resource: &ResourceKey, user_id: &str, quantity: u32) -> Option<RejectReason> {
        self.knowledge
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .answer(resource, user_id, quantity)
    }

    /// Counts an answer given.
    pub fn answered(&self, reason: RejectReason) {
        self.answers.with_label_values(&[reason.as_str()]).inc();
    }
}
