//! Helpers shared by the store's tests against the real PostgreSQL of
//! `scripts/stack`.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use sqlx::PgPool;
use turnstile_claim::{
    ClaimId, ClaimRequested, IdempotencyKey, Quantity, ResourceId, ResourceKey, TenantId, UnixMillis, UserId,
};
use turnstile_store::{self as store, Admission, Reserved};

/// A pool on `DATABASE_URL`, migrated.
pub async fn pool() -> PgPool {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".into());
    let pool = store::connect(&url, 4, Duration::from_secs(5)).await.unwrap();
    store::migrate(&pool).await.unwrap();
    pool
}

/// The event claim-api would publish for `key` by `user` on `coupon` (a
/// caller of the coupon's tenant).
pub fn event(coupon: &ResourceKey, key: &str, user: &str) -> ClaimRequested {
    ClaimRequested {
        claim_id: ClaimId::for_request(&coupon.tenant, &IdempotencyKey::parse(key).unwrap()),
        resource: coupon.clone(),
        user_id: UserId::parse(user).unwrap(),
        quantity: Quantity::ONE,
        accepted_at_ms: UnixMillis::parse(1_795_000_000_000).unwrap(),
    }
}

/// Records `events` as claim-api does (committed), each with `fingerprint`.
pub async fn admit(pool: &PgPool, fingerprint: &[u8; 32], events: &[ClaimRequested]) -> Vec<Reserved> {
    let admissions: Vec<Admission<'_>> = events.iter().map(|event| Admission { fingerprint, event }).collect();
    let mut conn = pool.acquire().await.unwrap();
    store::reserve_claims(&mut conn, &admissions).await.unwrap()
}

/// Records `events` as claim-api does, committed.
pub async fn accept(pool: &PgPool, events: &[ClaimRequested]) {
    admit(pool, &[7; 32], events).await;
}

/// A new coupon of the default tenant with `total` units, one per user.
pub async fn coupon(pool: &PgPool, name: &str, total: i64) -> ResourceKey {
    let code = format!("{name}-{:08x}", rand::random::<u32>());
    coupon_of(pool, &TenantId::default_tenant(), &code, total).await
}

/// A new coupon `code` of `tenant` with `total` units, one per user.
pub async fn coupon_of(pool: &PgPool, tenant: &TenantId, code: &str, total: i64) -> ResourceKey {
    let coupon = ResourceKey::coupon(tenant.clone(), ResourceId::parse("coupon", code).unwrap());
    assert!(store::create_resource(pool, &coupon, total, Some(1)).await.unwrap());
    coupon
}

/// A tenant no other test uses.
pub fn fresh_tenant(name: &str) -> TenantId {
    TenantId::parse(&format!("{name}-{:08x}", rand::random::<u32>())).unwrap()
}
