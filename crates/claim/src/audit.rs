//! The oversold audit's bookkeeping, with no I/O.
//!
//! The audit recounts granted units from the claims themselves (not from
//! `remaining`), so it would catch a bug in the decision or in the stock
//! arithmetic. Recounting every granted claim of every resource on every
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

/// How far before the previous pass's start an incremental pass looks: a
/// decision's timestamp is its transaction's start, and a transaction that
/// began before the previous pass may have committed after it.
pub const AUDIT_OVERLAP: Duration = Duration::from_secs(60);

/// Every this many passes, one recounts every resource.
pub const FULL_RECOUNT_EVERY: u32 = 20;

/// Which resources a pass recounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditScope {
    /// Every resource.
    Everything,
    /// The resources decided at or after this instant (Postgres' clock).
    DecidedSince(OffsetDateTime),
}

/// One resource's recount: units granted beyond its total (0 when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRecount {
    pub tenant_id: String,
    pub kind: String,
    pub id: String,
    pub oversold: i64,
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
    /// clock). `recounts` must hold every resource of the scope that is
    /// oversold; for an incremental pass it may also hold the others (0).
    pub fn record(&mut self, scope: AuditScope, started: OffsetDateTime, recounts: Vec<ResourceRecount>) {
        match scope {
            AuditScope::Everything => {
                self.oversold.clear();
                self.since_full = 0;
            }
            AuditScope::DecidedSince(_) => self.since_full += 1,
        }
        for r in recounts {
            if r.oversold > 0 {
                self.oversold.insert((r.tenant_id, r.kind, r.id), r.oversold);
            } else {
                self.oversold.remove(&(r.tenant_id, r.kind, r.id));
            }
        }
        self.last_started = Some(started);
    }

    /// Units granted beyond stock, summed over every resource.
    pub fn total(&self) -> i64 {
        self.oversold.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn recount(id: &str, oversold: i64) -> ResourceRecount {
        ResourceRecount {
            tenant_id: "default".into(),
            kind: "coupon".into(),
            id: id.into(),
            oversold,
        }
    }

    #[test]
    fn the_first_pass_recounts_everything_and_the_next_only_what_was_decided_since() {
        let mut ledger = OversoldLedger::new();
        assert_eq!(ledger.next_scope(), AuditScope::Everything);
        ledger.record(AuditScope::Everything, at(100), vec![]);
        assert_eq!(ledger.next_scope(), AuditScope::DecidedSince(at(100) - AUDIT_OVERLAP));
    }

    #[test]
    fn an_incremental_pass_updates_only_the_resources_it_recounted() {
        let mut ledger = OversoldLedger::new();
        ledger.record(AuditScope::Everything, at(0), vec![recount("A", 2), recount("B", 3)]);
        assert_eq!(ledger.total(), 5);
        // B recounted (fixed by hand, say) and C newly oversold; A untouched.
        let scope = ledger.next_scope();
        ledger.record(scope, at(15), vec![recount("B", 0), recount("C", 1)]);
        assert_eq!(ledger.total(), 3);
    }

    #[test]
    fn a_full_pass_forgets_what_it_no_longer_finds() {
        let mut ledger = OversoldLedger::new();
        ledger.record(AuditScope::Everything, at(0), vec![recount("A", 2)]);
        ledger.record(AuditScope::Everything, at(15), vec![]);
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
            ledger.record(scope, at(i64::from(pass) * 15), vec![]);
        }
        assert_eq!(full, 3);
    }
}
