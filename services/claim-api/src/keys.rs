//! `claim-api keys`: API keys are managed with the service's own binary,
//! against `DATABASE_URL`, so there is nothing else to install or secure.
//!
//! `create` prints the new key, and nothing else, as one line on standard
//! output (`KEY=$(claim-api keys create ...)` works); what it is and where
//! it was stored go to standard error. The key is not stored, only its
//! digest: lost keys are revoked and replaced, never recovered.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use turnstile_claim::{TenantId, access::Role};
use turnstile_store as store;
use uuid::Uuid;

/// `claim-api keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Creates a key and prints it on one line.
    Create(CreateArgs),
    /// Lists keys (never the keys themselves: only digests are stored).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revokes a key by id; services stop accepting it within
    /// `TURNSTILE_KEY_REFRESH` (at most 5 s).
    Revoke {
        /// The key's id, as `list` shows it.
        id: Uuid,
    },
}

/// `claim-api keys create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The tenant the key acts for: 1 to 64 of `A-Z a-z 0-9 _ - .`.
    #[arg(long)]
    tenant: String,
    /// `admin` (creates and reads coupons and SKUs, reads claims) or
    /// `claim` (posts claims, reads claims and stock).
    #[arg(long)]
    role: String,
    /// A name to recognise the key by in `list`.
    #[arg(long)]
    name: Option<String>,
}

/// Runs a `keys` command against `database_url`, migrating it first.
pub async fn run(command: KeysCommand, database_url: &str) -> anyhow::Result<()> {
    let pool = store::connect(database_url, 1, std::time::Duration::from_secs(5))
        .await
        .context("connecting to postgres (DATABASE_URL)")?;
    store::migrate(&pool).await.context("applying migrations")?;
    let mut out = std::io::stdout().lock();
    match command {
        KeysCommand::Create(args) => {
            let tenant = TenantId::parse(&args.tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
            let role: Role = args.role.parse().map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let (id, key) = store::keys::create_key(&pool, &tenant, role, args.name.as_deref()).await?;
            writeln!(out, "{}", key.reveal())?;
            eprintln!(
                "created {role} key {id} for tenant {}; it is shown only once",
                tenant.as_str()
            );
        }
        KeysCommand::List { tenant } => {
            let tenant = tenant
                .map(|t| TenantId::parse(&t).map_err(|e| anyhow::anyhow!("--tenant: {e}")))
                .transpose()?;
            writeln!(
                out,
                "{:<36}  {:<20}  {:<5}  {:<20}  {:<20}  revoked",
                "id", "tenant", "role", "name", "created"
            )?;
            for key in store::keys::list_keys(&pool, tenant.as_ref()).await? {
                let when = |t: time::OffsetDateTime| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_else(|_| t.to_string())
                };
                writeln!(
                    out,
                    "{:<36}  {:<20}  {:<5}  {:<20}  {:<20}  {}",
                    key.key_id,
                    key.tenant_id,
                    key.role,
                    key.name.as_deref().unwrap_or("-"),
                    when(key.created_at),
                    key.revoked_at.map_or_else(|| "-".to_owned(), when),
                )?;
            }
        }
        KeysCommand::Revoke { id } => {
            anyhow::ensure!(store::keys::revoke_key(&pool, id).await?, "no key in force has id {id}");
            eprintln!("revoked key {id}; services refuse it within TURNSTILE_KEY_REFRESH (at most 5 s)");
        }
    }
    Ok(())
}
