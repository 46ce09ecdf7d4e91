//! A claim as the client sends it and as the API answers it, in
//! `turnstile-claim`'s types: a value that parses there is one the API
//! accepts.

use bytes::Bytes;
use http::HeaderValue;
use serde::Deserialize;
use turnstile_claim::{ClaimId, ClaimStatus, IdempotencyKey, Quantity, RejectReason, ResourceId, ResourceKind, UserId};
use uuid::Uuid;

/// What a claim asks for: a coupon or some units of a SKU, for a user.
/// The tenant is the API key's, so it is not named here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClaim {
    kind: ResourceKind,
    resource: ResourceId,
    user: UserId,
    quantity: Quantity,
}

impl NewClaim {
    /// A claim of coupon `code` (one unit) for `user`.
    pub fn coupon(code: ResourceId, user: UserId) -> Self {
        Self {
            kind: ResourceKind::Coupon,
            resource: code,
            user,
            quantity: Quantity::ONE,
        }
    }

    /// A claim of `quantity` units of `sku` for `user`.
    pub fn sku(sku: ResourceId, user: UserId, quantity: Quantity) -> Self {
        Self {
            kind: ResourceKind::Sku,
            resource: sku,
            user,
            quantity,
        }
    }

    /// Appends the JSON body of `POST /v1/claims` to `out`. Written by hand:
    /// a code or SKU needs no escaping, and a user id, visible ASCII, only
    /// of `"` and `\`, so this cannot fail.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(match self.kind {
            ResourceKind::Coupon => b"{\"coupon\":\"",
            ResourceKind::Sku => b"{\"sku\":\"",
        });
        out.extend_from_slice(self.resource.as_str().as_bytes());
        out.extend_from_slice(b"\",\"user_id\":\"");
        for &byte in self.user.as_str().as_bytes() {
            if matches!(byte, b'"' | b'\\') {
                out.push(b'\\');
            }
            out.push(byte);
        }
        out.push(b'"');
        if self.kind == ResourceKind::Sku {
            out.extend_from_slice(b",\"quantity\":");
            out.extend_from_slice(self.quantity.get().to_string().as_bytes());
        }
        out.push(b'}');
    }
}

/// A claim ready to send: its body encoded once and its idempotency key,
/// both sent unchanged on every attempt, so every retry names the same
/// claim and costs no encoding.
#[derive(Debug, Clone)]
pub struct PreparedClaim {
    body: Bytes,
    key: HeaderValue,
}

impl PreparedClaim {
    /// `claim` under `key`, or under a new UUID v7 (time-ordered, so keys
    /// made together sit together in the API's index) when `key` is `None`.
    pub fn new(claim: &NewClaim, key: Option<IdempotencyKey>) -> Self {
        let mut body = Vec::with_capacity(64);
        claim.write_json(&mut body);
        let key = match key {
            Some(key) => key_header(Bytes::copy_from_slice(key.as_str().as_bytes())),
            None => key_header(Bytes::copy_from_slice(
                Uuid::now_v7()
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer())
                    .as_bytes(),
            )),
        };
        Self {
            body: Bytes::from(body),
            key,
        }
    }

    /// The idempotency key every attempt carries.
    pub fn idempotency_key(&self) -> &str {
        // Made from an `IdempotencyKey`: visible ASCII.
        self.key.to_str().unwrap_or_default()
    }

    /// The JSON body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub(crate) fn key_header(&self) -> &HeaderValue {
        &self.key
    }
}

/// A header value of an `IdempotencyKey`'s bytes, which are visible ASCII.
fn key_header(bytes: Bytes) -> HeaderValue {
    // Never the fallback: an `IdempotencyKey` is 1 to 255 visible ASCII characters.
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static("invalid-idempotency-key"))
}

/// Many claims prepared in two buffers (one of bodies, one of keys), each
/// claim a slice of both: a load generator sending thousands a second
/// allocates twice for all of them instead of twice for each.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    bodies: Vec<u8>,
    keys: Vec<u8>,
    ends: Vec<(usize, usize)>,
}

impl ClaimBatch {
    /// Room for `count` claims.
    pub fn with_capacity(count: usize) -> Self {
        Self {
            bodies: Vec::with_capacity(count.saturating_mul(64)),
            keys: Vec::with_capacity(count.saturating_mul(16)),
            ends: Vec::with_capacity(count),
        }
    }

    /// Adds `claim` under `key`.
    pub fn push(&mut self, claim: &NewClaim, key: &IdempotencyKey) {
        claim.write_json(&mut self.bodies);
        self.keys.extend_from_slice(key.as_str().as_bytes());
        self.ends.push((self.bodies.len(), self.keys.len()));
    }

    /// The claims, in the order pushed.
    pub fn finish(self) -> Vec<PreparedClaim> {
        let (bodies, keys) = (Bytes::from(self.bodies), Bytes::from(self.keys));
        let (mut body_start, mut key_start) = (0, 0);
        self.ends
            .into_iter()
            .map(|(body_end, key_end)| {
                let claim = PreparedClaim {
                    body: bodies.slice(body_start..body_end),
                    key: key_header(keys.slice(key_start..key_end)),
                };
                (body_start, key_start) = (body_end, key_end);
                claim
            })
            .collect()
    }
}

/// A claim as the API reports it: the body of a `200` or `202` to
/// `POST /v1/claims`, and of `GET /v1/claims/{claim_id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Claim {
    /// The claim's id, stable for its idempotency key.
    pub claim_id: ClaimId,
    /// `pending` (a `202`: accepted, decided later), `granted` or `rejected`.
    pub status: ClaimStatus,
    /// Why it was rejected.
    #[serde(default)]
    pub reason: Option<RejectReason>,
    /// The fencing token the decision was written under.
    #[serde(default)]
    pub fence: Option<i64>,
}

impl Claim {
    /// Whether the claim is decided.
    pub fn is_final(&self) -> bool {
        self.status != ClaimStatus::Pending
    }

    /// Whether units were taken for the user.
    pub fn is_granted(&self) -> bool {
        self.status == ClaimStatus::Granted
    }
}

/// The body of every error answer (`application/problem+json`, RFC 9457).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Problem {
    /// A stable identifier of the kind of problem, e.g. `/problems/overloaded`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened in this instance.
    pub detail: String,
}

impl Problem {
    /// The most bytes of a problem body read: the API's are far shorter,
    /// and an answer is not trusted to be small.
    const MAX_BYTES: usize = 16 * 1024;

    /// The problem in `body`, if it is one.
    pub fn parse(body: &[u8]) -> Option<Self> {
        if body.len() > Self::MAX_BYTES {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    /// Whether its type is `/problems/{name}` (relative, or at the end of
    /// an absolute URI).
    pub fn is(&self, name: &str) -> bool {
        self.problem_type
            .strip_suffix(name)
            .is_some_and(|rest| rest.ends_with("/problems/"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use turnstile_claim::{ClaimRequestBody, TenantId};

    use super::*;

    fn parsed(body: &[u8]) -> turnstile_claim::ClaimRequest {
        serde_json::from_slice::<ClaimRequestBody>(body)
            .unwrap()
            .parse(TenantId::parse("acme").unwrap())
            .unwrap()
    }

    fn coupon(code: &str, user: &str) -> NewClaim {
        NewClaim::coupon(ResourceId::parse("coupon", code).unwrap(), UserId::parse(user).unwrap())
    }

    #[test]
    fn bodies_are_what_the_api_parses() {
        let mut body = Vec::new();
        coupon("SPRING", "u-42").write_json(&mut body);
        assert_eq!(body, br#"{"coupon":"SPRING","user_id":"u-42"}"#);
        let request = parsed(&body);
        assert_eq!(request.resource.to_string(), "acme/coupon:SPRING");
        assert_eq!(request.user.as_str(), "u-42");

        let mut body = Vec::new();
        let sku = NewClaim::sku(
            ResourceId::parse("sku", "TSHIRT-M").unwrap(),
            UserId::parse(r#"a"b\c"#).unwrap(),
            Quantity::parse(3).unwrap(),
        );
        sku.write_json(&mut body);
        let request = parsed(&body);
        assert_eq!(request.resource.to_string(), "acme/sku:TSHIRT-M");
        assert_eq!(request.user.as_str(), r#"a"b\c"#);
        assert_eq!(request.quantity.get(), 3);
    }

    #[test]
    fn a_claim_without_a_key_gets_a_uuid_and_keeps_it() {
        let claim = PreparedClaim::new(&coupon("A", "u"), None);
        let key = Uuid::parse_str(claim.idempotency_key()).unwrap();
        assert_eq!(key.get_version_num(), 7);
        assert_eq!(claim.clone().idempotency_key(), claim.idempotency_key());
        let given = PreparedClaim::new(&coupon("A", "u"), Some(IdempotencyKey::parse("k-1").unwrap()));
        assert_eq!(given.idempotency_key(), "k-1");
    }

    #[test]
    fn a_batch_slices_two_buffers() {
        let mut batch = ClaimBatch::with_capacity(3);
        for n in 0..3 {
            let key = IdempotencyKey::parse(&format!("run-{n}")).unwrap();
            batch.push(&coupon("A", &format!("user-{n}")), &key);
        }
        let claims = batch.finish();
        assert_eq!(claims.len(), 3);
        for (n, claim) in claims.iter().enumerate() {
            assert_eq!(claim.idempotency_key(), format!("run-{n}"));
            assert_eq!(parsed(claim.body()).user.as_str(), format!("user-{n}"));
        }
        assert!(ClaimBatch::default().finish().is_empty());
    }

    #[test]
    fn answers_read_as_claims() {
        let pending: Claim = serde_json::from_str(
            r#"{"claim_id":"00000000-0000-0000-0000-000000000007","status":"pending","reason":null,"fence":null}"#,
        )
        .unwrap();
        assert!(!pending.is_final());
        let rejected: Claim = serde_json::from_str(
            r#"{"claim_id":"00000000-0000-0000-0000-000000000007","status":"rejected","reason":"sold_out","fence":4}"#,
        )
        .unwrap();
        assert_eq!(rejected.reason, Some(RejectReason::SoldOut));
        assert_eq!(rejected.fence, Some(4));
        assert!(rejected.is_final() && !rejected.is_granted());
    }

    #[test]
    fn problems_are_told_apart_by_type() {
        let problem =
            Problem::parse(br#"{"type":"/problems/rate-limited","title":"t","status":429,"detail":"d"}"#).unwrap();
        assert!(problem.is("rate-limited"));
        assert!(!problem.is("limited"));
        assert!(!problem.is("overloaded"));
        let absolute = Problem::parse(br#"{"type":"https://turnstile.example/problems/overloaded"}"#).unwrap();
        assert!(absolute.is("overloaded"));
        assert_eq!(Problem::parse(b"not json"), None);
        assert_eq!(Problem::parse(&[b' '; 20_000]), None);
    }

    proptest! {
        #[test]
        fn every_valid_user_id_round_trips(user in "[!-~]{1,128}", quantity in 1i64..=1000) {
            let claim = NewClaim::sku(
                ResourceId::parse("sku", "S").unwrap(),
                UserId::parse(&user).unwrap(),
                Quantity::parse(quantity).unwrap(),
            );
            let mut body = Vec::new();
            claim.write_json(&mut body);
            let request = parsed(&body);
            prop_assert_eq!(request.user.as_str(), user.as_str());
            prop_assert_eq!(i64::from(request.quantity.get()), quantity);
        }
    }
}
