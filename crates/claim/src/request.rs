//! The body of `POST /v1/claims`, parsed into a [`ClaimRequest`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ParseError, Quantity, ResourceId, ResourceKey, ResourceKind, TenantId, UserId};

/// The JSON body as sent. Unknown fields are refused, so a typo such as
/// `"quantitiy"` is an error rather than a silent default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequestBody {
    /// A coupon code; exactly one of `coupon` and `sku` is required.
    pub coupon: Option<String>,
    /// A SKU; exactly one of `coupon` and `sku` is required.
    pub sku: Option<String>,
    /// Who claims.
    pub user_id: String,
    /// Units (SKUs only; coupons are one unit per claim). Defaults to 1.
    pub quantity: Option<i64>,
}

/// A valid claim request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimRequest {
    /// What is claimed.
    pub resource: ResourceKey,
    /// Who claims.
    pub user: UserId,
    /// How many units.
    pub quantity: Quantity,
}

impl ClaimRequestBody {
    /// Checks every rule and builds the request, for a resource of
    /// `tenant` (the caller's: the body cannot name another).
    pub fn parse(self, tenant: TenantId) -> Result<ClaimRequest, ParseError> {
        let resource = match (self.coupon, self.sku) {
            (Some(code), None) => ResourceKey::coupon(tenant, ResourceId::parse("coupon", &code)?),
            (None, Some(sku)) => ResourceKey::sku(tenant, ResourceId::parse("sku", &sku)?),
            _ => {
                return Err(ParseError::new(
                    "coupon/sku",
                    "exactly one of coupon and sku is required",
                ));
            }
        };
        let quantity = match (resource.kind, self.quantity) {
            (_, None) => Quantity::ONE,
            (ResourceKind::Coupon, Some(1)) => Quantity::ONE,
            (ResourceKind::Coupon, Some(_)) => {
                return Err(ParseError::new("quantity", "a coupon claim is for exactly one unit"));
            }
            (ResourceKind::Sku, Some(q)) => Quantity::parse(q)?,
        };
        Ok(ClaimRequest {
            resource,
            user: UserId::parse(&self.user_id)?,
            quantity,
        })
    }
}

impl ClaimRequest {
    /// A digest of the request's meaning, for telling an idempotent retry
    /// from a different request that reuses the key. Computed over the parsed
    /// form, so whitespace, field order and an explicit `"quantity": 1` on a
    /// coupon do not make two identical requests look different.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.resource.kind.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(self.resource.id.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(self.user.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(self.quantity.get().to_be_bytes());
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<ClaimRequest, String> {
        serde_json::from_str::<ClaimRequestBody>(json)
            .map_err(|e| e.to_string())?
            .parse(TenantId::parse("acme").unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn coupon_claim() {
        let req = body(r#"{"coupon":"SPRING","user_id":"u-42"}"#).unwrap();
        assert_eq!(req.resource.to_string(), "acme/coupon:SPRING");
        assert_eq!(req.quantity, Quantity::ONE);
    }

    #[test]
    fn sku_claim_with_quantity() {
        let req = body(r#"{"sku":"TSHIRT-M","user_id":"u-42","quantity":2}"#).unwrap();
        assert_eq!(req.quantity.get(), 2);
    }

    #[test]
    fn refusals() {
        assert!(body(r#"{"user_id":"u"}"#).unwrap_err().contains("exactly one"));
        assert!(
            body(r#"{"coupon":"A","sku":"B","user_id":"u"}"#)
                .unwrap_err()
                .contains("exactly one")
        );
        assert!(
            body(r#"{"sku":"B","user_id":"u","quantity":0}"#)
                .unwrap_err()
                .contains("quantity")
        );
        assert!(
            body(r#"{"sku":"B","user_id":"u","quantity":-3}"#)
                .unwrap_err()
                .contains("quantity")
        );
        assert!(
            body(r#"{"coupon":"A","user_id":"u","quantity":2}"#)
                .unwrap_err()
                .contains("one unit")
        );
        assert!(
            body(r#"{"coupon":"A","user_id":"u","extra":1}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(body(r#"{"coupon":"A","user_id":""}"#).unwrap_err().contains("user_id"));
    }

    #[test]
    fn fingerprint_ignores_spelling_not_meaning() {
        let a = body(r#"{"coupon":"A","user_id":"u"}"#).unwrap();
        let b = body(r#"{ "user_id" : "u", "quantity": 1, "coupon": "A" }"#).unwrap();
        let c = body(r#"{"coupon":"A","user_id":"v"}"#).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
