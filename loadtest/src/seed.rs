//! `loadtest seed`: bulk-loads decided claims into Postgres, to measure how
//! a sale's cost grows with the size of the claims table.
//!
//! The rows are claims rejected as `sold_out` on a coupon of their own
//! (`SEED-<eight hex digits>` of the default tenant, created here with no
//! stock), so they disturb
//! no invariant: none is granted, so the one-grant-per-user index and every
//! coupon's remaining stock are untouched, and the coupon's row in
//! `resources` agrees with its claims. They are otherwise like real decided
//! claims: the default tenant, random UUIDs (real ids are UUID v5, just as
//! uniformly spread over the primary key), a 32-byte fingerprint, accepted
//! over the past `--days` and decided 20 ms later, with fences rising in
//! decision order as a worker writes them.
//!
//! Postgres generates the rows itself (`INSERT ... SELECT ... FROM
//! generate_series`), `--chunk` rows per statement, each chunk its own
//! transaction with the coupon's fence moved along, then `ANALYZE claims`.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};
use turnstile_claim::{ResourceId, TenantId};

/// Arguments of `loadtest seed`.
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// Postgres, where the claims go.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/turnstile"
    )]
    pub database_url: String,
    /// Decided claims to add.
    #[arg(long)]
    pub claims: u64,
    /// Rows per `INSERT` statement, each in its own transaction.
    #[arg(long, default_value_t = 500_000)]
    pub chunk: u64,
    /// The claims were accepted over this many past days.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// The coupon the rows claim, created here; it must not exist yet
    /// (default: `SEED-<eight random hex digits>`).
    #[arg(long, value_parser = parse_resource_id)]
    pub resource_id: Option<ResourceId>,
    /// No progress line per chunk.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_resource_id(raw: &str) -> Result<ResourceId, String> {
    ResourceId::parse("--resource-id", raw).map_err(|e| e.to_string())
}

/// What a seeding did, and the table it left.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SeedReport {
    /// The coupon the seeded claims are on.
    pub resource_id: String,
    /// Claims added.
    pub rows: u64,
    /// Time spent inserting (the `ANALYZE` after it not included).
    pub insert_seconds: f64,
    pub rows_per_sec: f64,
    /// `pg_total_relation_size('claims')`: heap, indexes and TOAST.
    pub table_total_bytes: i64,
    /// `pg_relation_size('claims')`: the heap alone.
    pub table_heap_bytes: i64,
    /// `pg_indexes_size('claims')`: every index.
    pub indexes_bytes: i64,
    /// `pg_relation_size('claims_pkey')`: the primary key's index.
    pub pkey_bytes: i64,
    /// The planner's row count after `ANALYZE` (`reltuples`).
    pub row_estimate: i64,
}

impl SeedReport {
    /// A few lines for a person.
    pub fn summary(&self) -> String {
        format!(
            "seeded {} claims on coupon {} in {:.1} s ({:.0} rows/s)\n\
             claims: {} in all ({} heap, {} indexes, of which {} claims_pkey), about {} rows",
            self.rows,
            self.resource_id,
            self.insert_seconds,
            self.rows_per_sec,
            bytes(self.table_total_bytes),
            bytes(self.table_heap_bytes),
            bytes(self.indexes_bytes),
            bytes(self.pkey_bytes),
            self.row_estimate
        )
    }
}

/// `1.5 GiB`, `320.0 MiB`, `12 B`.
fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The `[first, last]` row numbers (from 1) of each chunk of `rows`.
fn chunks(rows: u64, chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    let chunk = chunk.max(1);
    (0..rows.div_ceil(chunk)).map(move |n| (n * chunk + 1, ((n + 1) * chunk).min(rows)))
}

/// One chunk: rows `$2..=$3` of the run. Row `g` was accepted `$5` seconds
/// apart from the epoch second `$4`, decided 20 ms later under fence `g`.
const INSERT_CHUNK: &str = "
    INSERT INTO claims (claim_id, tenant_id, kind, resource_id, user_id, quantity, one_per_user,
                        status, reason, fence, accepted_at, decided_at, fingerprint)
    SELECT gen_random_uuid(), $6, 'coupon', $1, 'seed-' || g, 1, true,
           'rejected', 'sold_out', g, t, t + interval '20 milliseconds', sha256(int8send(g))
      FROM (SELECT g, to_timestamp($4 + $5 * (g - 1)) AS t
              FROM generate_series($2::bigint, $3::bigint) AS g) AS rows";

/// Adds `args.claims` decided claims on a new coupon of their own.
pub async fn run(args: &SeedArgs) -> Result<SeedReport> {
    if args.claims == 0 || args.chunk == 0 {
        bail!("--claims and --chunk must be greater than zero");
    }
    let resource = match &args.resource_id {
        Some(id) => id.clone(),
        None => ResourceId::parse("resource", &format!("SEED-{:08X}", rand::random::<u32>()))?,
    };
    let tenant = TenantId::default_tenant();
    let mut conn = PgConnection::connect(&args.database_url)
        .await
        .context("connecting to postgres")?;
    let created = sqlx::query(
        "INSERT INTO resources (tenant_id, kind, id, total, remaining, per_user_limit)
         VALUES ($2, 'coupon', $1, 0, 0, 1) ON CONFLICT DO NOTHING",
    )
    .bind(resource.as_str())
    .bind(tenant.as_str())
    .execute(&mut conn)
    .await?
    .rows_affected();
    if created == 0 {
        bail!(
            "coupon {} already exists: seeded claims go on a coupon of their own",
            resource.as_str()
        );
    }
    let now: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&mut conn)
        .await?;
    let span = f64::from(args.days) * 86_400.0;
    let (first_accepted, spacing) = (now - span, span / args.claims as f64);
    let started = Instant::now();
    for (first, last) in chunks(args.claims, args.chunk) {
        let (first_i, last_i) = (i64::try_from(first)?, i64::try_from(last)?);
        let mut tx = conn.begin().await?;
        sqlx::query(INSERT_CHUNK)
            .bind(resource.as_str())
            .bind(first_i)
            .bind(last_i)
            .bind(first_accepted)
            .bind(spacing)
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await
            .with_context(|| format!("inserting rows {first} to {last}"))?;
        // As a worker leaves it: the newest fence, and when it decided.
        sqlx::query(
            "UPDATE resources SET fence = $2, decided_at = to_timestamp($3 + 0.02)
              WHERE tenant_id = $4 AND kind = 'coupon' AND id = $1",
        )
        .bind(resource.as_str())
        .bind(last_i)
        .bind(first_accepted + spacing * (last - 1) as f64)
        .bind(tenant.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if !args.quiet {
            eprintln!(
                "seed: {last} of {} rows ({:.0}%), {:.0} rows/s",
                args.claims,
                100.0 * last as f64 / args.claims as f64,
                last as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let insert_seconds = started.elapsed().as_secs_f64();
    sqlx::query("ANALYZE claims").execute(&mut conn).await?;
    let (table_total_bytes, table_heap_bytes, indexes_bytes, pkey_bytes, row_estimate): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT pg_total_relation_size('claims'), pg_relation_size('claims'), pg_indexes_size('claims'),
                    pg_relation_size('claims_pkey'),
                    (SELECT reltuples::bigint FROM pg_class WHERE oid = 'claims'::regclass)",
        )
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(SeedReport {
        resource_id: resource.as_str().to_owned(),
        rows: args.claims,
        insert_seconds,
        rows_per_sec: args.claims as f64 / insert_seconds.max(f64::MIN_POSITIVE),
        table_total_bytes,
        table_heap_bytes,
        indexes_bytes,
        pkey_bytes,
        row_estimate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once() {
        assert_eq!(chunks(1_000, 500).collect::<Vec<_>>(), [(1, 500), (501, 1_000)]);
        assert_eq!(
            chunks(1_001, 500).collect::<Vec<_>>(),
            [(1, 500), (501, 1_000), (1_001, 1_001)]
        );
        assert_eq!(chunks(3, 500).collect::<Vec<_>>(), [(1, 3)]);
        assert_eq!(chunks(0, 500).count(), 0);
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
