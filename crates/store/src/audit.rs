//! The invariants' one query: every resource of a scope, recounted from its
//! claims ([`turnstile_claim::audit`] judges the result).

use sqlx::PgPool;
use time::OffsetDateTime;
use turnstile_claim::audit::{AuditScope, ResourceLedger};

use crate::StoreError;

/// The ledger of every resource in `scope`, with Postgres' clock when the
/// recount began. Granted units and per-user grants are counted from the
/// claims themselves, not from `remaining`, so a bug in either shows. The
/// worker's audit, the tests and the load generator all use this query.
pub async fn check_invariants(
    pool: &PgPool,
    scope: &AuditScope,
) -> Result<(OffsetDateTime, Vec<ResourceLedger>), StoreError> {
    // Before the recount's snapshot: a decision committed after that
    // snapshot began after this instant, or within the overlap before it.
    let started = sqlx::query_scalar!(r#"SELECT now() AS "now!""#).fetch_one(pool).await?;
    let (mode, since, tenants, kinds, ids) = match scope {
        AuditScope::Everything => ("all", None, vec![], vec![], vec![]),
        AuditScope::DecidedSince(since) => ("since", Some(*since), vec![], vec![], vec![]),
        AuditScope::Resources(keys) => (
            "resources",
            None,
            keys.iter().map(|k| k.tenant.as_str().to_owned()).collect(),
            keys.iter().map(|k| k.kind.as_str().to_owned()).collect(),
            keys.iter().map(|k| k.id.as_str().to_owned()).collect(),
        ),
    };
    // The lateral recount walks `claims_granted_by_user` (tenant, kind,
    // resource, user) for one resource at a time, so a scope of a few
    // resources reads only their grants.
    let ledgers = sqlx::query_as!(
        ResourceLedger,
        r#"SELECT r.tenant_id AS "tenant_id!", r.kind AS "kind!", r.id AS "id!",
                  r.total::int8 AS "total!", r.remaining::int8 AS "remaining!",
                  g.units AS "granted_units!", g.claims AS "granted_claims!", g.over_limit AS "users_over_limit!"
             FROM resources r
             CROSS JOIN LATERAL (
               SELECT coalesce(sum(u.units), 0)::int8 AS units, coalesce(sum(u.claims), 0)::int8 AS claims,
                      count(*) FILTER (WHERE u.claims > r.per_user_limit)::int8 AS over_limit
                 FROM (SELECT sum(c.quantity) AS units, count(*) AS claims FROM claims c
                        WHERE c.tenant_id = r.tenant_id AND c.kind = r.kind AND c.resource_id = r.id
                          AND c.status = 'granted'
                        GROUP BY c.user_id) u) g
            WHERE CASE $1::text
                    WHEN 'all' THEN true
                    WHEN 'since' THEN r.decided_at >= $2
                    ELSE (r.tenant_id, r.kind, r.id) IN
                         (SELECT * FROM unnest($3::text[], $4::text[], $5::text[]))
                  END
            ORDER BY r.tenant_id, r.kind, r.id"#,
        mode,
        since,
        &tenants,
        &kinds,
        &ids,
    )
    .fetch_all(pool)
    .await?;
    Ok((started, ledgers))
}
