//! The worker's fenced batch decision (`store::decide_fenced`) against the
//! real PostgreSQL of `scripts/stack`: earlier grants count toward the
//! per-user limit, a claim without a row is decided from its event, a
//! redelivered batch changes nothing, an older token is refused, and a claim
//! whose acceptance commits while the decision waits on it is still decided.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{accept, coupon, event, pool};
use turnstile_claim::{
    Decision, RejectReason, ResourceId, ResourceKey,
    store::{self, Admission, FencedOutcome},
};
use turnstile_lock::FencingToken;

fn applied(outcome: FencedOutcome) -> (Vec<Decision>, i64) {
    match outcome {
        FencedOutcome::Applied {
            decisions, remaining, ..
        } => (decisions, remaining),
        other => panic!("expected the batch to be applied, got {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_is_decided_in_arrival_order_counting_earlier_grants_and_rowless_claims() {
    let pool = pool().await;
    let coupon = coupon(&pool, "FENCED", 3).await;
    let run = format!("{:08x}", rand::random::<u32>());
    let key = |n: &str| format!("{n}-{run}");

    // An earlier batch grants u1 its one coupon.
    let first = event(&coupon, &key("first"), "u1");
    accept(&pool, std::slice::from_ref(&first)).await;
    let (decisions, remaining) = applied(
        store::decide_fenced(&pool, &coupon, FencingToken::new(10), std::slice::from_ref(&first))
            .await
            .unwrap(),
    );
    assert_eq!((decisions, remaining), (vec![Decision::Granted(first.claim_id)], 2));

    let again = event(&coupon, &key("again"), "u1"); // u1 already holds one
    let a = event(&coupon, &key("a"), "u2");
    let a_twice = event(&coupon, &key("a-twice"), "u2"); // u2, later in the same batch
    let rowless = event(&coupon, &key("rowless"), "u3"); // its acceptance never committed
    let late = event(&coupon, &key("late"), "u4"); // nothing left by then
    accept(&pool, &[again.clone(), a.clone(), a_twice.clone(), late.clone()]).await;
    let batch = [again.clone(), a.clone(), a_twice.clone(), rowless.clone(), late.clone()];
    let (decisions, remaining) = applied(
        store::decide_fenced(&pool, &coupon, FencingToken::new(11), &batch)
            .await
            .unwrap(),
    );
    assert_eq!(
        decisions,
        vec![
            Decision::Rejected(again.claim_id, RejectReason::PerUserLimit),
            Decision::Granted(a.claim_id),
            Decision::Rejected(a_twice.claim_id, RejectReason::PerUserLimit),
            Decision::Granted(rowless.claim_id),
            Decision::Rejected(late.claim_id, RejectReason::SoldOut),
        ]
    );
    assert_eq!(remaining, 0);
    let row = store::resource(&pool, &coupon).await.unwrap().unwrap();
    assert_eq!((row.remaining, row.fence), (0, 11));
    let rowless_row = store::claim(&pool, rowless.claim_id).await.unwrap().unwrap();
    assert_eq!(rowless_row.fence, Some(11), "the rowless claim was stored and decided");

    // Redelivered under a newer token: everything is decided already.
    let (decisions, remaining) = applied(
        store::decide_fenced(&pool, &coupon, FencingToken::new(12), &batch)
            .await
            .unwrap(),
    );
    assert!(decisions.is_empty(), "{decisions:?}");
    assert_eq!(remaining, 0);

    // A zombie holding an older token writes nothing.
    let zombie = event(&coupon, &key("zombie"), "u5");
    accept(&pool, std::slice::from_ref(&zombie)).await;
    let outcome = store::decide_fenced(&pool, &coupon, FencingToken::new(11), std::slice::from_ref(&zombie))
        .await
        .unwrap();
    assert_eq!(outcome, FencedOutcome::StaleFence { last_accepted: 12 });
    let zombie_row = store::claim(&pool, zombie.claim_id).await.unwrap().unwrap();
    assert_eq!(zombie_row.fence, None, "the refused batch left its claim pending");
}

#[tokio::test]
async fn claims_of_an_unknown_resource_are_rejected_as_such() {
    let pool = pool().await;
    let missing =
        ResourceKey::coupon(ResourceId::parse("coupon", &format!("NONE-{:08x}", rand::random::<u32>())).unwrap());
    let claim = event(&missing, &format!("k-{:08x}", rand::random::<u32>()), "u1");
    let outcome = store::decide_fenced(&pool, &missing, FencingToken::new(1), std::slice::from_ref(&claim))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        FencedOutcome::UnknownResource {
            decisions: vec![Decision::Rejected(claim.claim_id, RejectReason::UnknownResource)]
        }
    );
}

/// The worker can read a claim's event before claim-api commits its row
/// (the API publishes, then commits). The decision's insert then waits on
/// that row, and its snapshot predates the commit: the claim must still be
/// decided in this batch, not left pending for the sweeper.
#[tokio::test]
async fn a_claim_whose_acceptance_commits_while_the_decision_waits_is_decided() {
    let pool = pool().await;
    let coupon = coupon(&pool, "RACE", 5).await;
    let claim = event(&coupon, &format!("race-{:08x}", rand::random::<u32>()), "u1");
    let admission = Admission {
        fingerprint: &[7; 32],
        event: &claim,
    };
    let (accepting, _) = store::reserve_claims(&pool, &[admission]).await.unwrap();

    let decide = tokio::spawn({
        let (pool, coupon, claim) = (pool.clone(), coupon.clone(), claim.clone());
        async move { store::decide_fenced(&pool, &coupon, FencingToken::new(1), &[claim]).await }
    });
    // Wait until the decision is blocked on the uncommitted row.
    let observer = pool.clone();
    let blocked = async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO claims%'",
            )
            .fetch_one(&observer)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("the decision never waited on the accepting transaction");
    accepting.commit().await.unwrap();

    let (decisions, remaining) = applied(decide.await.unwrap().unwrap());
    assert_eq!(decisions, vec![Decision::Granted(claim.claim_id)]);
    assert_eq!(remaining, 4);
}
