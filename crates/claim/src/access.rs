//! Who may do what: API keys, the roles they carry and the tenant they
//! belong to. Pure; the keys are stored by [`crate::store::keys`] and
//! checked at the HTTP edge (`turnstile-http`'s `auth`).
//!
//! A key is `tsk_` followed by 64 hex digits (256 random bits). Only its
//! SHA-256 digest is stored, so the database never holds a usable key; the
//! key's entropy is what makes a fast digest safe where a password would
//! need a slow one.

use std::{fmt, str::FromStr};

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{ParseError, TenantId};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Creates and reads the tenant's coupons and SKUs, reads its claims.
    Admin,
    /// Posts claims, reads the tenant's claims and resources.
    Claim,
}

impl Role {
    /// The name stored and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Claim => "claim",
        }
    }

    /// Whether this role may perform `operation`.
    pub const fn permits(self, operation: Operation) -> bool {
        match operation {
            Operation::ManageResources => matches!(self, Self::Admin),
            Operation::PostClaims => matches!(self, Self::Claim),
            Operation::Read => true,
        }
    }
}

impl FromStr for Role {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "claim" => Ok(Self::Claim),
            _ => Err(ParseError::new("role", "must be admin or claim")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request asks to do, as far as roles are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Create coupons and SKUs.
    ManageResources,
    /// Post claims.
    PostClaims,
    /// Read the tenant's resources and claims.
    Read,
}

/// The SHA-256 digest of a key: what is stored and what keys are looked up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Wraps a stored digest; `None` unless it is 32 bytes.
    pub fn from_stored(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The digest's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell keys apart in a log, not enough to matter.
        write!(f, "KeyDigest({}…)", hex::encode(&self.0[..4]))
    }
}

/// An API key in full, as the client sends it. Never logged, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    const PREFIX: &'static str = "tsk_";
    const HEX_LEN: usize = 64;

    /// A new key from the thread's cryptographically secure generator.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self(format!("{}{}", Self::PREFIX, hex::encode(secret)))
    }

    fn well_formed(raw: &str) -> bool {
        raw.strip_prefix(Self::PREFIX).is_some_and(|hex| {
            hex.len() == Self::HEX_LEN && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }

    /// Parses a key as sent (`tsk_` and 64 lowercase hex digits).
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if Self::well_formed(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new("api key", "must be tsk_ followed by 64 hex digits"))
        }
    }

    /// The digest of a key as sent, if it is well-formed: what a request
    /// is checked by, without copying the key.
    pub fn digest_of(raw: &str) -> Option<KeyDigest> {
        Self::well_formed(raw).then(|| KeyDigest(Sha256::digest(raw.as_bytes()).into()))
    }

    /// The digest the key is stored and looked up by.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The key, to show once to whoever created it.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// Who a request comes from: a key's identity, tenant and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (safe to log; the key itself never is).
    pub key_id: Uuid,
    /// The only tenant it may see or act in.
    pub tenant: TenantId,
    /// What it may do there.
    pub role: Role,
}

impl Principal {
    /// Whether it may perform `operation`.
    pub fn may(&self, operation: Operation) -> bool {
        self.role.permits(operation)
    }
}

/// The keys in force, each as its digest and who it speaks for, or why
/// they could not be read.
pub type KeysInForce = Result<Vec<(KeyDigest, Principal)>, Box<dyn std::error::Error + Send + Sync>>;

/// Where the keys in force are read from. The HTTP edge's key ring
/// refreshes from one; `turnstile-store` reads them from Postgres. A trait
/// here, so the edge needs no store and the store no edge.
pub trait KeySource: Send + Sync + 'static {
    /// Every key that is not revoked.
    fn keys_in_force(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = KeysInForce> + Send + '_>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert_ne!(a, b);
        assert_eq!(ApiKey::parse(a.reveal()).unwrap(), a);
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), ApiKey::parse(a.reveal()).unwrap().digest());
        assert_eq!(ApiKey::digest_of(a.reveal()), Some(a.digest()));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = ApiKey::generate();
        let hex = &good.reveal()[4..];
        for bad in [
            String::new(),
            hex.to_owned(),
            format!("tsk_{}", &hex[1..]),
            format!("tsk_{hex}0"),
            format!("tsk_{}", hex.to_uppercase()),
            format!("tsk_{}g", &hex[1..]),
            format!("TSK_{hex}"),
        ] {
            assert!(ApiKey::parse(&bad).is_err(), "{bad:?} parsed");
            assert!(ApiKey::digest_of(&bad).is_none(), "{bad:?} digested");
        }
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let key = ApiKey::generate();
        assert!(!format!("{key:?}").contains(&key.reveal()[4..]));
        assert!(!format!("{:?}", key.digest()).contains(&hex::encode(key.digest().as_bytes())));
    }

    #[test]
    fn roles_permit_what_they_say() {
        use Operation::*;
        assert!(Role::Admin.permits(ManageResources) && Role::Admin.permits(Read));
        assert!(!Role::Admin.permits(PostClaims));
        assert!(Role::Claim.permits(PostClaims) && Role::Claim.permits(Read));
        assert!(!Role::Claim.permits(ManageResources));
        for role in [Role::Admin, Role::Claim] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
