//! API keys: created, listed and revoked by `claim-api keys`, and read in
//! full by the services' key rings, which refresh from here instead of
//! asking for every request.

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;
use turnstile_claim::{
    TenantId,
    access::{ApiKey, KeyDigest, KeySource, KeysInForce, Principal, Role},
};

/// A key as listed: everything but the key itself, which is not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's id.
    pub key_id: Uuid,
    /// Its tenant.
    pub tenant_id: String,
    /// `admin` or `claim`.
    pub role: String,
    /// What its owner called it.
    pub name: Option<String>,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
}

/// Creates a key for `tenant` with `role` and returns it: the only time the
/// key itself exists outside its owner's hands.
pub async fn create_key(
    pool: &PgPool,
    tenant: &TenantId,
    role: Role,
    name: Option<&str>,
) -> Result<(Uuid, ApiKey), StoreError> {
    let key = ApiKey::generate();
    let key_id = Uuid::now_v7();
    let digest = key.digest();
    sqlx::query!(
        "INSERT INTO api_keys (key_id, tenant_id, role, name, digest) VALUES ($1, $2, $3, $4, $5)",
        key_id,
        tenant.as_str(),
        role.as_str(),
        name,
        &digest.as_bytes()[..],
    )
    .execute(pool)
    .await?;
    Ok((key_id, key))
}

/// Every key, or one tenant's, oldest first.
pub async fn list_keys(pool: &PgPool, tenant: Option<&TenantId>) -> Result<Vec<KeyRecord>, StoreError> {
    Ok(sqlx::query_as!(
        KeyRecord,
        "SELECT key_id, tenant_id, role, name, created_at, revoked_at FROM api_keys
          WHERE $1::text IS NULL OR tenant_id = $1
          ORDER BY created_at, key_id",
        tenant.map(TenantId::as_str),
    )
    .fetch_all(pool)
    .await?)
}

/// Revokes a key. Returns `false` when no unrevoked key has this id.
pub async fn revoke_key(pool: &PgPool, key_id: Uuid) -> Result<bool, StoreError> {
    let revoked = sqlx::query!(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
        key_id,
    )
    .execute(pool)
    .await?;
    Ok(revoked.rows_affected() == 1)
}

/// The keys in force in a database, for a key ring.
#[derive(Debug, Clone)]
pub struct StoredKeys(pub PgPool);

impl KeySource for StoredKeys {
    fn keys_in_force(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = KeysInForce> + Send + '_>> {
        Box::pin(async move { active_keys(&self.0).await.map_err(|e| Box::new(e) as _) })
    }
}

/// Every key in force, with whom it stands for. Rows that do not parse
/// (edited by hand) are left out: such a key does not authenticate.
pub async fn active_keys(pool: &PgPool) -> Result<Vec<(KeyDigest, Principal)>, StoreError> {
    let rows = sqlx::query!("SELECT key_id, tenant_id, role, digest FROM api_keys WHERE revoked_at IS NULL")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some((
                KeyDigest::from_stored(&r.digest)?,
                Principal {
                    key_id: r.key_id,
                    tenant: TenantId::parse(&r.tenant_id).ok()?,
                    role: r.role.parse().ok()?,
                },
            ))
        })
        .collect())
}
