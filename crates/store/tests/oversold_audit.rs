//! The oversold audit's recount (`store::recount_oversold`) against the real
//! PostgreSQL of `scripts/stack`: an incremental pass recounts exactly the
//! resources decided since its start, from the claims themselves, and a full
//! pass finds every oversold resource.
//!
//! The oversell is forged with SQL a correct writer never runs (a granted
//! claim beyond the total), then removed.

#![allow(clippy::unwrap_used)]

mod common;

use common::{accept, coupon, event, pool};
use sqlx::PgPool;
use turnstile_claim::{ResourceKey, audit::{AuditScope, ResourceRecount}};
use turnstile_store::{self as store, FencedOutcome};
use turnstile_lock::FencingToken;

/// Accepts and decides one claim by `user` on `coupon`, as the services do.
async fn claim(pool: &PgPool, coupon: &ResourceKey, user: &str, fence: u64) {
    let event = event(coupon, &format!("audit-{user}-{:08x}", rand::random::<u32>()), user);
    accept(pool, std::slice::from_ref(&event)).await;
    let outcome = store::decide_fenced(pool, coupon, FencingToken::new(fence), std::slice::from_ref(&event))
        .await
        .unwrap();
    assert!(matches!(outcome, FencedOutcome::Applied { .. }), "{outcome:?}");
}

fn find<'a>(recounts: &'a [ResourceRecount], coupon: &ResourceKey) -> Option<&'a ResourceRecount> {
    recounts.iter().find(|r| r.id == coupon.id.as_str())
}

#[tokio::test]
async fn an_incremental_pass_recounts_the_resources_decided_since_and_a_full_pass_finds_every_oversell() {
    let pool = pool().await;
    let quiet = coupon(&pool, "AUDIT-QUIET", 5).await;
    claim(&pool, &quiet, "q1", 1).await;

    let (started, _) = store::recount_oversold(&pool, AuditScope::Everything).await.unwrap();
    let busy = coupon(&pool, "AUDIT-BUSY", 1).await;
    claim(&pool, &busy, "b1", 1).await;

    // Decided after `started`: recounted, at 0. Decided before: left out.
    let (_, recounts) = store::recount_oversold(&pool, AuditScope::DecidedSince(started))
        .await
        .unwrap();
    assert_eq!(find(&recounts, &busy).map(|r| r.oversold), Some(0));
    assert!(find(&recounts, &quiet).is_none(), "{recounts:?}");

    // A forged second grant on a coupon of one unit.
    sqlx::query(
        "INSERT INTO claims (claim_id, tenant_id, kind, resource_id, user_id, quantity, one_per_user,
                             status, fence, decided_at)
         VALUES (gen_random_uuid(), 'default', 'coupon', $1, 'forger', 1, false, 'granted', 2, now())",
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

    let incremental = store::recount_oversold(&pool, AuditScope::DecidedSince(started)).await;
    let full = store::recount_oversold(&pool, AuditScope::Everything).await;
    // Remove the forgery before asserting, so a failure leaves no oversell
    // behind for the services sharing this database.
    sqlx::query("DELETE FROM claims WHERE kind = 'coupon' AND resource_id = $1 AND user_id = 'forger'")
        .bind(busy.id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    let (_, incremental) = incremental.unwrap();
    let (_, full) = full.unwrap();
    assert_eq!(find(&incremental, &busy).map(|r| r.oversold), Some(1));
    assert_eq!(find(&full, &busy).map(|r| r.oversold), Some(1));
    // A full pass lists only the oversold.
    assert!(full.iter().all(|r| r.oversold > 0), "{full:?}");
    assert!(find(&full, &quiet).is_none());
}
