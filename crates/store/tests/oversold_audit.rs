//! The invariants' recount (`store::check_invariants`) against the real
//! PostgreSQL of `scripts/stack`: an incremental pass recounts exactly the
//! resources decided since its start, from the claims themselves, a full
//! pass recounts every resource, and a chosen scope only its resources.
//!
//! The breakage is forged with SQL a correct writer never runs (a second
//! grant to one user beyond the total, a drifted `remaining`), then removed.

#![allow(clippy::unwrap_used)]

mod common;

use common::{accept, coupon, event, pool};
use sqlx::PgPool;
use turnstile_claim::{
    ResourceKey,
    audit::{AuditScope, InvariantReport, ResourceLedger},
};
use turnstile_lock::FencingToken;
use turnstile_store::{self as store, FencedOutcome};

/// Accepts and decides one claim by `user` on `coupon`, as the services do.
async fn claim(pool: &PgPool, coupon: &ResourceKey, user: &str, fence: u64) {
    let event = event(coupon, &format!("audit-{user}-{:08x}", rand::random::<u32>()), user);
    accept(pool, std::slice::from_ref(&event)).await;
    let outcome = store::decide_fenced(pool, coupon, FencingToken::new(fence), std::slice::from_ref(&event))
        .await
        .unwrap();
    assert!(matches!(outcome, FencedOutcome::Applied { .. }), "{outcome:?}");
}

fn find<'a>(ledgers: &'a [ResourceLedger], coupon: &ResourceKey) -> Option<&'a ResourceLedger> {
    ledgers
        .iter()
        .find(|r| r.tenant_id == coupon.tenant.as_str() && r.id == coupon.id.as_str())
}

#[tokio::test]
async fn an_incremental_pass_recounts_the_resources_decided_since_and_a_full_pass_finds_every_violation() {
    let pool = pool().await;
    let quiet = coupon(&pool, "AUDIT-QUIET", 5).await;
    claim(&pool, &quiet, "q1", 1).await;

    let (started, _) = store::check_invariants(&pool, &AuditScope::Everything).await.unwrap();
    let busy = coupon(&pool, "AUDIT-BUSY", 1).await;
    claim(&pool, &busy, "b1", 1).await;

    // Decided after `started`: recounted, at 0. Decided before: left out.
    let (_, recounts) = store::check_invariants(&pool, &AuditScope::DecidedSince(started))
        .await
        .unwrap();
    assert_eq!(find(&recounts, &busy).map(ResourceLedger::holds), Some(true));
    assert!(find(&recounts, &quiet).is_none(), "{recounts:?}");

    // A forged second grant on a coupon of one unit.
    sqlx::query(
        "INSERT INTO claims (claim_id, tenant_id, kind, resource_id, user_id, quantity, one_per_user,
                             status, fence, decided_at)
         VALUES (gen_random_uuid(), 'default', 'coupon', $1, 'b1', 1, false, 'granted', 2, now())",
    )
    .bind(busy.id.as_str())
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE resources SET decided_at = now() WHERE kind = 'coupon' AND id = $1")
        .bind(busy.id.as_str())
        .execute(&pool)
        .await
        .unwrap();

    let chosen = store::check_invariants(&pool, &AuditScope::Resources(vec![busy.clone(), quiet.clone()])).await;
    let incremental = store::check_invariants(&pool, &AuditScope::DecidedSince(started)).await;
    let full = store::check_invariants(&pool, &AuditScope::Everything).await;
    // Remove the forgery before asserting, so a failure leaves no oversell
    // behind for the services sharing this database.
    sqlx::query("DELETE FROM claims WHERE kind = 'coupon' AND resource_id = $1 AND user_id = 'b1' AND fence = 2")
        .bind(busy.id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    let (_, incremental) = incremental.unwrap();
    let (_, full) = full.unwrap();
    let (_, chosen) = chosen.unwrap();
    for ledgers in [&incremental, &full, &chosen] {
        let busy = find(ledgers, &busy).unwrap();
        assert_eq!(
            (busy.oversold(), busy.users_over_limit, busy.granted_claims),
            (1, 1, 2),
            "{busy:?}"
        );
        // The forgery did not touch `remaining`: 0 left of 1, with 2 granted.
        assert!(!busy.remaining_matches());
    }
    // A full pass recounts every resource; a chosen scope only its own.
    assert_eq!(find(&full, &quiet).map(ResourceLedger::holds), Some(true));
    assert_eq!(chosen.len(), 2, "{chosen:?}");
    let report = InvariantReport::of(&chosen);
    assert_eq!(
        (
            report.resources,
            report.oversold_units,
            report.users_over_limit,
            report.remaining_mismatches
        ),
        (2, 1, 1, 1)
    );
}
