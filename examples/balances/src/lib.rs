//! Per-account balances that never go below zero, on
//! `turnstile-coordinator`. Debits and credits are events keyed by account;
//! the coordinator hands one account's movements at a time, in order, to
//! [`Balances`], under the account's lease. Each transaction starts by
//! moving the account's fence to the lease's token, so a stalled member's
//! late write is refused; each movement is recorded once by its id, so a
//! redelivered one is not applied twice.

use prometheus::Registry;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use turnstile_bus::{KafkaConnection, TopicKeeper, TopicLayout};
use turnstile_coordinator::{
    Coordinator, CoordinatorParts, Fenced, FencingToken, Handled, Handler, HandlerError, Membership, Work,
    postgres::{FenceCheck, advance_fence, install_fence_table},
};
use turnstile_lock::LockClient;

/// A credit (positive amount) or a debit (negative) of one account, applied
/// once per id. A debit the balance cannot cover is recorded, refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    /// Names the movement: a second one with the same id is the same one.
    pub id: String,
    /// The account, which is also the message's key.
    pub account: String,
    /// Units added (negative: taken).
    pub amount: i64,
}

/// The tables: balances, and each movement once with whether it applied.
/// A movement id is at most 64 characters: a longer one is refused by the
/// database, every time, which makes it poison.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS balances (
    account text PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE IF NOT EXISTS movements (
    id text PRIMARY KEY CHECK (length(id) <= 64),
    account text NOT NULL,
    amount bigint NOT NULL,
    applied boolean NOT NULL)";

/// Creates the tables (and the coordinator's fence table) if missing, one
/// member at a time.
pub async fn install(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('balances'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
    tx.commit().await?;
    install_fence_table(pool).await
}

/// An account's balance, 0 when it has none yet.
pub async fn balance(pool: &PgPool, account: &str) -> Result<i64, sqlx::Error> {
    let balance: Option<i64> = sqlx::query_scalar("SELECT balance FROM balances WHERE account = $1")
        .bind(account)
        .fetch_optional(pool)
        .await?;
    Ok(balance.unwrap_or(0))
}

/// The handler: applies an account's movements in one fenced transaction.
#[derive(Debug, Clone)]
pub struct Balances {
    /// The database with the balances.
    pub pool: PgPool,
}

/// Postgres failed.
#[derive(Debug, thiserror::Error)]
#[error("postgres: {0}")]
pub struct StoreFailed(#[from] sqlx::Error);

impl HandlerError for StoreFailed {
    /// The connection, not the statement: a refused statement (a broken
    /// CHECK) fails again whenever it is tried.
    fn is_transient(&self) -> bool {
        matches!(
            self.0,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
        )
    }

    fn dependency(&self) -> &'static str {
        "postgres"
    }
}

impl Handler for Balances {
    type Event = Movement;
    type Resource = String;
    type Announcement = ();
    type Error = StoreFailed;

    const DEPENDENCIES: &'static [&'static str] = &["postgres"];

    fn decode(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Movement, String> {
        let movement: Movement = serde_json::from_slice(payload.ok_or("no payload")?).map_err(|e| e.to_string())?;
        if key != Some(movement.account.as_bytes()) {
            return Err("the key is not the movement's account".to_owned());
        }
        if movement.id.is_empty() || movement.amount == 0 {
            return Err("a movement has an id and moves something".to_owned());
        }
        Ok(movement)
    }

    fn resource<'e>(&self, movement: &'e Movement) -> &'e String {
        &movement.account
    }

    fn encode(&self, movement: &Movement) -> (String, Vec<u8>) {
        (
            movement.account.clone(),
            serde_json::to_vec(movement).unwrap_or_default(),
        )
    }

    async fn handle(&self, work: Work<'_, Self>, token: FencingToken) -> Result<Fenced<Handled<Self>>, StoreFailed> {
        let mut tx = self.pool.begin().await?;
        let fence = format!("accounts/{}", work.resource);
        if let FenceCheck::Stale { last_accepted } = advance_fence(&mut tx, &fence, token).await? {
            return Ok(Fenced::Stale { last_accepted });
        }
        let mut balance: i64 = sqlx::query_scalar(
            "INSERT INTO balances (account, balance) VALUES ($1, 0)
             ON CONFLICT (account) DO UPDATE SET balance = balances.balance RETURNING balance",
        )
        .bind(work.resource)
        .fetch_one(&mut *tx)
        .await?;
        for movement in work.events {
            let applied = balance.checked_add(movement.amount).filter(|b| *b >= 0);
            let recorded = sqlx::query(
                "INSERT INTO movements (id, account, amount, applied) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&movement.id)
            .bind(&movement.account)
            .bind(movement.amount)
            .bind(applied.is_some())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // Recorded before: a redelivery, already applied or refused.
            if let (1, Some(after)) = (recorded, applied) {
                balance = after;
            }
        }
        sqlx::query("UPDATE balances SET balance = $2 WHERE account = $1")
            .bind(work.resource)
            .bind(balance)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Fenced::Applied(Handled::nothing()))
    }
}

/// The topic of the movements under `prefix`, and its dead-letter topic.
pub fn topics(prefix: &str) -> (String, String) {
    let movements = format!("{prefix}balances.movements");
    (movements.clone(), format!("{movements}.dlq"))
}

/// A member of `group` applying the movements on `prefix`'s topics (made
/// with 3 partitions if missing, and kept), with leases from `locks`.
pub async fn member(
    pool: PgPool,
    kafka: &KafkaConnection,
    group: &str,
    prefix: &str,
    locks: LockClient,
    registry: &Registry,
) -> anyhow::Result<Coordinator<Balances>> {
    let (movements, dead_letters) = topics(prefix);
    let recreated = TopicKeeper::counter()?;
    registry.register(Box::new(recreated.clone()))?;
    let keeper = TopicKeeper::new(
        kafka,
        &[&movements, &dead_letters],
        TopicLayout::single_broker(3),
        recreated,
    )?;
    keeper.pass().await?;
    let membership = Membership::new(group, movements, dead_letters);
    let parts = CoordinatorParts::join(Balances { pool }, kafka, &membership, locks, registry)?;
    Ok(Coordinator::new(parts).with_topic_keeper(keeper))
}
