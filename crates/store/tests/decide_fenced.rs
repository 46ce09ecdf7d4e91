//! The worker's fenced batch decision (`store::decide_fenced`) against the
//! real PostgreSQL of `scripts/stack`: earlier grants count toward the
//! per-user limit, an event without a claim row creates nothing, a
//! redelivered batch reports the decisions as stored, an older token is
//! refused, an event never decides another resource's claim, and one
//! coupon code in two tenants is two coupons.

#![allow(clippy::unwrap_used)]

mod common;

use common::{accept, coupon, coupon_of, event, fresh_tenant, pool};
use turnstile_claim::{ClaimStatus, Decision, RejectReason, ResourceId, ResourceKey, TenantId};
use turnstile_lock::FencingToken;
use turnstile_store::{self as store, BatchDecided, EarlierDecision, FencedOutcome, OrphanReason};

fn applied(outcome: FencedOutcome) -> (BatchDecided, i64) {
    match outcome {
        FencedOutcome::Applied {
            decided,
            stock: Some((remaining, _)),
        } => (decided, remaining),
        other => panic!("expected the batch to be applied to a known resource, got {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_is_decided_in_arrival_order_counting_earlier_grants() {
    let pool = pool().await;
    let coupon = coupon(&pool, "FENCED", 3).await;
    let run = format!("{:08x}", rand::random::<u32>());
    let key = |n: &str| format!("{n}-{run}");

    // An earlier batch grants u1 its one coupon.
    let first = event(&coupon, &key("first"), "u1");
    accept(&pool, std::slice::from_ref(&first)).await;
    let (decided, remaining) = applied(
        store::decide_fenced(&pool, &coupon, FencingToken::new(10), std::slice::from_ref(&first))
            .await
            .unwrap(),
    );
    assert_eq!(
        (decided.decisions, remaining),
        (vec![Decision::Granted(first.claim_id)], 2)
    );

    let again = event(&coupon, &key("again"), "u1"); // u1 already holds one
    let a = event(&coupon, &key("a"), "u2");
    let a_twice = event(&coupon, &key("a-twice"), "u2"); // u2, later in the same batch
    let rowless = event(&coupon, &key("rowless"), "u3"); // its acceptance never committed
    let b = event(&coupon, &key("b"), "u4");
    let late = event(&coupon, &key("late"), "u5"); // nothing left by then
    accept(
        &pool,
        &[again.clone(), a.clone(), a_twice.clone(), b.clone(), late.clone()],
    )
    .await;
    let batch = [
        again.clone(),
        a.clone(),
        a_twice.clone(),
        rowless.clone(),
        b.clone(),
        late.clone(),
    ];
    let (decided, remaining) = applied(
        store::decide_fenced(&pool, &coupon, FencingToken::new(11), &batch)
            .await
            .unwrap(),
    );
    let expected = vec![
        Decision::Rejected(again.claim_id, RejectReason::PerUserLimit),
        Decision::Granted(a.claim_id),
        Decision::Rejected(a_twice.claim_id, RejectReason::PerUserLimit),
        Decision::Granted(b.claim_id),
        Decision::Rejected(late.claim_id, RejectReason::SoldOut),
    ];
    assert_eq!(decided.decisions, expected);
    assert_eq!(decided.orphans.len(), 1);
    assert_eq!(
        (decided.orphans[0].claim_id, decided.orphans[0].reason),
        (rowless.claim_id, OrphanReason::NoClaim)
    );
    assert_eq!(remaining, 0);
    let row = store::resource(&pool, &coupon).await.unwrap().unwrap();
    assert_eq!((row.remaining, row.fence), (0, 11));
    assert!(
        store::claim(&pool, rowless.claim_id).await.unwrap().is_none(),
        "the worker created no claim"
    );

    // Redelivered under a newer token: everything is decided already, and
    // each decision is reported as stored, to be announced again.
    let (decided, remaining) = applied(
        store::decide_fenced(&pool, &coupon, FencingToken::new(12), &batch)
            .await
            .unwrap(),
    );
    assert!(decided.decisions.is_empty(), "{:?}", decided.decisions);
    // Each as stored: the decision, its fence, and when it was made.
    let decided_at: i64 =
        sqlx::query_scalar("SELECT (extract(epoch FROM decided_at) * 1000)::int8 FROM claims WHERE claim_id = $1")
            .bind(a.claim_id.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    let earlier: Vec<EarlierDecision> = expected
        .iter()
        .map(|d| {
            let (status, reason) = d.outcome();
            EarlierDecision {
                claim_id: d.claim_id(),
                status,
                reason,
                fence: 11,
                decided_at_ms: 0,
            }
        })
        .collect();
    assert!(decided.earlier.iter().all(|e| e.decided_at_ms > 0));
    assert!(decided.earlier.iter().any(|e| e.decided_at_ms == decided_at));
    let without_time: Vec<EarlierDecision> = decided
        .earlier
        .iter()
        .map(|e| EarlierDecision { decided_at_ms: 0, ..*e })
        .collect();
    assert_eq!(without_time, earlier);
    assert_eq!(remaining, 0);

    // A zombie holding an older token writes nothing.
    let zombie = event(&coupon, &key("zombie"), "u6");
    accept(&pool, std::slice::from_ref(&zombie)).await;
    let outcome = store::decide_fenced(&pool, &coupon, FencingToken::new(11), std::slice::from_ref(&zombie))
        .await
        .unwrap();
    assert_eq!(outcome, FencedOutcome::StaleFence { last_accepted: 12 });
    let zombie_row = store::claim(&pool, zombie.claim_id).await.unwrap().unwrap();
    assert_eq!(zombie_row.fence, None, "the refused batch left its claim pending");
}

/// A claim row whose resource does not exist (rows are only written for
/// known resources, so this takes a row written by hand) is rejected as
/// `unknown_resource`.
#[tokio::test]
async fn claims_of_an_unknown_resource_are_rejected_as_such() {
    let pool = pool().await;
    let missing = ResourceKey::coupon(
        TenantId::default_tenant(),
        ResourceId::parse("coupon", &format!("NONE-{:08x}", rand::random::<u32>())).unwrap(),
    );
    let claim = event(&missing, &format!("k-{:08x}", rand::random::<u32>()), "u1");
    sqlx::query(
        "INSERT INTO claims (claim_id, tenant_id, kind, resource_id, user_id, quantity, one_per_user)
         VALUES ($1, 'default', 'coupon', $2, 'u1', 1, false)",
    )
    .bind(claim.claim_id.as_uuid())
    .bind(missing.id.as_str())
    .execute(&pool)
    .await
    .unwrap();
    let outcome = store::decide_fenced(&pool, &missing, FencingToken::new(1), std::slice::from_ref(&claim))
        .await
        .unwrap();
    let FencedOutcome::Applied { decided, stock: None } = outcome else {
        panic!("expected an unknown resource, got {outcome:?}")
    };
    assert_eq!(
        decided.decisions,
        vec![Decision::Rejected(claim.claim_id, RejectReason::UnknownResource)]
    );
}

/// Key K is first sent for coupon A, whose event goes out though the claim
/// never commits; the client then reuses K for coupon B, which commits. The
/// event for A names B's claim: deciding it under A would spend A's stock
/// on B's claim and leave B's worker nothing to decide. It is an orphan:
/// nothing is written, and B's worker decides the claim against B.
#[tokio::test]
async fn an_event_never_decides_another_resources_claim() {
    let pool = pool().await;
    let (a, b) = (coupon(&pool, "WRONG-A", 1).await, coupon(&pool, "WRONG-B", 1).await);
    let key = format!("reused-{:08x}", rand::random::<u32>());
    let for_a = event(&a, &key, "u1");
    let for_b = event(&b, &key, "u1");
    assert_eq!(for_a.claim_id, for_b.claim_id, "one key, one claim id");
    accept(&pool, std::slice::from_ref(&for_b)).await;

    let (decided, remaining) = applied(
        store::decide_fenced(&pool, &a, FencingToken::new(1), std::slice::from_ref(&for_a))
            .await
            .unwrap(),
    );
    assert!(decided.decisions.is_empty() && decided.earlier.is_empty());
    assert_eq!(decided.orphans.len(), 1);
    assert_eq!(decided.orphans[0].reason, OrphanReason::OtherResource);
    assert_eq!(remaining, 1, "A's stock is untouched");
    let claim = store::claim(&pool, for_b.claim_id).await.unwrap().unwrap();
    assert_eq!(claim.status, ClaimStatus::Pending);

    let (decided, remaining) = applied(
        store::decide_fenced(&pool, &b, FencingToken::new(1), std::slice::from_ref(&for_b))
            .await
            .unwrap(),
    );
    assert_eq!(decided.decisions, vec![Decision::Granted(for_b.claim_id)]);
    assert_eq!(remaining, 0);
}

/// The same code in two tenants: two stocks, two fences, two per-user
/// limits. Granting tenant A's last unit leaves B's untouched, a token B's
/// coupon accepted says nothing about A's, and a user's grant in one tenant
/// does not count in the other.
#[tokio::test]
async fn one_code_in_two_tenants_is_two_coupons() {
    let pool = pool().await;
    let code = format!("SHARED-{:08x}", rand::random::<u32>());
    let a = coupon_of(&pool, &fresh_tenant("tenant-a"), &code, 1).await;
    let b = coupon_of(&pool, &fresh_tenant("tenant-b"), &code, 1).await;
    assert_eq!(a.local_name(), b.local_name());
    assert_ne!(a.to_string(), b.to_string(), "the Kafka key and lock name differ");
    let run = format!("{:08x}", rand::random::<u32>());

    let in_a = event(&a, &format!("a-{run}"), "same-user");
    accept(&pool, std::slice::from_ref(&in_a)).await;
    let (decided, remaining) = applied(
        store::decide_fenced(&pool, &a, FencingToken::new(50), std::slice::from_ref(&in_a))
            .await
            .unwrap(),
    );
    assert_eq!(decided.decisions, vec![Decision::Granted(in_a.claim_id)]);
    assert_eq!(remaining, 0);

    // B's fence is still 0 and its stock still 1: a smaller token works there.
    let in_b = event(&b, &format!("b-{run}"), "same-user");
    accept(&pool, std::slice::from_ref(&in_b)).await;
    let (decided, remaining) = applied(
        store::decide_fenced(&pool, &b, FencingToken::new(3), std::slice::from_ref(&in_b))
            .await
            .unwrap(),
    );
    assert_eq!(decided.decisions, vec![Decision::Granted(in_b.claim_id)]);
    assert_eq!(remaining, 0);
    assert_eq!(store::resource(&pool, &a).await.unwrap().unwrap().fence, 50);
    assert_eq!(store::resource(&pool, &b).await.unwrap().unwrap().fence, 3);

    // An event of A's claim in a batch for B's coupon decides nothing.
    let late_a = event(&a, &format!("late-a-{run}"), "other-user");
    accept(&pool, std::slice::from_ref(&late_a)).await;
    let outcome = store::decide_fenced(&pool, &b, FencingToken::new(4), std::slice::from_ref(&late_a))
        .await
        .unwrap();
    let FencedOutcome::Applied { decided, .. } = outcome else {
        panic!("expected the batch to be applied, got {outcome:?}")
    };
    assert!(decided.decisions.is_empty(), "{:?}", decided.decisions);
    assert_eq!(decided.orphans.len(), 1);
    assert_eq!(
        store::claim(&pool, late_a.claim_id).await.unwrap().unwrap().status,
        ClaimStatus::Pending
    );
}
