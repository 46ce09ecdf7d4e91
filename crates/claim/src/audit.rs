//! What must always hold of the claims kept, and the worker's audit of it,
//! with no I/O.
//!
//! Three invariants hold at every committed state, for every resource:
//! nothing is granted beyond stock, no user holds more grants than the
//! resource's per-user limit, and `remaining` is the stock less what was
//! granted. A [`ResourceLedger`] is one resource's recount, read from the
//! claims themselves (not from `remaining`), so a bug in the decision or in
//! the stock arithmetic shows; [`InvariantReport`] sums what a set of
//! ledgers violates. The store has one query that reads ledgers; the
//! worker's audit, the tests and the load generator all judge them here.
//!
//! The worker audits continuously. Recounting every granted claim of every resource on every
//! pass is a full scan of the claims table; on a table of millions of claims
//! that is seconds of Postgres CPU every pass, stolen from the sale it
//! watches. A resource's count can only change when claims on it are
//! decided, so most passes recount just the resources decided since the
//! previous pass began, less an overlap for decisions still committing then
//! ([`AUDIT_OVERLAP`]). Every [`FULL_RECOUNT_EVERY`]th pass, and the first,
//! recounts everything, which bounds what an overlap could ever miss.
//!
//! [`OversoldLedger`] keeps the last count of every oversold resource; its
//! [`total`](OversoldLedger::total) is the gauge `turnstile_oversold_units`.

use std::{collections::HashMap, time::Duration};

use time::OffsetDateTime;

use crate::ResourceKey;

/// How far before the previous pass's start an incremental pass looks: a
/// decision's timestamp is its transaction's start, and a transaction that
/// began before the previous pass may have committed after it.
pub const AUDIT_OVERLAP: Duration = Duration::from_secs(60);

/// Every this many passes, one recounts every resource.
pub const FULL_RECOUNT_EVERY: u32 = 20;

/// Which resources a recount covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditScope {
    /// Every resource.
    Everything,
    /// The resources decided at or after this instant (Postgres' clock).
    DecidedSince(OffsetDateTime),
    /// These resources.
    Resources(Vec<ResourceKey>),
}

/// One resource as its claims add up, recounted from the claims table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceLedger {
    pub tenant_id: String,
    pub kind: String,
    pub id: String,
    /// The stock the resource was created with.
    pub total: i64,
    /// The stock the resource row says is left.
    pub remaining: i64,
    /// Units in granted claims.
    pub granted_units: i64,
    /// Granted claims.
    pub granted_claims: i64,
    /// Users holding more granted claims than the per-user limit allows.
    pub users_over_limit: i64,
}

impl ResourceLedger {
    /// Units granted beyond stock (0 when none).
    pub fn oversold(&self) -> i64 {
        (self.granted_units - self.total).max(0)
    }

    /// Whether `remaining` is the stock less what was granted.
    pub fn remaining_matches(&self) -> bool {
        self.remaining == self.total - self.granted_units
    }

    /// Whether every invariant holds for this resource.
    pub fn holds(&self) -> bool {
        self.oversold() == 0 && self.users_over_limit == 0 && self.remaining_matches()
    }
}

/// What a set of ledgers violates, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvariantReport {
    /// Resources recounted.
    pub resources: u64,
    /// Units granted beyond stock, summed over resources.
    pub oversold_units: i64,
    /// Users holding more grants than a resource allows, summed over resources.
    pub users_over_limit: i64,
    /// Resources whose `remaining` is not stock less grants.
    pub remaining_mismatches: i64,
}

impl InvariantReport {
    /// Sums the violations of `ledgers`.
    pub fn of<'a>(ledgers: impl IntoIterator<Item = &'a ResourceLedger>) -> Self {
        ledgers.into_iter().fold(Self::default(), |mut report, ledger| {
            report.resources += 1;
            report.oversold_units += ledger.oversold();
            report.users_over_limit += ledger.users_over_limit;
            report.remaining_mismatches += i64::from(!ledger.remaining_matches());
            report
        })
    }

    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.oversold_units == 0 && self.users_over_limit == 0 && self.remaining_mismatches == 0
    }
}

/// The audit's state between passes.
#[derive(Debug, Default)]
pub struct OversoldLedger {
    /// Resources last counted oversold, by (tenant, kind, id).
    oversold: HashMap<(String, String, String), i64>,
    /// When the previous pass began, by Postgres' clock; `None` before the
    /// first pass completed.
    last_started: Option<OffsetDateTime>,
    /// Passes since the last full recount.
    since_full: u32,
}

impl OversoldLedger {
    /// An empty ledger: its first pass recounts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the next pass should recount.
    pub fn next_scope(&self) -> AuditScope {
        match self.last_started {
            Some(started) if self.since_full + 1 < FULL_RECOUNT_EVERY => {
                AuditScope::DecidedSince(started - AUDIT_OVERLAP)
            }
            _ => AuditScope::Everything,
        }
    }

    /// Records a pass over `scope` that began at `started` (Postgres'
    /// clock), with the ledger of every resource in the scope.
    pub fn record(&mut self, scope: &AuditScope, started: OffsetDateTime, ledgers: &[ResourceLedger]) {
        match scope {
            AuditScope::Everything => {
                self.oversold.clear();
                self.since_full = 0;
            }
            AuditScope::DecidedSince(_) => self.since_full += 1,
            AuditScope::Resources(_) => {}
        }
        for ledger in ledgers {
            let key = (ledger.tenant_id.clone(), ledger.kind.clone(), ledger.id.clone());
            match ledger.oversold() {
                0 => self.oversold.remove(&key),
                units => self.oversold.insert(key, units),
            };
        }
        if !matches!(scope, AuditScope::Resources(_)) {
            self.last_started = Some(started);
        }
    }

    /// Units granted beyond stock, summed over every resource.
    pub fn total(&self) -> i64 {
        self.oversold.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as Map;

    use proptest::prelude::*;

    use super::*;
    use crate::{ClaimId, Decision, PendingClaim, ResourceState, decide_batch};

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    /// A resource of 10 units with `oversold` units granted beyond them.
    fn recount(id: &str, oversold: i64) -> ResourceLedger {
        ResourceLedger {
            tenant_id: "default".into(),
            kind: "coupon".into(),
            id: id.into(),
            total: 10,
            remaining: -oversold,
            granted_units: 10 + oversold,
            granted_claims: 10 + oversold,
            users_over_limit: 0,
        }
    }

    #[test]
    fn the_first_pass_recounts_everything_and_the_next_only_what_was_decided_since() {
        let mut ledger = OversoldLedger::new();
        assert_eq!(ledger.next_scope(), AuditScope::Everything);
        ledger.record(&AuditScope::Everything, at(100), &[]);
        assert_eq!(ledger.next_scope(), AuditScope::DecidedSince(at(100) - AUDIT_OVERLAP));
    }

    #[test]
    fn an_incremental_pass_updates_only_the_resources_it_recounted() {
        let mut ledger = OversoldLedger::new();
        ledger.record(&AuditScope::Everything, at(0), &[recount("A", 2), recount("B", 3)]);
        assert_eq!(ledger.total(), 5);
        // B recounted (fixed by hand, say) and C newly oversold; A untouched.
        let scope = ledger.next_scope();
        ledger.record(&scope, at(15), &[recount("B", 0), recount("C", 1)]);
        assert_eq!(ledger.total(), 3);
    }

    #[test]
    fn a_full_pass_forgets_what_it_no_longer_finds() {
        let mut ledger = OversoldLedger::new();
        ledger.record(&AuditScope::Everything, at(0), &[recount("A", 2)]);
        ledger.record(&AuditScope::Everything, at(15), &[]);
        assert_eq!(ledger.total(), 0);
    }

    #[test]
    fn every_nth_pass_is_a_full_recount() {
        let mut ledger = OversoldLedger::new();
        let mut full = 0;
        for pass in 0..(3 * FULL_RECOUNT_EVERY) {
            let scope = ledger.next_scope();
            if scope == AuditScope::Everything {
                full += 1;
            }
            ledger.record(&scope, at(i64::from(pass) * 15), &[]);
        }
        assert_eq!(full, 3);
    }

    #[test]
    fn a_recount_of_chosen_resources_does_not_move_the_audit_clock() {
        let mut ledger = OversoldLedger::new();
        ledger.record(&AuditScope::Everything, at(0), &[]);
        ledger.record(&AuditScope::Resources(vec![]), at(30), &[recount("A", 1)]);
        assert_eq!(ledger.total(), 1);
        assert_eq!(ledger.next_scope(), AuditScope::DecidedSince(at(0) - AUDIT_OVERLAP));
    }

    #[test]
    fn the_report_counts_each_kind_of_violation() {
        let fine = recount("A", 0);
        let oversold = recount("B", 3);
        let twice = ResourceLedger {
            users_over_limit: 2,
            ..recount("C", 0)
        };
        let drifted = ResourceLedger {
            remaining: 1,
            ..recount("D", 0)
        };
        assert!(fine.holds());
        assert!(!oversold.holds() && !twice.holds() && !drifted.holds());
        let report = InvariantReport::of([&fine, &oversold, &twice, &drifted]);
        assert_eq!(
            report,
            InvariantReport {
                resources: 4,
                oversold_units: 3,
                users_over_limit: 2,
                remaining_mismatches: 1,
            }
        );
        assert!(!report.holds());
        assert!(InvariantReport::of([&fine]).holds());
    }

    proptest! {
        /// Whatever a sequence of batches decides, the ledger recounted from
        /// its grants holds: the decision and the invariants agree.
        #[test]
        fn what_decide_batch_grants_always_holds(
            total in 0i64..40,
            limit in proptest::option::of(1u32..4),
            batches in proptest::collection::vec(
                proptest::collection::vec((0u8..6, 1u32..5), 0..30), 1..6),
        ) {
            let mut remaining = total;
            let mut held: Map<String, u32> = Map::new();
            let mut ledger = ResourceLedger {
                tenant_id: "t".into(), kind: "sku".into(), id: "X".into(),
                total, remaining, granted_units: 0, granted_claims: 0, users_over_limit: 0,
            };
            let mut n = 0u128;
            for batch in batches {
                let claims: Vec<PendingClaim> = batch.iter().map(|(user, quantity)| {
                    n += 1;
                    PendingClaim { claim_id: ClaimId::from_uuid(uuid::Uuid::from_u128(n)),
                                   user_id: format!("u{user}"), quantity: *quantity }
                }).collect();
                let out = decide_batch(ResourceState { remaining, per_user_limit: limit }, &held, &claims);
                for (decision, claim) in out.decisions.iter().zip(&claims) {
                    if let Decision::Granted(_) = decision {
                        ledger.granted_units += i64::from(claim.quantity);
                        ledger.granted_claims += 1;
                        *held.entry(claim.user_id.clone()).or_default() += 1;
                    }
                }
                remaining = out.remaining;
            }
            ledger.remaining = remaining;
            ledger.users_over_limit = limit.map_or(0, |limit| {
                held.values().filter(|n| **n > limit).count() as i64
            });
            prop_assert!(ledger.holds(), "{ledger:?}");
        }
    }
}
