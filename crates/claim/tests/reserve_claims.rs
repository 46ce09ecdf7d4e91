//! Group-commit admission (`store::reserve_claims`) against the real
//! PostgreSQL of `scripts/stack`: one batch holding new keys, in-batch
//! retries and reuses, keys used before, and an unknown coupon; and a key
//! whose claim a worker wrote from the event alone.

#![allow(clippy::unwrap_used)]

mod common;

use common::{coupon, event, pool};
use turnstile_claim::{
    ClaimRequested, ResourceId, ResourceKey,
    store::{self, Admission, FencedOutcome, Reserved},
};
use turnstile_lock::FencingToken;

fn admit<'a>(fingerprint: &'a [u8; 32], event: &'a ClaimRequested) -> Admission<'a> {
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
    let (tx, first) = store::reserve_claims(&pool, &[admit(&same, &old)]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(first, vec![Reserved::New]);

    let (k1, k2, k3) = (format!("k1-{run}"), format!("k2-{run}"), format!("k3-{run}"));
    let (e1, e2) = (event(&coupon, &k1, "u1"), event(&coupon, &k2, "u2"));
    let nowhere = ResourceKey::coupon(ResourceId::parse("coupon", "NO-SUCH-COUPON-EVER").unwrap());
    let missing = event(&nowhere, &k3, "u3");
    let batch = [
        admit(&same, &e1),
        admit(&same, &e1),   // a retry in the same batch
        admit(&other, &e1),  // the key reused in the same batch
        admit(&same, &old),  // a retry of an old key
        admit(&other, &old), // an old key reused
        admit(&same, &missing),
        admit(&same, &e2),
    ];
    let (tx, reserved) = store::reserve_claims(&pool, &batch).await.unwrap();
    tx.commit().await.unwrap();
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

    // Taking a claim out before the commit removes its row, which is its key.
    let k4 = format!("k4-{run}");
    let e4 = event(&coupon, &k4, "u4");
    let (mut tx, reserved) = store::reserve_claims(&pool, &[admit(&same, &e4)]).await.unwrap();
    assert_eq!(reserved, vec![Reserved::New]);
    store::forget_claims(&mut tx, &[admit(&same, &e4)]).await.unwrap();
    tx.commit().await.unwrap();
    let (tx, again) = store::reserve_claims(&pool, &[admit(&same, &e4)]).await.unwrap();
    drop(tx);
    assert_eq!(again, vec![Reserved::New], "a forgotten key is free again");
}

/// A claim whose acceptance transaction failed after publishing is written
/// by the worker from its event, without the request's fingerprint. The
/// client's retry with that key, whatever its body, gets that claim back.
#[tokio::test]
async fn a_key_whose_claim_the_worker_wrote_replays_it() {
    let pool = pool().await;
    let run = format!("{:08x}", rand::random::<u32>());
    let coupon = coupon(&pool, "ORPHAN", 10).await;
    let orphan = event(&coupon, &format!("orphan-{run}"), "u1");
    let decided = store::decide_fenced(&pool, &coupon, FencingToken::new(1), std::slice::from_ref(&orphan))
        .await
        .unwrap();
    assert!(matches!(decided, FencedOutcome::Applied { .. }), "{decided:?}");

    let (tx, reserved) = store::reserve_claims(&pool, &[admit(&[9; 32], &orphan)]).await.unwrap();
    drop(tx);
    assert_eq!(reserved, vec![Reserved::Replay(orphan.claim_id)]);
}
