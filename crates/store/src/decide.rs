//! The worker's fenced decision of one resource's batch.

use std::collections::{HashMap, HashSet};

use sqlx::{PgPool, Postgres, Transaction};
use turnstile_lock::FencingToken;
use uuid::Uuid;

use crate::StoreError;
use turnstile_claim::{
    ClaimId, ClaimRequested, ClaimStatus, Decision, DecisionFact, PendingClaim, Quantity, RejectReason, ResourceKey,
    ResourceState, decide_batch, decision_facts,
};

/// The result of [`decide_fenced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FencedOutcome {
    /// The batch was written under the token.
    Applied {
        /// What became of each event.
        decided: BatchDecided,
        /// Units left afterwards and units the resource started with; `None`
        /// when there is no such resource (its claims were rejected as
        /// `unknown_resource`).
        stock: Option<(i64, i64)>,
    },
    /// The database had already accepted a newer token: this writer's lease
    /// is stale and nothing was written.
    StaleFence {
        /// The newest token the database accepted.
        last_accepted: i64,
    },
}

/// What [`decide_fenced`] did with each event of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchDecided {
    /// Decisions written now, for the claims that were pending, in arrival
    /// order.
    pub decisions: Vec<Decision>,
    /// Claims decided before (a redelivery): their decisions as stored, to
    /// be announced again.
    pub earlier: Vec<EarlierDecision>,
    /// Events that name no claim of this resource: nothing was written for
    /// them.
    pub orphans: Vec<Orphan>,
    /// What each claim decided now by the stock rules tells claim-api's
    /// door, by claim (none for claims rejected as invalid or for an
    /// unknown resource).
    pub facts: HashMap<ClaimId, DecisionFact>,
}

/// A claim that was already decided when its event came (again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlierDecision {
    /// The claim.
    pub claim_id: ClaimId,
    /// Granted or rejected.
    pub status: ClaimStatus,
    /// Why, when rejected.
    pub reason: Option<RejectReason>,
    /// The token it was decided under (0 when none, as for a claim rejected
    /// because it was invalid).
    pub fence: u64,
    /// When it was decided, in Unix milliseconds.
    pub decided_at_ms: i64,
}

/// An event the worker must not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    /// The claim the event names.
    pub claim_id: ClaimId,
    /// Why it is not decided.
    pub reason: OrphanReason,
}

/// Why an event names no claim of its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanReason {
    /// No claim row has its id: the API never committed it.
    NoClaim,
    /// The claim with its id belongs to another tenant or resource.
    OtherResource,
}

impl OrphanReason {
    /// A short reason, for logs and the dead-letter header.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoClaim => "no claim row has this claim id",
            Self::OtherResource => "the claim with this id belongs to another tenant or resource",
        }
    }
}

/// Decides `events` (one resource, arrival order) under `fence`, in one
/// transaction. Only claims whose rows exist and belong to `resource` and
/// the event's tenant are decided; a claim already decided (a redelivery
/// after a crash) is reported as it stands, so running a batch twice is
/// harmless and its decisions can be announced again.
///
/// Five round trips whatever the batch size: `BEGIN`, the fence, one read of
/// the claims, one write of the decisions, `COMMIT`. The fence is its own
/// statement on purpose: it takes the resource's row lock, and the read
/// after it gets a snapshot in which every earlier writer has committed.
///
/// The caller announces the decisions: the consume path, whose partition
/// offset is stored only once they are announced or owed.
pub async fn decide_fenced(
    pool: &PgPool,
    resource: &ResourceKey,
    fence: FencingToken,
    events: &[ClaimRequested],
) -> Result<FencedOutcome, StoreError> {
    decide(pool, resource, fence, events, Announce::ByCaller).await
}

/// [`decide_fenced`], owing the announcement of every decision on `topic`
/// in the same transaction (the [`crate::outbox`]): for deciders with no
/// offset to hold a decision's announcement back, such as the sweeper.
pub async fn decide_fenced_owing(
    pool: &PgPool,
    resource: &ResourceKey,
    fence: FencingToken,
    events: &[ClaimRequested],
    topic: &str,
) -> Result<FencedOutcome, StoreError> {
    decide(pool, resource, fence, events, Announce::ThroughOutbox(topic)).await
}

/// Who answers for announcing a batch's decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announce<'a> {
    ByCaller,
    /// The outbox, for this topic.
    ThroughOutbox(&'a str),
}

async fn decide(
    pool: &PgPool,
    resource: &ResourceKey,
    fence: FencingToken,
    events: &[ClaimRequested],
    announce: Announce<'_>,
) -> Result<FencedOutcome, StoreError> {
    let owe = match announce {
        Announce::ByCaller => None,
        Announce::ThroughOutbox(topic) => Some(topic),
    };
    let mut tx = pool.begin().await?;
    let tenant = resource.tenant.as_str();
    let kind = resource.kind.as_str();
    let id = resource.id.as_str();
    let token = fence.as_i64();

    // The fence: this row lock orders every writer of the resource, and the
    // predicate refuses a token that is not newer than the last accepted.
    let fenced = sqlx::query!(
        "UPDATE resources SET fence = $4, decided_at = now()
          WHERE tenant_id = $1 AND kind = $2 AND id = $3 AND fence < $4
         RETURNING remaining, total, per_user_limit",
        tenant,
        kind,
        id,
        token,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let state = match fenced {
        Some(row) => Some(row),
        None => {
            let last = sqlx::query_scalar!(
                "SELECT fence FROM resources WHERE tenant_id = $1 AND kind = $2 AND id = $3",
                tenant,
                kind,
                id
            )
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(last_accepted) = last {
                return Ok(FencedOutcome::StaleFence { last_accepted });
            }
            None
        }
    };

    let per_user_limit = state.as_ref().and_then(|s| s.per_user_limit);
    let stored = stored_claims(&mut tx, resource, per_user_limit, events).await?;
    let sorted = sort_batch(resource, events, stored);
    let mut decided = BatchDecided {
        decisions: sorted.invalid,
        earlier: sorted.earlier,
        orphans: sorted.orphans,
        facts: HashMap::new(),
    };

    let Some(state) = state else {
        decided.decisions.extend(
            sorted
                .pending
                .iter()
                .map(|c| Decision::Rejected(c.claim_id, RejectReason::UnknownResource)),
        );
        write_decisions(&mut tx, resource, &decided.decisions, None, None, owe).await?;
        tx.commit().await?;
        return Ok(FencedOutcome::Applied { decided, stock: None });
    };

    let before = ResourceState {
        remaining: state.remaining,
        per_user_limit: state.per_user_limit.and_then(|l| u32::try_from(l).ok()),
    };
    let outcome = decide_batch(before, &sorted.granted_before, &sorted.pending);
    let facts = decision_facts(0, before, &sorted.granted_before, &sorted.pending, &outcome);
    decided.facts = sorted.pending.iter().map(|c| c.claim_id).zip(facts).collect();
    decided.decisions.extend(outcome.decisions);
    write_decisions(
        &mut tx,
        resource,
        &decided.decisions,
        Some(token),
        Some(outcome.remaining),
        owe,
    )
    .await?;
    tx.commit().await?;
    Ok(FencedOutcome::Applied {
        decided,
        stock: Some((outcome.remaining, state.total)),
    })
}

/// A claim row as [`decide_fenced`] reads it.
#[derive(Debug, Clone)]
struct StoredClaim {
    claim_id: Uuid,
    tenant_id: String,
    kind: String,
    resource_id: String,
    user_id: String,
    quantity: i32,
    status: String,
    reason: Option<String>,
    fence: Option<i64>,
    decided_at_ms: Option<i64>,
    /// Grants the claim's user already holds on the resource (pending
    /// claims of a resource with a per-user limit only).
    granted_before: Option<i64>,
}

/// One statement: the rows of the batch's claims with, for the pending ones
/// of this resource, their users' earlier grants.
async fn stored_claims(
    tx: &mut Transaction<'static, Postgres>,
    resource: &ResourceKey,
    per_user_limit: Option<i32>,
    events: &[ClaimRequested],
) -> Result<Vec<StoredClaim>, StoreError> {
    let ids = crate::lookup_keys(events.iter().map(|e| e.claim_id));
    // One primary-key probe per claim (see `crate::claims`): with
    // `claim_id = ANY($5)` the plan Postgres cached while the table was
    // small scanned all of it for every batch once it had grown (520 ms
    // per batch at 38 000 claims, in the first sale on a new database).
    let rows = sqlx::query!(
        r#"SELECT c.claim_id AS "claim_id!", c.tenant_id AS "tenant_id!", c.kind AS "kind!",
                  c.resource_id AS "resource_id!", c.user_id AS "user_id!", c.quantity AS "quantity!",
                  c.status AS "status!", c.reason, c.fence,
                  (extract(epoch FROM c.decided_at) * 1000)::int8 AS decided_at_ms,
                  CASE WHEN $4::int4 IS NOT NULL AND c.status = 'pending'
                        AND c.tenant_id = $1 AND c.kind = $2 AND c.resource_id = $3 THEN
                    (SELECT count(*) FROM claims g
                      WHERE g.tenant_id = $1 AND g.kind = $2 AND g.resource_id = $3 AND g.status = 'granted'
                        AND g.user_id = c.user_id)
                  END AS granted_before
             FROM unnest($5::uuid[]) AS wanted(id)
             CROSS JOIN LATERAL (
               SELECT claim_id, tenant_id, kind, resource_id, user_id, quantity, status, reason, fence, decided_at
                 FROM claims WHERE claim_id = wanted.id LIMIT 1
             ) c"#,
        resource.tenant.as_str(),
        resource.kind.as_str(),
        resource.id.as_str(),
        per_user_limit,
        &ids,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| StoredClaim {
            claim_id: r.claim_id,
            tenant_id: r.tenant_id,
            kind: r.kind,
            resource_id: r.resource_id,
            user_id: r.user_id,
            quantity: r.quantity,
            status: r.status,
            reason: r.reason,
            fence: r.fence,
            decided_at_ms: r.decided_at_ms,
            granted_before: r.granted_before,
        })
        .collect())
}

/// A batch's events sorted by what their rows say.
#[derive(Debug, Default)]
struct SortedBatch {
    /// Pending claims of this resource, in arrival order, as stored.
    pending: Vec<PendingClaim>,
    /// Pending claims whose rows are not valid claims: rejected.
    invalid: Vec<Decision>,
    /// Earlier grants per user of a pending claim.
    granted_before: HashMap<String, u32>,
    earlier: Vec<EarlierDecision>,
    orphans: Vec<Orphan>,
}

/// Matches each event to its row: the row is the claim, so its user and
/// quantity are the ones decided, and an event whose row is missing or
/// names another tenant or resource is an orphan. Each claim is taken once,
/// however often the batch names it.
fn sort_batch(resource: &ResourceKey, events: &[ClaimRequested], stored: Vec<StoredClaim>) -> SortedBatch {
    let mut rows: HashMap<Uuid, StoredClaim> = stored.into_iter().map(|r| (r.claim_id, r)).collect();
    let mut seen: HashSet<ClaimId> = HashSet::with_capacity(events.len());
    let mut sorted = SortedBatch::default();
    for event in events {
        if !seen.insert(event.claim_id) {
            continue;
        }
        let Some(row) = rows.remove(&event.claim_id.as_uuid()) else {
            sorted.orphans.push(Orphan {
                claim_id: event.claim_id,
                reason: OrphanReason::NoClaim,
            });
            continue;
        };
        if event.resource != *resource
            || row.tenant_id != resource.tenant.as_str()
            || row.kind != resource.kind.as_str()
            || row.resource_id != resource.id.as_str()
        {
            sorted.orphans.push(Orphan {
                claim_id: event.claim_id,
                reason: OrphanReason::OtherResource,
            });
            continue;
        }
        // The CHECK constraint admits only these three statuses.
        match row.status.parse::<ClaimStatus>() {
            Ok(ClaimStatus::Pending) | Err(_) => {}
            Ok(status) => {
                sorted.earlier.push(EarlierDecision {
                    claim_id: event.claim_id,
                    status,
                    reason: row.reason.as_deref().and_then(|r| r.parse().ok()),
                    fence: row.fence.and_then(|f| u64::try_from(f).ok()).unwrap_or(0),
                    decided_at_ms: row.decided_at_ms.unwrap_or(0),
                });
                continue;
            }
        }
        let quantity = i64::from(row.quantity);
        match Quantity::parse(quantity) {
            Ok(quantity) => {
                if let Some(grants) = row.granted_before {
                    sorted
                        .granted_before
                        .insert(row.user_id.clone(), u32::try_from(grants).unwrap_or(u32::MAX));
                }
                sorted.pending.push(PendingClaim {
                    claim_id: event.claim_id,
                    user_id: row.user_id,
                    quantity: quantity.get(),
                });
            }
            Err(_) => sorted
                .invalid
                .push(Decision::Rejected(event.claim_id, RejectReason::InvalidClaim)),
        }
    }
    sorted
}

/// One statement: the decisions, the units left (when the resource exists)
/// under the same fence, and, when `owe` names a topic, their announcements
/// owed on it in the outbox.
///
/// `decided_at` is `clock_timestamp()`, not `now()`: the statement runs after
/// the fence row lock is taken, so per resource it orders decisions as they
/// were committed, which the fence-regression audit relies on.
async fn write_decisions(
    tx: &mut Transaction<'static, Postgres>,
    resource: &ResourceKey,
    decisions: &[Decision],
    fence: Option<i64>,
    remaining: Option<i64>,
    owe: Option<&str>,
) -> Result<(), StoreError> {
    let n = decisions.len();
    let (mut ids, mut statuses, mut reasons) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for d in decisions {
        ids.push(d.claim_id().as_uuid());
        let (status, reason) = d.outcome();
        statuses.push(status.as_str());
        reasons.push(reason.map(RejectReason::as_str));
    }
    // Planned afresh each time (not a cached prepared statement): the
    // join of the batch with `claims` has no lookup-only form an UPDATE
    // can take, and the plan Postgres caches while the table is small (a
    // new database, the first sale) hashes every pending claim for each
    // batch once the backlog has grown. Planning costs a fraction of a
    // millisecond per batch.
    sqlx::query!(
        "WITH decided AS (
           UPDATE claims AS c SET status = d.status, reason = d.reason, fence = $6, decided_at = clock_timestamp()
             FROM unnest($3::uuid[], $4::text[], $5::text[]) AS d(claim_id, status, reason)
            WHERE c.claim_id = d.claim_id AND c.status = 'pending'
           RETURNING c.claim_id
         ), owed AS (
           INSERT INTO decision_outbox (claim_id, topic) SELECT claim_id, $9 FROM decided WHERE $9::text IS NOT NULL
           ON CONFLICT (claim_id) DO NOTHING
         )
         UPDATE resources SET remaining = $7
          WHERE tenant_id = $8 AND kind = $1 AND id = $2 AND fence = $6 AND $7::int8 IS NOT NULL",
        resource.kind.as_str(),
        resource.id.as_str(),
        &ids,
        &statuses as &[&str],
        &reasons as &[Option<&str>],
        fence,
        remaining,
        resource.tenant.as_str(),
        owe,
    )
    .persistent(false)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnstile_claim::{ResourceId, TenantId, UnixMillis, UserId};

    fn coupon(code: &str) -> ResourceKey {
        ResourceKey::coupon(TenantId::default_tenant(), ResourceId::parse("coupon", code).unwrap())
    }

    fn event(n: u128, resource: &ResourceKey) -> ClaimRequested {
        ClaimRequested {
            claim_id: ClaimId::from_uuid(Uuid::from_u128(n)),
            resource: resource.clone(),
            user_id: UserId::parse("u").unwrap(),
            quantity: Quantity::ONE,
            accepted_at_ms: UnixMillis::parse(1_795_000_000_000).unwrap(),
        }
    }

    fn row(n: u128, resource: &ResourceKey, status: &str, quantity: i32) -> StoredClaim {
        StoredClaim {
            claim_id: Uuid::from_u128(n),
            tenant_id: "default".into(),
            kind: resource.kind.as_str().into(),
            resource_id: resource.id.as_str().into(),
            user_id: format!("user-{n}"),
            quantity,
            status: status.into(),
            reason: (status == "rejected").then(|| "sold_out".into()),
            fence: (status != "pending").then_some(9),
            decided_at_ms: (status != "pending").then_some(1_795_000_000_123),
            granted_before: None,
        }
    }

    #[test]
    fn events_are_sorted_by_their_rows() {
        let a = coupon("A");
        let b = coupon("B");
        let events = [
            event(1, &a),
            event(2, &a),
            event(3, &a),
            event(4, &a),
            event(5, &a),
            event(1, &a),
        ];
        let mut foreign_tenant = row(5, &a, "pending", 1);
        foreign_tenant.tenant_id = "other".into();
        let rows = vec![
            row(1, &a, "pending", 2),
            row(2, &a, "rejected", 1),
            // 3 has no row
            row(4, &b, "pending", 1),
            foreign_tenant,
        ];
        let sorted = sort_batch(&a, &events, rows);
        assert_eq!(
            sorted.pending,
            vec![PendingClaim {
                claim_id: ClaimId::from_uuid(Uuid::from_u128(1)),
                user_id: "user-1".into(),
                quantity: 2,
            }],
            "the row's user and quantity, and the claim once however often it is named"
        );
        assert_eq!(
            sorted.earlier,
            vec![EarlierDecision {
                claim_id: ClaimId::from_uuid(Uuid::from_u128(2)),
                status: ClaimStatus::Rejected,
                reason: Some(RejectReason::SoldOut),
                fence: 9,
                decided_at_ms: 1_795_000_000_123,
            }]
        );
        let orphans: Vec<(u128, OrphanReason)> = sorted
            .orphans
            .iter()
            .map(|o| (o.claim_id.as_uuid().as_u128(), o.reason))
            .collect();
        assert_eq!(
            orphans,
            vec![
                (3, OrphanReason::NoClaim),
                (4, OrphanReason::OtherResource),
                (5, OrphanReason::OtherResource),
            ]
        );
        assert!(sorted.invalid.is_empty());
    }

    #[test]
    fn a_pending_row_that_is_no_valid_claim_is_rejected_as_invalid() {
        let a = coupon("A");
        let sorted = sort_batch(&a, &[event(1, &a)], vec![row(1, &a, "pending", 5000)]);
        assert!(sorted.pending.is_empty());
        assert_eq!(
            sorted.invalid,
            vec![Decision::Rejected(
                ClaimId::from_uuid(Uuid::from_u128(1)),
                RejectReason::InvalidClaim
            )]
        );
    }
}
