//! Domain types that parse, never merely validate: a value of one of these
//! types is valid by construction.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a raw value was refused. The message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ParseError {
    /// The offending field, as the client spelled it.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl ParseError {
    pub(crate) const fn new(field: &'static str, problem: &'static str) -> Self {
        Self { field, problem }
    }
}

fn visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// What kind of thing is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A coupon code: one unit per claim, optionally limited per user.
    Coupon,
    /// A stock keeping unit: any quantity per claim.
    Sku,
}

impl ResourceKind {
    /// The name used in keys, SQL and events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Coupon => "coupon",
            Self::Sku => "sku",
        }
    }
}

impl FromStr for ResourceKind {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coupon" => Ok(Self::Coupon),
            "sku" => Ok(Self::Sku),
            _ => Err(ParseError::new("kind", "must be coupon or sku")),
        }
    }
}

/// A coupon code or SKU: 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceId(String);

impl ResourceId {
    /// Parses a code or SKU; `field` names it in the error.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(ParseError::new(field, "must be 1 to 64 characters"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(ParseError::new(
                field,
                "may only contain A-Z, a-z, 0-9, '_', '-' and '.'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The code or SKU.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ResourceId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("resource", &value)
    }
}

impl From<ResourceId> for String {
    fn from(value: ResourceId) -> Self {
        value.0
    }
}

/// One claimable thing: a tenant's coupon or SKU. The same code in two
/// tenants is two resources. Its display form (`acme/coupon:SPRING`) is the
/// Kafka message key, the lock's resource name and the cache key, so every
/// claim for it lands in one partition and under one lock, and no two
/// tenants ever share either.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    /// The tenant that owns it.
    pub tenant: TenantId,
    /// Coupon or SKU.
    pub kind: ResourceKind,
    /// The code or SKU.
    pub id: ResourceId,
}

impl ResourceKey {
    /// A tenant's coupon.
    pub fn coupon(tenant: TenantId, id: ResourceId) -> Self {
        Self {
            tenant,
            kind: ResourceKind::Coupon,
            id,
        }
    }

    /// A tenant's SKU.
    pub fn sku(tenant: TenantId, id: ResourceId) -> Self {
        Self {
            tenant,
            kind: ResourceKind::Sku,
            id,
        }
    }

    /// The resource as its owner names it (`coupon:SPRING`), for messages
    /// shown to that owner.
    pub fn local_name(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id.as_str())
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tenant alphabet has no '/', so the split is unambiguous.
        write!(
            f,
            "{}/{}:{}",
            self.tenant.as_str(),
            self.kind.as_str(),
            self.id.as_str()
        )
    }
}

/// The person claiming: 1 to 128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Parses a user id.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > 128 || !visible_ascii(raw) {
            return Err(ParseError::new("user_id", "must be 1 to 128 visible ASCII characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> Self {
        value.0
    }
}

/// Units claimed at once: 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    /// The largest quantity one claim may ask for.
    pub const MAX: u32 = 1000;
    /// One unit.
    pub const ONE: Self = Self(1);

    /// Parses a quantity.
    pub fn parse(raw: i64) -> Result<Self, ParseError> {
        match u32::try_from(raw) {
            Ok(q) if (1..=Self::MAX).contains(&q) => Ok(Self(q)),
            _ => Err(ParseError::new("quantity", "must be an integer from 1 to 1000")),
        }
    }

    /// The number of units.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = ParseError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<Quantity> for u32 {
    fn from(value: Quantity) -> Self {
        value.0
    }
}

/// An instant on the wire, in Unix milliseconds, bounded to years 2000
/// through 9999: every value converts to a Postgres `timestamptz`, and an
/// absurd one is refused when the event is decoded rather than failing a
/// statement later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct UnixMillis(i64);

impl UnixMillis {
    /// 2000-01-01T00:00:00Z.
    const EARLIEST: i64 = 946_684_800_000;
    /// 9999-12-31T23:59:59.999Z.
    const LATEST: i64 = 253_402_300_799_999;

    /// Parses milliseconds since the Unix epoch.
    pub fn parse(raw: i64) -> Result<Self, ParseError> {
        if (Self::EARLIEST..=Self::LATEST).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(ParseError::new(
                "timestamp",
                "must be a Unix time in milliseconds from year 2000 to 9999",
            ))
        }
    }

    /// The system clock's current time (clamped into range).
    pub fn now() -> Self {
        let ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        Self(
            i64::try_from(ms)
                .unwrap_or(Self::LATEST)
                .clamp(Self::EARLIEST, Self::LATEST),
        )
    }

    /// Milliseconds since the Unix epoch.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for UnixMillis {
    type Error = ParseError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<UnixMillis> for i64 {
    fn from(value: UnixMillis) -> Self {
        value.0
    }
}

/// The tenant a credential belongs to; resources, idempotency keys and
/// claims are scoped by it. 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
/// Shared, not copied, when cloned: every claim request clones its
/// caller's tenant into the principal, the resource key and the event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// The tenant that rows from before tenants existed were moved into.
    pub fn default_tenant() -> Self {
        Self(Arc::from("default"))
    }

    /// Parses a tenant id.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        ResourceId::parse("tenant", raw).map(|id| Self(Arc::from(id.0)))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0.as_ref().to_owned()
    }
}

/// An `Idempotency-Key` header value: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > 255 || !visible_ascii(raw) {
            return Err(ParseError::new(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A claim's id. Derived from the tenant and the idempotency key (UUID v5),
/// so a retried request names the same claim even after a failure that lost
/// the idempotency record, and two attempts can never create two claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClaimId(Uuid);

/// The UUID v5 namespace of claim ids.
const CLAIM_NAMESPACE: Uuid = Uuid::from_u128(0x7a1e_5c0d_4f8b_4c3a_9d2e_6b1f_0a7c_3e55);

impl ClaimId {
    /// The claim id for `key` under `tenant`.
    pub fn for_request(tenant: &TenantId, key: &IdempotencyKey) -> Self {
        let mut name = Vec::with_capacity(tenant.as_str().len() + 1 + key.as_str().len());
        name.extend_from_slice(tenant.as_str().as_bytes());
        // The tenant alphabet has no NUL, so the split is unambiguous.
        name.push(0);
        name.extend_from_slice(key.as_str().as_bytes());
        Self(Uuid::new_v5(&CLAIM_NAMESPACE, &name))
    }

    /// Wraps a stored id.
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ClaimId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimStatus {
    /// Accepted, not yet decided.
    Pending,
    /// Units were taken for the user.
    Granted,
    /// Refused; see the reason.
    Rejected,
}

impl ClaimStatus {
    /// The name used in SQL and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Granted => "granted",
            Self::Rejected => "rejected",
        }
    }
}

impl FromStr for ClaimStatus {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "granted" => Ok(Self::Granted),
            "rejected" => Ok(Self::Rejected),
            _ => Err(ParseError::new("status", "unknown claim status")),
        }
    }
}

/// Why a claim was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Nothing left.
    SoldOut,
    /// Some left, but fewer than asked for.
    InsufficientStock,
    /// The user already holds as many as the coupon allows.
    PerUserLimit,
    /// No such coupon or SKU.
    UnknownResource,
    /// The stored claim is not a valid claim (a row written or altered
    /// outside the API); it is decided so that it cannot stay pending.
    InvalidClaim,
}

impl RejectReason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [Self; 5] = [
        Self::SoldOut,
        Self::InsufficientStock,
        Self::PerUserLimit,
        Self::UnknownResource,
        Self::InvalidClaim,
    ];

    /// The name used in SQL and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SoldOut => "sold_out",
            Self::InsufficientStock => "insufficient_stock",
            Self::PerUserLimit => "per_user_limit",
            Self::UnknownResource => "unknown_resource",
            Self::InvalidClaim => "invalid_claim",
        }
    }
}

impl FromStr for RejectReason {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sold_out" => Ok(Self::SoldOut),
            "insufficient_stock" => Ok(Self::InsufficientStock),
            "per_user_limit" => Ok(Self::PerUserLimit),
            "unknown_resource" => Ok(Self::UnknownResource),
            "invalid_claim" => Ok(Self::InvalidClaim),
            _ => Err(ParseError::new("reason", "unknown reject reason")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_are_restricted() {
        assert!(ResourceId::parse("coupon", "SPRING-25").is_ok());
        assert!(ResourceId::parse("coupon", "").is_err());
        assert!(ResourceId::parse("coupon", "has space").is_err());
        assert!(ResourceId::parse("coupon", &"x".repeat(65)).is_err());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("with space").is_err());
        assert!(IdempotencyKey::parse("naïve").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }

    #[test]
    fn quantity_bounds() {
        assert!(Quantity::parse(0).is_err());
        assert!(Quantity::parse(-1).is_err());
        assert_eq!(Quantity::parse(1000).map(Quantity::get), Ok(1000));
        assert!(Quantity::parse(1001).is_err());
    }

    #[test]
    fn unix_millis_bounds() {
        assert!(UnixMillis::parse(0).is_err());
        assert!(UnixMillis::parse(-1).is_err());
        assert!(UnixMillis::parse(i64::MAX).is_err());
        assert_eq!(
            UnixMillis::parse(1_795_000_000_000).map(UnixMillis::get),
            Ok(1_795_000_000_000)
        );
        assert!(UnixMillis::parse(UnixMillis::now().get()).is_ok());
    }

    #[test]
    fn reject_reasons_round_trip() {
        for reason in RejectReason::ALL {
            assert_eq!(reason.as_str().parse::<RejectReason>(), Ok(reason));
        }
    }

    #[test]
    fn claim_ids_are_scoped_by_tenant_and_stable() {
        let key = IdempotencyKey::parse("k-1").unwrap();
        let a = TenantId::parse("a").unwrap();
        let b = TenantId::parse("b").unwrap();
        assert_eq!(ClaimId::for_request(&a, &key), ClaimId::for_request(&a, &key));
        assert_ne!(ClaimId::for_request(&a, &key), ClaimId::for_request(&b, &key));
    }

    #[test]
    fn resource_key_is_the_kafka_key() {
        let key = ResourceKey::coupon(
            TenantId::parse("acme").unwrap(),
            ResourceId::parse("coupon", "SPRING").unwrap(),
        );
        assert_eq!(key.to_string(), "acme/coupon:SPRING");
        assert_eq!(key.local_name(), "coupon:SPRING");
        let other = ResourceKey::coupon(
            TenantId::parse("beta").unwrap(),
            ResourceId::parse("coupon", "SPRING").unwrap(),
        );
        assert_ne!(key.to_string(), other.to_string());
    }
}
