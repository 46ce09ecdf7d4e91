//! The balances example against the native stack (Postgres, Redis for the
//! locks, the Kafka-protocol broker): movements applied once each in order,
//! never below zero; a zombie's late write refused by the fence; poison
//! dead-lettered while the account's later movements go on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
    message::Headers,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use turnstile_bus::{ProducerTuning, Publisher};
use turnstile_coordinator::{
    CoordinatorMetrics, Fenced, Handler, LeaseTerms, Leaseholder, Origin, Source, Work, dead_letter,
};
use turnstile_example_balances::{Balances, Movement, balance, install, member, topics};
use turnstile_lock::{LockClient, backend::redis::RedisLockBackend};
use turnstile_testkit::{brokers, database_url, kafka, redis_url, unique, until};

async fn pool() -> PgPool {
    let pool = PgPool::connect(&database_url()).await.unwrap();
    install(&pool).await.unwrap();
    pool
}

async fn locks() -> LockClient {
    LockClient::new(Arc::new(RedisLockBackend::connect(&redis_url()).await.unwrap()))
}

/// A member of a fresh group on fresh topics, running until the token is
/// cancelled; returns the topic prefix.
async fn start_member(pool: &PgPool, stop: &CancellationToken) -> String {
    let prefix = format!("{}.", unique("balances"));
    let registry = prometheus::Registry::new();
    let member = member(
        pool.clone(),
        &kafka(),
        &format!("{prefix}members"),
        &prefix,
        locks().await,
        &registry,
    )
    .await
    .unwrap();
    tokio::spawn(member.run_until_stopped(stop.clone()));
    prefix
}

fn movement(id: &str, account: &str, amount: i64) -> Movement {
    Movement {
        id: id.to_owned(),
        account: account.to_owned(),
        amount,
    }
}

async fn send(publisher: &Publisher, prefix: &str, key: &str, payload: &[u8]) {
    let (movements, _) = topics(prefix);
    publisher.send_raw(&movements, key.as_bytes(), payload).await.unwrap();
}

async fn send_movement(publisher: &Publisher, prefix: &str, movement: &Movement) {
    send(
        publisher,
        prefix,
        &movement.account,
        &serde_json::to_vec(movement).unwrap(),
    )
    .await;
}

async fn recorded(pool: &PgPool, account: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM movements WHERE account = $1")
        .bind(account)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn movements_apply_once_each_in_order_and_a_balance_never_goes_below_zero() {
    let pool = pool().await;
    let stop = CancellationToken::new();
    let prefix = start_member(&pool, &stop).await;
    let publisher = Publisher::connect(&kafka(), &ProducerTuning::default()).unwrap();
    let (alice, bob) = (unique("alice"), unique("bob"));

    let credit = movement(&unique("credit"), &alice, 100);
    send_movement(&publisher, &prefix, &credit).await;
    // The same movement again (a producer's retry): applied once.
    send_movement(&publisher, &prefix, &credit).await;
    for n in 0..5 {
        send_movement(
            &publisher,
            &prefix,
            &movement(&unique(&format!("debit{n}")), &alice, -30),
        )
        .await;
    }
    // Bob's debit comes before any credit: refused, never below zero.
    send_movement(&publisher, &prefix, &movement(&unique("early"), &bob, -10)).await;
    send_movement(&publisher, &prefix, &movement(&unique("credit"), &bob, 5)).await;

    until(Duration::from_secs(60), "every movement recorded", || async {
        recorded(&pool, &alice).await == 6 && recorded(&pool, &bob).await == 2
    })
    .await;
    // 100, then three debits of 30 fit and two do not.
    assert_eq!(balance(&pool, &alice).await.unwrap(), 10);
    assert_eq!(balance(&pool, &bob).await.unwrap(), 5);
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM movements WHERE account = $1 AND NOT applied")
        .bind(&alice)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(refused, 2, "the last two debits, in order");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_paused_past_its_lease_has_its_write_refused_by_the_fence() {
    let pool = pool().await;
    let locks = locks().await;
    let handler = Balances { pool: pool.clone() };
    let account = unique("zombie");

    // The zombie takes the account's lease, then stalls until it is gone.
    let mut stalled = locks
        .acquire(&account, Duration::from_millis(300), Duration::from_secs(5))
        .await
        .unwrap();
    let zombie_token = stalled.token();
    stalled.lost().cancelled().await;

    // Meanwhile a member takes the lease anew and applies a credit.
    let metrics = CoordinatorMetrics::register(&prometheus::Registry::new(), &[], &[]).unwrap();
    let terms = LeaseTerms {
        ttl: Duration::from_secs(5),
        wait: Duration::from_secs(5),
    };
    let member = Leaseholder::new(locks, terms, metrics, "balances.movements");
    let credit = [movement(&unique("credit"), &account, 50)];
    member
        .handle(&handler, &account, &credit, &[Origin::default()], Source::Consumed)
        .await
        .unwrap();

    // The zombie wakes up and writes with its old token: refused, nothing
    // written.
    let late = [movement(&unique("late"), &account, -50)];
    let work = Work {
        resource: &account,
        events: &late,
        origins: &[Origin::default()],
        source: Source::Consumed,
        lease_lost: CancellationToken::new(),
    };
    match handler.handle(work, zombie_token).await.unwrap() {
        Fenced::Stale { last_accepted } => assert!(last_accepted > zombie_token.get()),
        Fenced::Applied(_) => panic!("the zombie's write was applied"),
    }
    assert_eq!(balance(&pool, &account).await.unwrap(), 50);
    assert_eq!(recorded(&pool, &account).await, 1, "only the member's credit");
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_goes_to_the_dead_letter_topic_and_the_account_goes_on() {
    let pool = pool().await;
    let stop = CancellationToken::new();
    let prefix = start_member(&pool, &stop).await;
    let publisher = Publisher::connect(&kafka(), &ProducerTuning::default()).unwrap();
    let account = unique("poisoned");

    // An id the database refuses every time (over 64 characters).
    let poison = movement(&"p".repeat(100), &account, 10);
    send_movement(&publisher, &prefix, &poison).await;

    let (_, dead_letter_topic) = topics(&prefix);
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&dead_letter_topic]).unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(60), reader.recv())
        .await
        .expect("a dead letter within 60 s")
        .unwrap();
    assert_eq!(letter.key(), Some(account.as_bytes()));
    let cause = letter
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == dead_letter::DEAD_LETTER_CAUSE_HEADER))
        .and_then(|h| h.value)
        .unwrap();
    assert_eq!(cause, b"poison");
    let dead: Movement = serde_json::from_slice(letter.payload().unwrap()).unwrap();
    assert_eq!(dead, poison);

    // The account's later movements are handled.
    send_movement(&publisher, &prefix, &movement(&unique("later"), &account, 7)).await;
    until(Duration::from_secs(30), "the later credit applied", || async {
        balance(&pool, &account).await.unwrap() == 7
    })
    .await;
    assert_eq!(recorded(&pool, &account).await, 1, "the poison recorded nothing");
    stop.cancel();
}
