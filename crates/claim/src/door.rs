//! What can be answered at the door: the rejections a claim would get from
//! the pipeline, known before it is recorded.
//!
//! After a resource sells out, every further claim on it is rejected, and
//! a user who holds as many units as a coupon allows has every further
//! claim on it rejected too. Both follow from the resource's decisions, which
//! the workers announce in per-resource order (`ClaimDecided`, one
//! partition per resource). [`DoorKnowledge`] keeps, per resource, the
//! least `remaining` it has been told of and the users it has been told
//! reached the per-user limit. [`DoorKnowledge::answer`] rejects a new
//! claim only with the decision, reason included, that
//! [`crate::decide_batch`] would give it at any later moment, however far
//! the knowledge trails the decisions:
//!
//! - **Nothing restocks or cancels**, so `remaining` only falls and a user's
//!   holding only grows. A user known to be at the limit stays there, and
//!   the pipeline checks the limit first: `per_user_limit`.
//! - **Once nothing is left, nothing more is granted.** Per-resource order
//!   makes the knowledge a prefix of the resource's decisions, so a fact
//!   saying "0 left" comes after every grant there will ever be, and each
//!   fact carries its user's holding after that decision: every user at
//!   the limit is known. Any other user's claim is `sold_out`.
//! - **Nothing else is answered.** With units left, a claim for more than
//!   are known to be left might meet `sold_out` or `insufficient_stock`,
//!   or its user's limit, depending on what is decided before it: the
//!   pipeline says which.
//!
//! Facts that arrive late or twice (an owed announcement sent again) only
//! ever repeat what is known: merging takes the least `remaining` and any
//! user who reached the limit.
//! - **Stock that is ever added back** must invalidate what is known: a
//!   fact carries the resource's stock epoch, and a fact of a newer epoch
//!   replaces the resource's knowledge (facts of an older one are ignored).
//!
//! What it holds: per resource, one number and the users at the limit.
//! Each such user holds at least one unit, so a resource's set is bounded
//! by its stock, and the whole by the stock on sale plus the resources.
//!
//! The door never answers a claim whose idempotency key is already
//! recorded: a repeat of a granted claim must get its grant. That check
//! needs the database and is the caller's.

use std::collections::{HashMap, HashSet};

use crate::{BatchOutcome, Decision, PendingClaim, RejectReason, ResourceKey, ResourceState};

/// One announced decision on a resource, as far as the door needs it
/// (`ClaimDecided` carries it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionFact {
    /// The resource's stock epoch: 0 until stock can be added back.
    pub stock_epoch: u64,
    /// Units left right after this decision.
    pub remaining: i64,
    /// The claim's user.
    pub user_id: String,
    /// Units that user holds on the resource right after this decision.
    pub user_holds: u32,
    /// Grants allowed per user (coupons), or none (SKUs).
    pub per_user_limit: Option<u32>,
}

/// What is known of one resource.
#[derive(Debug, Clone, Default)]
struct Known {
    stock_epoch: u64,
    remaining: i64,
    per_user_limit: Option<u32>,
    at_limit: HashSet<String>,
}

impl Known {
    /// What one fact of a new epoch says.
    fn first(fact: &DecisionFact) -> Self {
        let mut known = Self {
            stock_epoch: fact.stock_epoch,
            remaining: fact.remaining.max(0),
            per_user_limit: fact.per_user_limit,
            at_limit: HashSet::new(),
        };
        known.merge(fact);
        known
    }

    /// Adds a fact of the same epoch.
    fn merge(&mut self, fact: &DecisionFact) {
        self.remaining = self.remaining.min(fact.remaining).max(0);
        self.per_user_limit = fact.per_user_limit;
        if fact.per_user_limit.is_some_and(|limit| fact.user_holds >= limit) && !self.at_limit.contains(&fact.user_id) {
            self.at_limit.insert(fact.user_id.clone());
        }
    }
}

/// How much [`DoorKnowledge`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DoorSize {
    /// Resources with a decision learned.
    pub resources: usize,
    /// Of those, the ones with nothing left.
    pub sold_out: usize,
    /// Users at a per-user limit, over every resource.
    pub users_at_limit: usize,
}

/// Per resource, what no later decision can change. See the module's
/// documentation.
#[derive(Debug, Clone, Default)]
pub struct DoorKnowledge {
    resources: HashMap<ResourceKey, Known>,
}

impl DoorKnowledge {
    /// Knows nothing: every claim goes to the pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in one announced decision on `resource`.
    pub fn learn(&mut self, resource: &ResourceKey, fact: &DecisionFact) {
        match self.resources.get_mut(resource) {
            Some(known) if known.stock_epoch > fact.stock_epoch => {}
            Some(known) if known.stock_epoch == fact.stock_epoch => known.merge(fact),
            Some(known) => *known = Known::first(fact),
            None => {
                self.resources.insert(resource.clone(), Known::first(fact));
            }
        }
    }

    /// The rejection a new claim by `user_id` for `quantity` units would
    /// get from the pipeline, when what is known already decides it; `None`
    /// when only the pipeline can tell.
    pub fn answer(&self, resource: &ResourceKey, user_id: &str, quantity: u32) -> Option<RejectReason> {
        let known = self.resources.get(resource)?;
        if known.per_user_limit.is_some() && known.at_limit.contains(user_id) {
            return Some(RejectReason::PerUserLimit);
        }
        (known.remaining == 0 && quantity > 0).then_some(RejectReason::SoldOut)
    }

    /// What is known, and so what it costs in memory. Walks every
    /// resource: for a metrics scrape, not for each claim.
    pub fn size(&self) -> DoorSize {
        DoorSize {
            resources: self.resources.len(),
            sold_out: self.resources.values().filter(|known| known.remaining == 0).count(),
            users_at_limit: self.resources.values().map(|known| known.at_limit.len()).sum(),
        }
    }
}

/// The facts a batch's decisions give the door, one per claim in the
/// batch's order: `claims` decided by [`crate::decide_batch`] from `state`
/// and `granted_before` into `outcome`. The decider announces them with
/// its decisions.
pub fn decision_facts(
    stock_epoch: u64,
    state: ResourceState,
    granted_before: &HashMap<String, u32>,
    claims: &[PendingClaim],
    outcome: &BatchOutcome,
) -> Vec<DecisionFact> {
    let mut remaining = state.remaining.max(0);
    let mut granted_now: HashMap<&str, u32> = HashMap::new();
    claims
        .iter()
        .zip(&outcome.decisions)
        .map(|(claim, decision)| {
            if let Decision::Granted(_) = decision {
                remaining -= i64::from(claim.quantity);
                *granted_now.entry(claim.user_id.as_str()).or_default() += 1;
            }
            let user_holds = granted_before.get(&claim.user_id).copied().unwrap_or(0)
                + granted_now.get(claim.user_id.as_str()).copied().unwrap_or(0);
            DecisionFact {
                stock_epoch,
                remaining,
                user_id: claim.user_id.clone(),
                user_holds,
                per_user_limit: state.per_user_limit,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClaimId, TenantId, decide_batch};
    use proptest::prelude::*;
    use uuid::Uuid;

    fn coupon() -> ResourceKey {
        ResourceKey::coupon(
            TenantId::parse("t").unwrap(),
            crate::ResourceId::parse("coupon", "C").unwrap(),
        )
    }

    fn fact(remaining: i64, user: &str, holds: u32, limit: Option<u32>) -> DecisionFact {
        DecisionFact {
            stock_epoch: 0,
            remaining,
            user_id: user.to_owned(),
            user_holds: holds,
            per_user_limit: limit,
        }
    }

    #[test]
    fn an_unknown_resource_goes_to_the_pipeline() {
        assert_eq!(DoorKnowledge::new().answer(&coupon(), "a", 1), None);
    }

    #[test]
    fn sold_out_and_the_user_limit_are_answered_and_the_limit_comes_first() {
        let mut door = DoorKnowledge::new();
        door.learn(&coupon(), &fact(1, "a", 1, Some(1)));
        assert_eq!(door.answer(&coupon(), "a", 1), Some(RejectReason::PerUserLimit));
        assert_eq!(door.answer(&coupon(), "b", 1), None);
        // Units left: the pipeline decides, whatever is asked.
        assert_eq!(door.answer(&coupon(), "b", 2), None);
        door.learn(&coupon(), &fact(0, "b", 1, Some(1)));
        assert_eq!(door.answer(&coupon(), "c", 1), Some(RejectReason::SoldOut));
        assert_eq!(door.answer(&coupon(), "a", 1), Some(RejectReason::PerUserLimit));
        assert_eq!(
            door.size(),
            DoorSize {
                resources: 1,
                sold_out: 1,
                users_at_limit: 2
            }
        );
    }

    #[test]
    fn a_late_or_repeated_fact_never_raises_what_is_left() {
        let mut door = DoorKnowledge::new();
        door.learn(&coupon(), &fact(0, "b", 1, Some(1)));
        door.learn(&coupon(), &fact(3, "a", 1, Some(1)));
        assert_eq!(door.answer(&coupon(), "c", 1), Some(RejectReason::SoldOut));
    }

    #[test]
    fn a_newer_stock_epoch_replaces_what_was_known_and_an_older_one_is_ignored() {
        let mut door = DoorKnowledge::new();
        door.learn(&coupon(), &fact(0, "a", 1, Some(1)));
        let restocked = DecisionFact {
            stock_epoch: 1,
            ..fact(5, "b", 1, Some(2))
        };
        door.learn(&coupon(), &restocked);
        assert_eq!(door.answer(&coupon(), "a", 1), None);
        door.learn(&coupon(), &fact(0, "a", 1, Some(1)));
        assert_eq!(door.answer(&coupon(), "c", 1), None);
    }

    #[test]
    fn facts_follow_the_batch_claim_by_claim() {
        let state = ResourceState {
            remaining: 3,
            per_user_limit: Some(2),
        };
        let claims: Vec<PendingClaim> = [("a", 1), ("b", 2), ("a", 1), ("c", 1)]
            .iter()
            .enumerate()
            .map(|(n, (user, quantity))| PendingClaim {
                claim_id: ClaimId::from_uuid(Uuid::from_u128(n as u128)),
                user_id: (*user).to_owned(),
                quantity: *quantity,
            })
            .collect();
        let before = HashMap::from([("a".to_owned(), 1)]);
        let out = decide_batch(state, &before, &claims);
        let facts = decision_facts(7, state, &before, &claims, &out);
        let seen: Vec<(&str, i64, u32)> = facts
            .iter()
            .map(|f| (f.user_id.as_str(), f.remaining, f.user_holds))
            .collect();
        // a: granted (holds 2, at the limit); b: granted 2 of the 2 left;
        // a again: at the limit; c: sold out.
        assert_eq!(seen, [("a", 2, 2), ("b", 0, 1), ("a", 0, 2), ("c", 0, 0)]);
        assert!(facts.iter().all(|f| f.stock_epoch == 7 && f.per_user_limit == Some(2)));
    }

    /// A resource's pipeline: batches decided in order by `decide_batch`,
    /// each decision announced as a fact with what was left and what its
    /// user held right after it.
    struct Pipeline {
        state: ResourceState,
        holds: HashMap<String, u32>,
        next_id: u128,
    }

    impl Pipeline {
        fn decide(&mut self, batch: &[(u8, u32)]) -> Vec<DecisionFact> {
            let claims: Vec<PendingClaim> = batch
                .iter()
                .map(|(user, quantity)| {
                    self.next_id += 1;
                    PendingClaim {
                        claim_id: ClaimId::from_uuid(Uuid::from_u128(self.next_id)),
                        user_id: format!("u{user}"),
                        quantity: *quantity,
                    }
                })
                .collect();
            let out = decide_batch(self.state, &self.holds, &claims);
            let facts = decision_facts(0, self.state, &self.holds, &claims, &out);
            for (claim, decision) in claims.iter().zip(&out.decisions) {
                if let Decision::Granted(_) = decision {
                    *self.holds.entry(claim.user_id.clone()).or_default() += 1;
                }
            }
            assert_last_fact_leaves_the_batch_remaining(&facts, out.remaining);
            self.state.remaining = out.remaining;
            facts
        }

        /// What the pipeline would decide for one more claim now.
        fn would_decide(&self, user: u8, quantity: u32) -> Decision {
            let probe = PendingClaim {
                claim_id: ClaimId::from_uuid(Uuid::from_u128(u128::MAX)),
                user_id: format!("u{user}"),
                quantity,
            };
            decide_batch(self.state, &self.holds, &[probe]).decisions[0]
        }
    }

    /// The last fact's `remaining` is the batch's.
    fn assert_last_fact_leaves_the_batch_remaining(facts: &[DecisionFact], remaining: i64) {
        if let Some(last) = facts.last() {
            assert_eq!(last.remaining, remaining);
        }
    }

    proptest! {
        /// Whatever the stock, limit, claims and batching, and however far
        /// the door's knowledge trails the decisions (it learns a prefix of
        /// them, some more than once), every door answer is the pipeline's
        /// own decision for that claim, reason included, at that moment and
        /// at any later one.
        #[test]
        fn the_door_answers_only_what_the_pipeline_would_decide(
            stock in 0i64..12,
            limit in prop::option::of(1u32..3),
            batches in prop::collection::vec(prop::collection::vec((0u8..6, 1u32..4), 0..6), 0..8),
            lag in 0usize..6,
            repeat in any::<bool>(),
            probes in prop::collection::vec((0u8..6, 1u32..4), 1..6),
        ) {
            let mut pipeline = Pipeline { state: ResourceState { remaining: stock, per_user_limit: limit }, holds: HashMap::new(), next_id: 0 };
            let mut announced = Vec::new();
            let mut door = DoorKnowledge::new();
            let mut answered: Vec<(u8, u32, RejectReason)> = Vec::new();
            for batch in &batches {
                announced.extend(pipeline.decide(batch));
                // The door has learned all but the last `lag` facts.
                let known = announced.len().saturating_sub(lag);
                door = DoorKnowledge::new();
                for fact in &announced[..known] {
                    door.learn(&coupon(), fact);
                    if repeat {
                        door.learn(&coupon(), fact);
                    }
                }
                if repeat && known > 0 {
                    door.learn(&coupon(), &announced[0]);
                }
                for (user, quantity) in &probes {
                    if let Some(reason) = door.answer(&coupon(), &format!("u{user}"), *quantity) {
                        prop_assert_eq!(
                            pipeline.would_decide(*user, *quantity),
                            Decision::Rejected(ClaimId::from_uuid(Uuid::from_u128(u128::MAX)), reason)
                        );
                        answered.push((*user, *quantity, reason));
                    }
                }
                // An answer once given stays the pipeline's answer.
                for (user, quantity, reason) in &answered {
                    prop_assert_eq!(
                        pipeline.would_decide(*user, *quantity),
                        Decision::Rejected(ClaimId::from_uuid(Uuid::from_u128(u128::MAX)), *reason)
                    );
                }
            }
            // Up to date, the door knows a sold-out resource.
            if !announced.is_empty() && pipeline.state.remaining == 0 && lag == 0 {
                prop_assert!(door.answer(&coupon(), "u-new", 1).is_some());
            }
        }
    }
}
