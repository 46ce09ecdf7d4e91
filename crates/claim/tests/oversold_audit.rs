//! The oversold audit's recount (`store::recount_oversold`) against the real
//! PostgreSQL of `scripts/stack`: an incremental pass recounts exactly the
//! resources decided since its start, from the claims themselves, and a full
//! pass finds every oversold resource.
//!
//! The oversell is forged with SQL a correct writer never runs (a granted
//! claim beyond the total), then removed.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sqlx::PgPool;
use turnstile_claim::{
    ClaimId, ClaimRequested, IdempotencyKey, ResourceId, ResourceKey, TenantId, UserId,
    audit::{AuditScope, ResourceRecount},
    store::{self, Admission, FencedOutcome},
};
use turnstile_lock::FencingToken;

async fn pool() -> PgPool {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".into());
    let pool = store::connect(&url, 4, Duration::from_secs(5)).await.unwrap();
    store::migrate(&pool).await.unwrap();
    pool
}

async fn coupon(pool: &PgPool, name: &str, total: i64) -> ResourceKey {
    let code = format!("{name}-{:08x}", rand::random::<u32>());
    let coupon = ResourceKey::coupon(ResourceId::parse("coupon", &code).unwrap());
    store::create_resource(pool, &coupon, total, Some(1)).await.unwrap();
    coupon
}

/// Accepts and decides one claim by `user` on `coupon`, as the services do.
async fn claim(pool: &PgPool, coupon: &ResourceKey, user: &str, fence: u64) {
    let tenant = TenantId::default_tenant();
    let key = format!("audit-{user}-{:08x}", rand::random::<u32>());
    let event = ClaimRequested {
        claim_id: ClaimId::for_request(&tenant, &IdempotencyKey::parse(&key).unwrap()),
        tenant_id: tenant,
        resource: coupon.clone(),
        user_id: UserId::parse(user).unwrap(),
        quantity: 1,
        accepted_at_ms: 1_795_000_000_000,
    };
    let (tx, _) = store::reserve_claims(
        pool,
        &[Admission {
            idempotency_key: &key,
            fingerprint: &[7; 32],
            event: &event,
        }],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
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
