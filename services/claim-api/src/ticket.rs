//! Tickets: a refused claim's place in line, signed so that only the API
//! can have made it.
//!
//! A `429` for load (not for a caller's own rate) carries a
//! `Turnstile-Ticket` header. It names the time of the claim's first
//! attempt, and an HMAC binds that time to the caller's tenant and the
//! request's `Idempotency-Key`. A retry that presents it waits for a slot
//! ahead of every claim first seen later ([`crate::admission`]), so a
//! shopper keeps the place they had when they first knocked, however
//! often they are sent away.
//!
//! A ticket is worth nothing to anyone else: another tenant or another key
//! (transplanted), an unknown key id or a wrong MAC (forged), or a first
//! attempt older than `TURNSTILE_TICKET_TTL` (expired) or in the future
//! (past [`CLOCK_SKEW_MS`]) all read as no ticket at all, so the request is a
//! newcomer. Nothing is stored per ticket: the API that checks it needs only
//! the keys.
//!
//! Format: `1.<key id>.<first attempt, Unix ms>.<MAC, 32 hex digits>`, the
//! MAC being HMAC-SHA256 truncated to 128 bits over a domain tag and the
//! length-prefixed tenant, key and time. The keys come from
//! `TURNSTILE_TICKET_KEYS` (`id=secret,...`): the first signs and every one
//! verifies, so a key is rotated by putting the new one first and dropping
//! the old one a TTL later. Unset, the API draws a random key at start-up,
//! which only that process knows: replicas behind one balancer need the
//! setting.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far in the future a ticket's first attempt may lie (another
/// replica's clock).
pub const CLOCK_SKEW_MS: u64 = 5_000;

/// Bytes of the MAC kept: 128 bits.
const MAC_BYTES: usize = 16;

/// The format's version, the first field.
const VERSION: &str = "1";

/// Separates the MAC's input from any other use of the same key.
const DOMAIN: &[u8] = b"turnstile-ticket/1";

/// The longest secret accepted, and the shortest.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=256;

/// The keys that sign and verify tickets. `Debug` names the key ids, never
/// a secret.
#[derive(Clone)]
pub struct TicketKeys {
    /// The first signs; all verify.
    keys: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("TicketKeys")
            .field("ids", &ids)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

/// Why `TURNSTILE_TICKET_KEYS` was refused (the secret is never quoted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketKeysError {
    #[error("expected id=secret[,id=secret...]")]
    Shape,
    #[error("key id {0:?}: expected 1 to 16 ASCII letters and digits")]
    Id(String),
    #[error("key {0:?}: the secret must be 16 to 256 bytes")]
    Secret(String),
    #[error("key id {0:?} appears twice")]
    Duplicate(String),
}

impl TicketKeys {
    /// Parses `id=secret[,id=secret...]`; the first key signs.
    pub fn parse(raw: &str) -> Result<Self, TicketKeysError> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in raw.split(',') {
            let (id, secret) = entry.trim().split_once('=').ok_or(TicketKeysError::Shape)?;
            if !(1..=16).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(TicketKeysError::Id(id.to_owned()));
            }
            if !SECRET_BYTES.contains(&secret.len()) {
                return Err(TicketKeysError::Secret(id.to_owned()));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(TicketKeysError::Duplicate(id.to_owned()));
            }
            keys.push((id.to_owned(), secret.as_bytes().to_vec()));
        }
        Ok(Self { keys })
    }

    /// One key of 32 random bytes, known to this process alone.
    pub fn random() -> Self {
        Self {
            keys: vec![("local".to_owned(), rand::random::<[u8; 32]>().to_vec())],
        }
    }

    /// The ticket of a claim of `tenant` under `key`, first attempted at
    /// `first_attempt_ms` (Unix ms).
    pub fn sign(&self, tenant: &str, key: &str, first_attempt_ms: u64) -> String {
        let (id, secret) = &self.keys[0];
        let mac = mac(secret, tenant, key, first_attempt_ms).finalize().into_bytes();
        format!("{VERSION}.{id}.{first_attempt_ms}.{}", hex::encode(&mac[..MAC_BYTES]))
    }

    /// The first attempt a ticket vouches for, if it is this API's ticket
    /// for this tenant and key and has not expired by `now_ms`.
    pub fn verify(&self, ticket: &str, tenant: &str, key: &str, now_ms: u64, ttl_ms: u64) -> Option<u64> {
        let mut fields = ticket.split('.');
        let (version, id, at, tag) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        if version != VERSION || fields.next().is_some() || tag.len() != 2 * MAC_BYTES {
            return None;
        }
        let first_attempt_ms: u64 = at.parse().ok()?;
        if first_attempt_ms > now_ms.saturating_add(CLOCK_SKEW_MS) || now_ms.saturating_sub(first_attempt_ms) > ttl_ms {
            return None;
        }
        let (_, secret) = self.keys.iter().find(|(known, _)| known == id)?;
        let mut tag_bytes = [0u8; MAC_BYTES];
        hex::decode_to_slice(tag, &mut tag_bytes).ok()?;
        // Constant time: a forger learns nothing from how long it took.
        mac(secret, tenant, key, first_attempt_ms)
            .verify_truncated_left(&tag_bytes)
            .ok()?;
        Some(first_attempt_ms)
    }
}

/// The MAC over the domain tag and the length-prefixed fields, so that no
/// two different (tenant, key, time) share an input.
fn mac(secret: &[u8], tenant: &str, key: &str, first_attempt_ms: u64) -> HmacSha256 {
    // Any key length is valid for HMAC.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("hmac takes any key"));
    mac.update(DOMAIN);
    for field in [tenant.as_bytes(), key.as_bytes()] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac.update(&first_attempt_ms.to_be_bytes());
    mac
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    const TTL: u64 = 120_000;
    const NOW: u64 = 1_800_000_000_000;

    fn keys() -> TicketKeys {
        TicketKeys::parse("k2=0123456789abcdef0123456789abcdef,k1=fedcba9876543210fedcba9876543210").unwrap()
    }

    #[test]
    fn a_ticket_vouches_for_its_first_attempt() {
        let keys = keys();
        let ticket = keys.sign("acme", "order-1", NOW - 1_500);
        assert!(ticket.starts_with("1.k2."), "{ticket}");
        assert_eq!(keys.verify(&ticket, "acme", "order-1", NOW, TTL), Some(NOW - 1_500));
    }

    #[test]
    fn a_transplanted_ticket_is_no_ticket() {
        let keys = keys();
        let ticket = keys.sign("acme", "order-1", NOW);
        assert_eq!(
            keys.verify(&ticket, "other", "order-1", NOW, TTL),
            None,
            "another tenant"
        );
        assert_eq!(keys.verify(&ticket, "acme", "order-2", NOW, TTL), None, "another key");
        // The length prefixes keep a boundary shift from matching.
        let shifted = keys.sign("ac", "meorder-1", NOW);
        assert_eq!(keys.verify(&shifted, "acme", "order-1", NOW, TTL), None);
    }

    #[test]
    fn a_forged_ticket_is_no_ticket() {
        let keys = keys();
        let ticket = keys.sign("acme", "order-1", NOW);
        // An earlier first attempt, claimed by editing the time.
        let earlier = ticket.replacen(&NOW.to_string(), &(NOW - 60_000).to_string(), 1);
        assert_eq!(keys.verify(&earlier, "acme", "order-1", NOW, TTL), None);
        let stranger = TicketKeys::parse("k2=another-secret-of-16-bytes-or-more").unwrap();
        let forged = stranger.sign("acme", "order-1", NOW);
        assert_eq!(
            keys.verify(&forged, "acme", "order-1", NOW, TTL),
            None,
            "same id, other secret"
        );
        for junk in [
            "",
            "1",
            "1.k2",
            "2.k2.1.00",
            "1.k2.x.00000000000000000000000000000000",
            "1.k9.1.00000000000000000000000000000000",
        ] {
            assert_eq!(keys.verify(junk, "acme", "order-1", NOW, TTL), None, "{junk}");
        }
        let extra = format!("{ticket}.more");
        assert_eq!(keys.verify(&extra, "acme", "order-1", NOW, TTL), None);
    }

    #[test]
    fn an_expired_or_future_ticket_is_no_ticket() {
        let keys = keys();
        let old = keys.sign("acme", "order-1", NOW - TTL - 1);
        assert_eq!(keys.verify(&old, "acme", "order-1", NOW, TTL), None);
        let future = keys.sign("acme", "order-1", NOW + CLOCK_SKEW_MS + 1);
        assert_eq!(keys.verify(&future, "acme", "order-1", NOW, TTL), None);
        let skewed = keys.sign("acme", "order-1", NOW + CLOCK_SKEW_MS);
        assert_eq!(
            keys.verify(&skewed, "acme", "order-1", NOW, TTL),
            Some(NOW + CLOCK_SKEW_MS)
        );
    }

    #[test]
    fn a_retired_signing_key_still_verifies_until_dropped() {
        let old = TicketKeys::parse("k1=fedcba9876543210fedcba9876543210").unwrap();
        let ticket = old.sign("acme", "order-1", NOW);
        assert_eq!(
            keys().verify(&ticket, "acme", "order-1", NOW, TTL),
            Some(NOW),
            "k1 still verifies"
        );
        let rotated = TicketKeys::parse("k3=0000111122223333444455556666").unwrap();
        assert_eq!(rotated.verify(&ticket, "acme", "order-1", NOW, TTL), None, "k1 dropped");
    }

    #[test]
    fn bad_key_settings_are_refused_without_quoting_the_secret() {
        assert_eq!(TicketKeys::parse("nosecret").unwrap_err(), TicketKeysError::Shape);
        assert!(matches!(TicketKeys::parse("a=short"), Err(TicketKeysError::Secret(id)) if id == "a"));
        assert!(matches!(
            TicketKeys::parse("b-ad=0123456789abcdef"),
            Err(TicketKeysError::Id(_))
        ));
        assert!(matches!(
            TicketKeys::parse("a=0123456789abcdef,a=0123456789abcdeg"),
            Err(TicketKeysError::Duplicate(_))
        ));
        let keys = keys();
        let shown = format!("{keys:?}");
        assert!(shown.contains("k2") && !shown.contains("0123456789abcdef"), "{shown}");
    }

    proptest! {
        #[test]
        fn only_the_signed_triple_verifies(
            tenant in "[a-z]{1,8}", key in "[ -~]{1,40}", other in "[ -~]{1,40}", back in 0u64..TTL,
        ) {
            let keys = keys();
            let ticket = keys.sign(&tenant, &key, NOW - back);
            prop_assert_eq!(keys.verify(&ticket, &tenant, &key, NOW, TTL), Some(NOW - back));
            if other != key {
                prop_assert_eq!(keys.verify(&ticket, &tenant, &other, NOW, TTL), None);
            }
        }
    }
}
