//! The API keys a run sends: claims go with a claim key, coupons are
//! created with an admin key, and both belong to the tenant whose resources
//! and claims the audit reads.
//!
//! Keys given on the command line are looked up in the database the audit
//! reads, so a wrong or revoked key, a key of the wrong role or a pair from
//! two tenants stops the run before it sends anything. With no keys given,
//! the run mints its own pair in that database (the same
//! `turnstile_store::keys::create_key` that `claim-api keys create`
//! uses) and revokes them when it ends. The API's key ring looks up a key
//! it has not seen at once, so a minted key works on the first request.
//!
//! The `Authorization` values are built once, marked sensitive (so they
//! never show in debug output), and cloned per request: a reference count,
//! not an allocation.

use std::fmt;

use anyhow::{Context, Result, bail};
use clap::Args;
use hyper::header::HeaderValue;
use sqlx::PgPool;
use turnstile_claim::{
    TenantId,
    access::{ApiKey, Role},
};
use turnstile_store::keys;
use uuid::Uuid;

/// Which keys to send, as given on the command line. Its debug output
/// shows whether a key was given, never the key.
#[derive(Clone, Default, Args)]
pub struct KeyArgs {
    /// The claim key, sent with every claim (with `--admin-key`; without
    /// either, the run mints a pair in `--database-url`'s database).
    #[arg(long, env = "TURNSTILE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The admin key, sent to create the sale's coupons (with `--api-key`).
    #[arg(long, env = "TURNSTILE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// The tenant to mint keys for when none are given (default: `default`);
    /// with keys given, it must be theirs.
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: Option<TenantId>,
}

fn parse_tenant(raw: &str) -> Result<TenantId, String> {
    TenantId::parse(raw).map_err(|e| e.to_string())
}

impl fmt::Debug for KeyArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given = |key: &Option<String>| key.as_ref().map(|_| "..");
        f.debug_struct("KeyArgs")
            .field("api_key", &given(&self.api_key))
            .field("admin_key", &given(&self.admin_key))
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl KeyArgs {
    /// The claim key and the admin key, parsed; `None` when neither is given.
    fn given(&self) -> Result<Option<(ApiKey, ApiKey)>> {
        match (&self.api_key, &self.admin_key) {
            (None, None) => Ok(None),
            (Some(claim), Some(admin)) => Ok(Some((
                ApiKey::parse(claim.trim()).context("--api-key (TURNSTILE_API_KEY)")?,
                ApiKey::parse(admin.trim()).context("--admin-key (TURNSTILE_ADMIN_KEY)")?,
            ))),
            _ => bail!(
                "--api-key and --admin-key (TURNSTILE_API_KEY, TURNSTILE_ADMIN_KEY) go together: \
                 give both, or neither and loadtest mints a pair"
            ),
        }
    }
}

/// The keys of a run, ready to send, and the tenant they act in.
#[derive(Debug, Clone)]
pub struct Credentials {
    tenant: TenantId,
    /// `Bearer <claim key>`.
    claim: HeaderValue,
    /// `Bearer <admin key>`.
    admin: HeaderValue,
    /// The raw keys, to hand to runs that this one starts.
    keys: KeyArgs,
    /// Ids of the keys this run minted, revoked when it ends.
    minted: Vec<Uuid>,
}

impl Credentials {
    /// The keys `args` names, checked against the keys in force in `pool`'s
    /// database; with none named, a pair minted there (and one line on
    /// stderr saying so).
    pub async fn resolve(args: &KeyArgs, pool: &PgPool) -> Result<Self> {
        let Some((claim, admin)) = args.given()? else {
            let tenant = args.tenant.clone().unwrap_or_else(TenantId::default_tenant);
            let credentials = Self::mint(pool, &tenant).await?;
            eprintln!(
                "loadtest: minted an admin key and a claim key for tenant {} (no --api-key/--admin-key given)",
                tenant.as_str()
            );
            return Ok(credentials);
        };
        let in_force = keys::active_keys(pool)
            .await
            .context("reading the API keys in force (is the database migrated?)")?;
        let principal = |key: &ApiKey, option: &str, role: Role| {
            let digest = key.digest();
            let (_, principal) = in_force
                .iter()
                .find(|(d, _)| *d == digest)
                .with_context(|| format!("{option} is not a key in force in --database-url's database"))?;
            if principal.role != role {
                bail!("{option} is a {} key; it must be a {role} key", principal.role);
            }
            Ok(principal.tenant.clone())
        };
        let tenant = principal(&claim, "--api-key", Role::Claim)?;
        let admin_tenant = principal(&admin, "--admin-key", Role::Admin)?;
        if admin_tenant != tenant {
            bail!(
                "--api-key belongs to tenant {} and --admin-key to tenant {}: a sale needs both in one tenant",
                tenant.as_str(),
                admin_tenant.as_str()
            );
        }
        if let Some(named) = &args.tenant
            && *named != tenant
        {
            bail!(
                "--tenant {} is not the keys' tenant ({})",
                named.as_str(),
                tenant.as_str()
            );
        }
        Self::from_keys(tenant, &claim, &admin, Vec::new())
    }

    /// Mints a claim key and an admin key for `tenant` in `pool`'s database.
    pub async fn mint(pool: &PgPool, tenant: &TenantId) -> Result<Self> {
        let (claim_id, claim) = keys::create_key(pool, tenant, Role::Claim, Some("loadtest-claim"))
            .await
            .context("minting a claim key (is the database migrated?)")?;
        let (admin_id, admin) = keys::create_key(pool, tenant, Role::Admin, Some("loadtest-admin"))
            .await
            .context("minting an admin key")?;
        Self::from_keys(tenant.clone(), &claim, &admin, vec![claim_id, admin_id])
    }

    fn from_keys(tenant: TenantId, claim: &ApiKey, admin: &ApiKey, minted: Vec<Uuid>) -> Result<Self> {
        Ok(Self {
            claim: bearer(claim)?,
            admin: bearer(admin)?,
            keys: KeyArgs {
                api_key: Some(claim.reveal().to_owned()),
                admin_key: Some(admin.reveal().to_owned()),
                tenant: Some(tenant.clone()),
            },
            tenant,
            minted,
        })
    }

    /// The tenant the keys act in: the audit reads its resources and claims.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// `Authorization` for claims (and reads).
    pub fn claim_authorization(&self) -> &HeaderValue {
        &self.claim
    }

    /// `Authorization` for creating coupons and SKUs.
    pub fn admin_authorization(&self) -> &HeaderValue {
        &self.admin
    }

    /// The same keys as command-line arguments, for the runs this one
    /// starts (a `compare` hands them to both of its sales): they use
    /// them, and neither mints nor revokes.
    pub fn as_args(&self) -> KeyArgs {
        self.keys.clone()
    }

    /// Revokes the keys this run minted (none when they were given). Best
    /// effort: a key left behind is useless without its secret, which was
    /// never stored.
    pub async fn revoke_minted(&self, pool: &PgPool) {
        for key_id in &self.minted {
            if let Err(e) = keys::revoke_key(pool, *key_id).await {
                tracing::warn!(%key_id, error = %e, "revoking a minted API key failed");
            }
        }
    }
}

/// Runs `work` with the keys `args` names or, when it names none, a pair
/// minted in `database_url`'s database for it and revoked after it,
/// whatever `work` returned.
pub async fn with_credentials<T>(
    args: &KeyArgs,
    database_url: &str,
    work: impl AsyncFnOnce(&Credentials) -> Result<T>,
) -> Result<T> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .context("connecting to postgres for the API keys")?;
    let credentials = Credentials::resolve(args, &pool).await?;
    let outcome = work(&credentials).await;
    credentials.revoke_minted(&pool).await;
    pool.close().await;
    outcome
}

fn bearer(key: &ApiKey) -> Result<HeaderValue> {
    let mut value =
        HeaderValue::try_from(format!("Bearer {}", key.reveal())).context("an API key is not a header value")?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        keys: KeyArgs,
    }

    #[test]
    fn authorization_is_a_bearer_value_hidden_from_debug_output() {
        let (claim, admin) = (ApiKey::generate(), ApiKey::generate());
        let credentials = Credentials::from_keys(TenantId::default_tenant(), &claim, &admin, Vec::new()).unwrap();
        assert_eq!(
            credentials.claim_authorization().to_str().unwrap(),
            format!("Bearer {}", claim.reveal())
        );
        assert_eq!(
            credentials.admin_authorization().to_str().unwrap(),
            format!("Bearer {}", admin.reveal())
        );
        assert!(credentials.claim_authorization().is_sensitive());
        let debug = format!("{:?}", credentials.claim_authorization());
        assert!(!debug.contains(&claim.reveal()[4..]), "{debug}");
        assert!(!format!("{credentials:?}").contains(&claim.reveal()[4..]));
        assert!(!format!("{credentials:?}").contains(&admin.reveal()[4..]));
        // Handed on, the same keys come back as given ones.
        let again = credentials.as_args();
        assert_eq!(again.api_key.as_deref(), Some(claim.reveal()));
        assert_eq!(again.admin_key.as_deref(), Some(admin.reveal()));
        assert_eq!(again.tenant, Some(TenantId::default_tenant()));
    }

    #[test]
    fn keys_are_given_both_or_neither_and_well_formed() {
        let (claim, admin) = (ApiKey::generate(), ApiKey::generate());
        let keys = |args: &[&str]| {
            let mut argv = vec!["t"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap().keys
        };
        assert!(keys(&[]).given().unwrap().is_none());
        let both = keys(&["--api-key", claim.reveal(), "--admin-key", admin.reveal()]);
        assert_eq!(both.given().unwrap(), Some((claim.clone(), admin.clone())));
        assert!(keys(&["--api-key", claim.reveal()]).given().is_err());
        assert!(keys(&["--admin-key", admin.reveal()]).given().is_err());
        let malformed = keys(&["--api-key", "tsk_short", "--admin-key", admin.reveal()]);
        assert!(malformed.given().is_err());
        assert!(Cli::try_parse_from(["t", "--tenant", "no/slash"]).is_err());
        assert_eq!(keys(&["--tenant", "acme"]).tenant.unwrap().as_str(), "acme");
    }
}
