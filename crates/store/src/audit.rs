//! The oversold audit's one query (its bookkeeping is [`turnstile_claim::audit`]).

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::StoreError;
use turnstile_claim::audit::{AuditScope, ResourceRecount};

/// One pass of the oversold audit (see [`turnstile_claim::audit`]): Postgres' clock
/// when the pass began, and the recount of the resources in `scope`. A full
/// pass returns only the oversold resources; an incremental pass returns
/// every resource it recounted, so the ledger can clear those now at 0.
/// Both count granted units from the claims themselves, not from
/// `remaining`, so the audit would catch a bug in either.
pub async fn recount_oversold(
    pool: &PgPool,
    scope: AuditScope,
) -> Result<(OffsetDateTime, Vec<ResourceRecount>), StoreError> {
    // Before the recount's snapshot: a decision committed after that
    // snapshot began after this instant, or within the overlap before it.
    let started = sqlx::query_scalar!(r#"SELECT now() AS "now!""#).fetch_one(pool).await?;
    let recounts = match scope {
        AuditScope::Everything => {
            sqlx::query_as!(
                ResourceRecount,
                r#"SELECT r.tenant_id AS "tenant_id!", r.kind AS "kind!", r.id AS "id!",
                      (g.granted - r.total)::int8 AS "oversold!"
                 FROM resources r
                 JOIN (SELECT tenant_id, kind, resource_id, sum(quantity) AS granted
                         FROM claims WHERE status = 'granted'
                        GROUP BY tenant_id, kind, resource_id) g
                   ON g.tenant_id = r.tenant_id AND g.kind = r.kind AND g.resource_id = r.id
                WHERE g.granted > r.total"#,
            )
            .fetch_all(pool)
            .await?
        }
        AuditScope::DecidedSince(since) => {
            sqlx::query_as!(
                ResourceRecount,
                r#"SELECT r.tenant_id AS "tenant_id!", r.kind AS "kind!", r.id AS "id!",
                      greatest(coalesce(g.granted, 0) - r.total, 0)::int8 AS "oversold!"
                 FROM resources r
                 CROSS JOIN LATERAL (SELECT sum(c.quantity) AS granted FROM claims c
                                      WHERE c.tenant_id = r.tenant_id AND c.kind = r.kind AND c.resource_id = r.id
                                        AND c.status = 'granted') g
                WHERE r.decided_at >= $1"#,
                since,
            )
            .fetch_all(pool)
            .await?
        }
    };
    Ok((started, recounts))
}
