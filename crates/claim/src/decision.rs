//! Deciding a batch of claims on one resource: pure, ordered, and the only
//! place that decides who gets what.

use std::collections::HashMap;

use crate::{ClaimId, ClaimStatus, RejectReason};

/// A resource as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceState {
    /// Units left.
    pub remaining: i64,
    /// Grants allowed per user (coupons), or none (SKUs).
    pub per_user_limit: Option<u32>,
}

/// One undecided claim, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingClaim {
    /// The claim.
    pub claim_id: ClaimId,
    /// Who claims.
    pub user_id: String,
    /// Units asked for.
    pub quantity: u32,
}

/// The outcome for one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Units taken for the user.
    Granted(ClaimId),
    /// Refused.
    Rejected(ClaimId, RejectReason),
}

impl Decision {
    /// The claim decided.
    pub fn claim_id(&self) -> ClaimId {
        match self {
            Self::Granted(id) | Self::Rejected(id, _) => *id,
        }
    }

    /// The claim's status after this decision, and the reason when rejected:
    /// what is stored and announced.
    pub fn outcome(&self) -> (ClaimStatus, Option<RejectReason>) {
        match self {
            Self::Granted(_) => (ClaimStatus::Granted, None),
            Self::Rejected(_, reason) => (ClaimStatus::Rejected, Some(*reason)),
        }
    }
}

/// What a batch decided and what is left afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// One decision per claim, in the claims' order.
    pub decisions: Vec<Decision>,
    /// Units left after the batch.
    pub remaining: i64,
}

/// Decides `claims` in order against `state`, where `granted_before` holds
/// how many grants each user already has on this resource.
///
/// First come, first served: a claim is granted if its user is under the
/// per-user limit and enough units are left; otherwise it is rejected, with
/// `per_user_limit` taking precedence over `sold_out`.
pub fn decide_batch(
    state: ResourceState,
    granted_before: &HashMap<String, u32>,
    claims: &[PendingClaim],
) -> BatchOutcome {
    let mut remaining = state.remaining.max(0);
    let mut granted_now: HashMap<&str, u32> = HashMap::new();
    let decisions = claims
        .iter()
        .map(|claim| {
            let held = granted_before.get(&claim.user_id).copied().unwrap_or(0)
                + granted_now.get(claim.user_id.as_str()).copied().unwrap_or(0);
            if state.per_user_limit.is_some_and(|limit| held >= limit) {
                return Decision::Rejected(claim.claim_id, RejectReason::PerUserLimit);
            }
            let wanted = i64::from(claim.quantity);
            if wanted > remaining {
                let reason = if remaining == 0 {
                    RejectReason::SoldOut
                } else {
                    RejectReason::InsufficientStock
                };
                return Decision::Rejected(claim.claim_id, reason);
            }
            remaining -= wanted;
            *granted_now.entry(claim.user_id.as_str()).or_default() += 1;
            Decision::Granted(claim.claim_id)
        })
        .collect();
    debug_assert!(remaining >= 0);
    BatchOutcome { decisions, remaining }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn claim(n: u128, user: &str, quantity: u32) -> PendingClaim {
        PendingClaim {
            claim_id: ClaimId::from_uuid(Uuid::from_u128(n)),
            user_id: user.to_owned(),
            quantity,
        }
    }

    #[test]
    fn first_come_first_served() {
        let state = ResourceState {
            remaining: 1,
            per_user_limit: Some(1),
        };
        let out = decide_batch(state, &HashMap::new(), &[claim(1, "a", 1), claim(2, "b", 1)]);
        assert_eq!(out.remaining, 0);
        assert!(matches!(out.decisions[0], Decision::Granted(_)));
        assert!(matches!(out.decisions[1], Decision::Rejected(_, RejectReason::SoldOut)));
    }

    #[test]
    fn per_user_limit_counts_earlier_grants_and_the_batch() {
        let state = ResourceState {
            remaining: 10,
            per_user_limit: Some(1),
        };
        let before = HashMap::from([("a".to_owned(), 1)]);
        let out = decide_batch(state, &before, &[claim(1, "a", 1), claim(2, "b", 1), claim(3, "b", 1)]);
        assert!(matches!(
            out.decisions[0],
            Decision::Rejected(_, RejectReason::PerUserLimit)
        ));
        assert!(matches!(out.decisions[1], Decision::Granted(_)));
        assert!(matches!(
            out.decisions[2],
            Decision::Rejected(_, RejectReason::PerUserLimit)
        ));
        assert_eq!(out.remaining, 9);
    }

    #[test]
    fn insufficient_is_not_sold_out() {
        let state = ResourceState {
            remaining: 2,
            per_user_limit: None,
        };
        let out = decide_batch(state, &HashMap::new(), &[claim(1, "a", 3), claim(2, "a", 2)]);
        assert!(matches!(
            out.decisions[0],
            Decision::Rejected(_, RejectReason::InsufficientStock)
        ));
        assert!(matches!(out.decisions[1], Decision::Granted(_)));
    }

    proptest! {
        /// Never grant beyond stock, never beyond the per-user limit, and
        /// account for every unit.
        #[test]
        fn never_oversells_or_overgrants(
            remaining in 0i64..50,
            limit in proptest::option::of(1u32..4),
            claims in proptest::collection::vec((0u8..8, 1u32..5), 0..120),
        ) {
            let claims: Vec<_> = claims
                .iter()
                .enumerate()
                .map(|(i, (user, q))| claim(i as u128, &format!("u{user}"), *q))
                .collect();
            let out = decide_batch(ResourceState { remaining, per_user_limit: limit }, &HashMap::new(), &claims);
            prop_assert_eq!(out.decisions.len(), claims.len());
            let mut granted_units = 0i64;
            let mut per_user: HashMap<&str, u32> = HashMap::new();
            for (decision, claim) in out.decisions.iter().zip(&claims) {
                prop_assert_eq!(decision.claim_id(), claim.claim_id);
                if let Decision::Granted(_) = decision {
                    granted_units += i64::from(claim.quantity);
                    *per_user.entry(&claim.user_id).or_default() += 1;
                }
            }
            prop_assert!(granted_units <= remaining);
            prop_assert_eq!(out.remaining, remaining - granted_units);
            if let Some(limit) = limit {
                prop_assert!(per_user.values().all(|n| *n <= limit));
            }
        }
    }
}
