//! The audit: what the database holds about the sale once it is over,
//! checked against the invariants (nothing oversold, nobody granted twice,
//! fences increasing, no refused key taken).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use indicatif::ProgressBar;
use sqlx::PgPool;
use turnstile_claim::{
    ResourceId, ResourceKey, TenantId,
    audit::{AuditScope, InvariantReport},
};
use turnstile_store as store;
use uuid::Uuid;

use super::report::{DecisionTime, FlashSaleReport};
use crate::refusals::RefusedKey;

/// Waits until none of `ids` is pending, or `deadline`; returns how many are.
pub(super) async fn wait_for_decisions(
    pool: &PgPool,
    ids: &[Uuid],
    deadline: Instant,
    progress: &ProgressBar,
) -> Result<u64> {
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM claims WHERE claim_id = ANY($1) AND status = 'pending'")
                .bind(ids)
                .fetch_one(pool)
                .await?;
        progress.set_position((ids.len() as u64).saturating_sub(u64::try_from(pending).unwrap_or(0)));
        if pending == 0 || Instant::now() >= deadline {
            return Ok(u64::try_from(pending).unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The invariants, from what Postgres holds about `tenant`'s coupons `codes`
/// (the same codes in another tenant are other coupons).
pub(super) async fn audit(pool: &PgPool, tenant: &TenantId, codes: &[String], ids: &[Uuid]) -> Result<FlashSaleReport> {
    let mut report = FlashSaleReport::default();
    let (granted, rejected): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'granted'), count(*) FILTER (WHERE status = 'rejected')
           FROM claims WHERE claim_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?;
    report.granted = u64::try_from(granted).unwrap_or(0);
    report.rejected = u64::try_from(rejected).unwrap_or(0);
    // Nothing oversold, nobody over the per-user limit, `remaining` equal
    // to stock less grants: the invariants every recount checks.
    let coupons = codes
        .iter()
        .map(|code| Ok(ResourceKey::coupon(tenant.clone(), ResourceId::parse("coupon", code)?)))
        .collect::<Result<Vec<_>>>()?;
    let (_, ledgers) = store::check_invariants(pool, &AuditScope::Resources(coupons)).await?;
    let invariants = InvariantReport::of(&ledgers);
    // Coupons missing from the database mean it is not the API's: an audit
    // of nothing would pass.
    anyhow::ensure!(
        invariants.resources == codes.len() as u64,
        "{} of the sale's {} coupons found in the database: is --database-url the API's?",
        invariants.resources,
        codes.len()
    );
    report.oversold = invariants.oversold_units;
    report.double_claims = invariants.users_over_limit;
    report.remaining_mismatches = invariants.remaining_mismatches;
    // In commit order per resource, a decision's fence is never below an
    // earlier decision's.
    report.fence_regressions = sqlx::query_scalar(
        "SELECT count(*) FROM (
           SELECT fence, max(fence) OVER (PARTITION BY resource_id ORDER BY decided_at, fence
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
             FROM claims
            WHERE tenant_id = $2 AND kind = 'coupon' AND resource_id = ANY($1) AND status <> 'pending') t
          WHERE fence < before",
    )
    .bind(codes)
    .bind(tenant.as_str())
    .fetch_one(pool)
    .await?;
    Ok(report)
}

/// How many of the keys answered 429 or 503 have a claim row that a
/// refused request recorded: the contract of [`crate::refusals`], judged on
/// every answer each key got. `start_epoch` is the load's start in Unix
/// seconds, which puts Postgres' `accepted_at` on the load's clock.
pub(super) async fn refused_keys_taken(
    pool: &PgPool,
    tenant: &TenantId,
    run_id: &str,
    start_epoch: f64,
    refused: &[RefusedKey],
) -> Result<i64> {
    use turnstile_claim::{ClaimId, IdempotencyKey};

    let mut by_id = HashMap::with_capacity(refused.len());
    for key in refused {
        let idempotency_key = IdempotencyKey::parse(&format!("{run_id}-{}", key.arrival))?;
        by_id.insert(ClaimId::for_request(tenant, &idempotency_key).as_uuid(), key);
    }
    let ids: Vec<Uuid> = by_id.keys().copied().collect();
    let rows: Vec<(Uuid, f64)> =
        sqlx::query_as("SELECT claim_id, extract(epoch FROM accepted_at)::float8 FROM claims WHERE claim_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    let taken = rows
        .into_iter()
        .filter(|(id, accepted_at)| {
            // A row recorded before the load started is on no request's
            // clock: recorded at 0, which no request accounts for.
            let recorded = Duration::try_from_secs_f64(accepted_at - start_epoch).unwrap_or(Duration::ZERO);
            by_id.get(id).is_some_and(|key| key.taken_by_refusal(recorded))
        })
        .count();
    Ok(i64::try_from(taken)?)
}

/// When each of `ids` that is decided was accepted and decided.
pub(super) async fn decision_times(pool: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, DecisionTime>> {
    let rows: Vec<(Uuid, f64, f64, bool)> = sqlx::query_as(
        "SELECT claim_id, extract(epoch FROM accepted_at)::float8, extract(epoch FROM decided_at)::float8,
                status = 'granted'
           FROM claims WHERE claim_id = ANY($1) AND status <> 'pending'",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, accepted_at, decided_at, granted)| {
            (
                id,
                DecisionTime {
                    accepted_at,
                    decided_at,
                    granted,
                },
            )
        })
        .collect())
}
