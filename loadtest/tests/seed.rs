//! `loadtest seed` against the stack's Postgres: the rows land on a coupon
//! of their own, decided and consistent with that coupon's row, and a
//! coupon that exists is never seeded into.

#![allow(clippy::unwrap_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::PgPool;
use turnstile_claim::ResourceId;
use turnstile_loadtest::seed::{self, SeedArgs};

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/turnstile".to_owned())
}

#[tokio::test]
async fn seeds_decided_claims_on_a_coupon_of_their_own() {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let resource = format!("SEED-TEST-{nanos:x}");
    let args = SeedArgs {
        database_url: database_url(),
        claims: 1_000,
        // Four chunks, the last one short.
        chunk: 300,
        days: 2,
        resource_id: Some(ResourceId::parse("resource", &resource).unwrap()),
        quiet: true,
    };
    let report = seed::run(&args).await.unwrap();
    assert_eq!(report.resource_id, resource);
    assert_eq!(report.rows, 1_000);
    assert!(report.rows_per_sec > 0.0);
    assert!(
        report.pkey_bytes > 0 && report.table_total_bytes > report.pkey_bytes,
        "{report:?}"
    );
    assert!(report.row_estimate >= 1_000, "{report:?}");

    let pool = PgPool::connect(&database_url()).await.unwrap();
    let (rows, rejected, tenants, decided_after, distinct_fences, max_fence, span_days): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        f64,
    ) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE status = 'rejected' AND reason = 'sold_out'),
                count(*) FILTER (WHERE tenant_id = 'default' AND kind = 'coupon' AND fingerprint IS NOT NULL),
                count(*) FILTER (WHERE decided_at > accepted_at),
                count(DISTINCT fence),
                max(fence),
                extract(epoch FROM max(accepted_at) - min(accepted_at))::float8 / 86400
           FROM claims WHERE resource_id = $1",
    )
    .bind(&resource)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 1_000);
    assert_eq!(rejected, 1_000, "every seeded claim is rejected as sold out");
    assert_eq!(tenants, 1_000);
    assert_eq!(decided_after, 1_000);
    assert_eq!((distinct_fences, max_fence), (1_000, 1_000));
    assert!(
        (1.9..=2.0).contains(&span_days),
        "accepted over the past two days: {span_days}"
    );

    // The coupon's row agrees: no stock, nothing granted, its fence the newest.
    let (total, remaining, fence): (i64, i64, i64) = sqlx::query_as(
        "SELECT total, remaining, fence FROM resources WHERE tenant_id = 'default' AND kind = 'coupon' AND id = $1",
    )
    .bind(&resource)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((total, remaining, fence), (0, 0, 1_000));

    // Seeding into an existing coupon is refused, and adds nothing.
    let again = seed::run(&args).await;
    assert!(again.is_err(), "seeded into an existing coupon");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM claims WHERE tenant_id = 'default' AND resource_id = $1")
        .bind(&resource)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1_000);

    sqlx::query("DELETE FROM claims WHERE tenant_id = 'default' AND kind = 'coupon' AND resource_id = $1")
        .bind(&resource)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM resources WHERE tenant_id = 'default' AND kind = 'coupon' AND id = $1")
        .bind(&resource)
        .execute(&pool)
        .await
        .unwrap();
}
