//! Group-commit admission (`store::reserve_claims`) against the real
//! PostgreSQL of `scripts/stack`: one batch holding new keys, in-batch
//! retries and reuses, keys used before, and an unknown coupon; and a key
//! whose event went out without a claim row, which stays free.

#![allow(clippy::unwrap_used)]

mod common;

use common::{admit, coupon, coupon_of, event, fresh_tenant, pool};
use turnstile_claim::{ClaimRequested, ResourceId, ResourceKey, TenantId};
use turnstile_lock::FencingToken;
use turnstile_store::{self as store, Admission, FencedOutcome, OrphanReason, Reserved};

fn admission<'a>(fingerprint: &'a [u8; 32], event: &'a ClaimRequested) -> Admission<'a> {
    Admission { fingerprint, event }
}

#[tokio::test]
async fn one_batch_classifies_every_admission_and_records_each_key_once() {
    let pool = pool().await;
    let run = format!("{:08x}", rand::random::<u32>());
    let coupon = coupon(&pool, "BATCH", 10).await;
    let (same, other) = ([1; 32], [2; 32]);

    // A key used before this batch.
    let old_key = format!("old-{run}");
    let old = event(&coupon, &old_key, "u0");
    assert_eq!(
        admit(&pool, &same, std::slice::from_ref(&old)).await,
        vec![Reserved::New]
    );

    let (k1, k2, k3) = (format!("k1-{run}"), format!("k2-{run}"), format!("k3-{run}"));
    let (e1, e2) = (event(&coupon, &k1, "u1"), event(&coupon, &k2, "u2"));
    let nowhere = ResourceKey::coupon(
        TenantId::default_tenant(),
        ResourceId::parse("coupon", "NO-SUCH-COUPON-EVER").unwrap(),
    );
    let missing = event(&nowhere, &k3, "u3");
    let batch = [
        admission(&same, &e1),
        admission(&same, &e1),   // a retry in the same batch
        admission(&other, &e1),  // the key reused in the same batch
        admission(&same, &old),  // a retry of an old key
        admission(&other, &old), // an old key reused
        admission(&same, &missing),
        admission(&same, &e2),
    ];
    let mut conn = pool.acquire().await.unwrap();
    let reserved = store::reserve_claims(&mut conn, &batch).await.unwrap();
    assert_eq!(
        reserved,
        vec![
            Reserved::New,
            Reserved::Replay(e1.claim_id),
            Reserved::KeyReused,
            Reserved::Replay(old.claim_id),
            Reserved::KeyReused,
            Reserved::UnknownResource,
            Reserved::New,
        ]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM claims WHERE resource_id = $1")
        .bind(coupon.id.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 3, "one pending claim per new key: old, k1, k2");
}

/// An event whose claim row never committed (the API answered 503) is an
/// orphan to the worker: it creates nothing, so the key stays free, and the
/// client's next request with that key, whatever its body, is a new claim.
#[tokio::test]
async fn an_event_without_a_claim_leaves_its_key_free() {
    let pool = pool().await;
    let run = format!("{:08x}", rand::random::<u32>());
    let coupon = coupon(&pool, "ORPHAN", 10).await;
    let orphan = event(&coupon, &format!("orphan-{run}"), "u1");
    let decided = store::decide_fenced(&pool, &coupon, FencingToken::new(1), std::slice::from_ref(&orphan))
        .await
        .unwrap();
    let FencedOutcome::Applied { decided, stock } = decided else {
        panic!("the fence was fresh: {decided:?}")
    };
    assert!(decided.decisions.is_empty() && decided.earlier.is_empty());
    assert_eq!(decided.orphans.len(), 1);
    assert_eq!(decided.orphans[0].reason, OrphanReason::NoClaim);
    assert_eq!(stock, Some((10, 10)), "nothing was granted");
    assert!(store::claim(&pool, orphan.claim_id).await.unwrap().is_none());

    let mut another_body = orphan.clone();
    another_body.user_id = turnstile_claim::UserId::parse("u2").unwrap();
    assert_eq!(
        admit(&pool, &[9; 32], std::slice::from_ref(&another_body)).await,
        vec![Reserved::New]
    );
}

/// A caller names coupons of its own tenant only: a claim on a code that
/// exists only in another tenant is a claim on an unknown coupon, and
/// records nothing.
#[tokio::test]
async fn another_tenants_coupon_is_unknown() {
    let pool = pool().await;
    let code = format!("THEIRS-{:08x}", rand::random::<u32>());
    let theirs = coupon_of(&pool, &fresh_tenant("owner"), &code, 5).await;
    let intruder = ResourceKey {
        tenant: fresh_tenant("intruder"),
        ..theirs.clone()
    };
    let claim = event(&intruder, &format!("k-{code}"), "u1");
    assert_eq!(
        admit(&pool, &[3; 32], std::slice::from_ref(&claim)).await,
        vec![Reserved::UnknownResource]
    );
    assert!(store::claim(&pool, claim.claim_id).await.unwrap().is_none());
    assert_eq!(store::resource(&pool, &theirs).await.unwrap().unwrap().remaining, 5);
}

/// A key another batch inserts while this one runs is settled inside
/// `reserve_claims` (the statement's snapshot predates the other row, so it
/// runs again for that key): a replay when the other batch wrote the same
/// request, a reused key when not, and the rest of the batch recorded once.
#[tokio::test]
async fn keys_a_concurrent_batch_holds_are_settled_once_it_commits() {
    let pool = pool().await;
    let run = format!("{:08x}", rand::random::<u32>());
    let coupon = coupon(&pool, "RACE", 10).await;
    let (same, other) = ([4; 32], [5; 32]);
    let (held, reused, fresh) = (
        event(&coupon, &format!("held-{run}"), "u1"),
        event(&coupon, &format!("reused-{run}"), "u2"),
        event(&coupon, &format!("fresh-{run}"), "u3"),
    );

    // The other batch: inserted, not committed yet.
    let mut other_batch = pool.begin().await.unwrap();
    let theirs = [admission(&same, &held), admission(&same, &reused)];
    assert_eq!(
        store::reserve_claims(&mut other_batch, &theirs).await.unwrap(),
        vec![Reserved::New, Reserved::New]
    );

    let ours = tokio::spawn({
        let pool = pool.clone();
        let (held, reused, fresh) = (held.clone(), reused.clone(), fresh.clone());
        async move {
            let batch = [
                admission(&same, &held),
                admission(&other, &reused),
                admission(&same, &fresh),
            ];
            let mut conn = pool.acquire().await.unwrap();
            store::reserve_claims(&mut conn, &batch).await.unwrap()
        }
    });
    // Ours waits on the other batch's rows: it is blocked on their lock.
    let blocked = async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%new_claims%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), blocked)
        .await
        .expect("the second batch waits for the first");
    other_batch.commit().await.unwrap();

    assert_eq!(
        ours.await.unwrap(),
        vec![Reserved::Replay(held.claim_id), Reserved::KeyReused, Reserved::New]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM claims WHERE resource_id = $1")
        .bind(coupon.id.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 3);
}

/// `accepted_at` is the database's clock, the one the sweeper compares it
/// with, not the clock of the API that sent the event.
#[tokio::test]
async fn a_claim_is_accepted_at_the_databases_time() {
    let pool = pool().await;
    let coupon = coupon(&pool, "CLOCK", 1).await;
    // The event says November 2026, whatever the API's clock read.
    let claim = event(&coupon, &format!("clock-{:08x}", rand::random::<u32>()), "u1");
    assert_eq!(
        admit(&pool, &[6; 32], std::slice::from_ref(&claim)).await,
        vec![Reserved::New]
    );
    let skew: f64 = sqlx::query_scalar(
        "SELECT abs(extract(epoch FROM now() - accepted_at))::float8 FROM claims WHERE claim_id = $1",
    )
    .bind(claim.claim_id.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(skew < 60.0, "accepted {skew} s away from the database's now()");
}

/// The backlog count stops at its cap, however many claims are pending.
#[tokio::test]
async fn the_pending_count_stops_at_its_cap() {
    let pool = pool().await;
    let coupon = coupon(&pool, "BACKLOG", 10).await;
    let run = format!("{:08x}", rand::random::<u32>());
    let claims: Vec<ClaimRequested> = (0..3)
        .map(|i| event(&coupon, &format!("backlog-{i}-{run}"), &format!("u{i}")))
        .collect();
    admit(&pool, &[8; 32], &claims).await;
    // At least these three are pending (other tests share the database).
    assert_eq!(store::pending_claims(&pool, 2).await.unwrap(), 2);
    assert!(store::pending_claims(&pool, 1_000_000).await.unwrap() >= 3);
}

#[tokio::test]
async fn a_batch_read_finds_each_recorded_claim_once_and_nothing_else() {
    let pool = pool().await;
    let run = format!("{:08x}", rand::random::<u32>());
    let coupon = coupon(&pool, "READ", 10).await;
    let (a, b) = (
        event(&coupon, &format!("a-{run}"), "ua"),
        event(&coupon, &format!("b-{run}"), "ub"),
    );
    let never = event(&coupon, &format!("never-{run}"), "un");
    assert_eq!(
        admit(&pool, &[1; 32], &[a.clone(), b.clone()]).await,
        vec![Reserved::New, Reserved::New]
    );

    // Asked twice for one claim, once for another, and for one never recorded.
    let asked = [a.claim_id, never.claim_id, b.claim_id, a.claim_id];
    let mut rows = store::claims(&pool, &asked).await.unwrap();
    rows.sort_by_key(|row| row.claim_id);
    let mut expected = vec![a.claim_id, b.claim_id];
    expected.sort();
    assert_eq!(rows.iter().map(|row| row.claim_id).collect::<Vec<_>>(), expected);
    for row in &rows {
        assert_eq!(row.tenant_id, coupon.tenant.as_str());
        assert_eq!(row.status, turnstile_claim::ClaimStatus::Pending);
        assert_eq!((row.reason, row.fence), (None, None));
    }
    assert!(store::claims(&pool, &[never.claim_id]).await.unwrap().is_empty());
    assert!(store::claims(&pool, &[]).await.unwrap().is_empty());
}
