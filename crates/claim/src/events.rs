//! The events on the bus, as JSON. Field names are the wire contract between
//! claim-api and claim-worker; change them only additively.
//!
//! Every field is a domain type that validates as it deserializes, with the
//! same rules the API applies to a request: a message that decodes is a
//! claim the store can hold, so no payload can fail a statement later and
//! stall its partition.

use serde::{Deserialize, Serialize};

use crate::{ClaimId, ClaimStatus, Quantity, RejectReason, ResourceKey, TenantId, UnixMillis, UserId};

/// A claim accepted by the API, to be decided by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequested {
    /// The claim.
    pub claim_id: ClaimId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// What is claimed (also the message key).
    pub resource: ResourceKey,
    /// Who claims.
    pub user_id: UserId,
    /// Units.
    pub quantity: Quantity,
    /// When the API accepted it.
    pub accepted_at_ms: UnixMillis,
}

/// A claim's final state, published after the fenced write committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimDecided {
    /// The claim.
    pub claim_id: ClaimId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// What was claimed.
    pub resource: ResourceKey,
    /// Granted or rejected.
    pub status: ClaimStatus,
    /// Why, when rejected.
    pub reason: Option<RejectReason>,
    /// The fencing token the decision was written under.
    pub fence: u64,
    /// When it was decided, in Unix milliseconds.
    pub decided_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: serde_json::Value) -> Result<ClaimRequested, serde_json::Error> {
        serde_json::from_value(json)
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "claim_id": "5f0c6f5e-8d7a-5b8e-9c1d-2e3f4a5b6c7d",
            "tenant_id": "default",
            "resource": {"kind": "coupon", "id": "SPRING"},
            "user_id": "u1",
            "quantity": 1,
            "accepted_at_ms": 1_795_000_000_000_i64,
        })
    }

    #[test]
    fn a_valid_event_round_trips() {
        let event = decode(valid()).unwrap();
        let again: ClaimRequested = serde_json::from_slice(&serde_json::to_vec(&event).unwrap()).unwrap();
        assert_eq!(event, again);
    }

    #[test]
    fn events_the_api_would_refuse_do_not_decode() {
        let cases: [(&str, serde_json::Value); 7] = [
            ("quantity", serde_json::json!(0)),
            ("quantity", serde_json::json!(1001)),
            ("quantity", serde_json::json!(-3)),
            ("accepted_at_ms", serde_json::json!(i64::MAX)),
            ("accepted_at_ms", serde_json::json!(-1)),
            ("user_id", serde_json::json!("")),
            ("tenant_id", serde_json::json!("has space")),
        ];
        for (field, value) in cases {
            let mut event = valid();
            event[field] = value.clone();
            assert!(decode(event).is_err(), "{field} = {value} decoded");
        }
    }
}
