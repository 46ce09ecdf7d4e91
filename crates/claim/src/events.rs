//! The events on the bus, as JSON. Field names are the wire contract between
//! claim-api and claim-worker; change them only additively.
//!
//! Every field is a domain type that validates as it deserializes, with the
//! same rules the API applies to a request: a message that decodes is a
//! claim the store can hold, so no payload can fail a statement later and
//! stall its partition.
//!
//! The tenant travels twice on the wire: as `tenant_id`, as it always has,
//! and inside `resource`, which is the tenant's. An event whose two disagree
//! does not decode; one without `resource.tenant` (written before resources
//! had tenants) takes `tenant_id`.

use serde::{Deserialize, Serialize};

use crate::{
    ClaimId, ClaimStatus, DecisionFact, ParseError, Quantity, RejectReason, ResourceId, ResourceKey, ResourceKind,
    TenantId, UnixMillis, UserId,
};

/// A claim accepted by the API, to be decided by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RequestedWire", into = "RequestedWire")]
pub struct ClaimRequested {
    /// The claim.
    pub claim_id: ClaimId,
    /// What is claimed, and so whose (also the message key).
    pub resource: ResourceKey,
    /// Who claims.
    pub user_id: UserId,
    /// Units.
    pub quantity: Quantity,
    /// When the API accepted it.
    pub accepted_at_ms: UnixMillis,
}

impl ClaimRequested {
    /// The claim's tenant: the resource's.
    pub fn tenant(&self) -> &TenantId {
        &self.resource.tenant
    }
}

/// A claim's final state, published after the fenced write committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DecidedWire", into = "DecidedWire")]
pub struct ClaimDecided {
    /// The claim.
    pub claim_id: ClaimId,
    /// What was claimed, and so whose.
    pub resource: ResourceKey,
    /// Granted or rejected.
    pub status: ClaimStatus,
    /// Why, when rejected.
    pub reason: Option<RejectReason>,
    /// The fencing token the decision was written under.
    pub fence: u64,
    /// When it was decided, in Unix milliseconds.
    pub decided_at_ms: i64,
    /// What the decision tells claim-api's door (what was left and what the
    /// user held right after it), when it was decided now: a decision
    /// announced again after a redelivery, or from the outbox, has none.
    pub door: Option<DecisionFact>,
}

impl ClaimDecided {
    /// The claim's tenant: the resource's.
    pub fn tenant(&self) -> &TenantId {
        &self.resource.tenant
    }
}

/// A resource as written in events.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResourceWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<TenantId>,
    kind: ResourceKind,
    id: ResourceId,
}

impl ResourceWire {
    fn from_key(key: ResourceKey) -> Self {
        Self {
            tenant: Some(key.tenant),
            kind: key.kind,
            id: key.id,
        }
    }

    fn into_key(self, tenant_id: TenantId) -> Result<ResourceKey, ParseError> {
        match self.tenant {
            Some(tenant) if tenant != tenant_id => Err(ParseError::new("resource.tenant", "must equal tenant_id")),
            _ => Ok(ResourceKey {
                tenant: tenant_id,
                kind: self.kind,
                id: self.id,
            }),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RequestedWire {
    claim_id: ClaimId,
    tenant_id: TenantId,
    resource: ResourceWire,
    user_id: UserId,
    quantity: Quantity,
    accepted_at_ms: UnixMillis,
}

impl TryFrom<RequestedWire> for ClaimRequested {
    type Error = ParseError;
    fn try_from(w: RequestedWire) -> Result<Self, Self::Error> {
        Ok(Self {
            claim_id: w.claim_id,
            resource: w.resource.into_key(w.tenant_id)?,
            user_id: w.user_id,
            quantity: w.quantity,
            accepted_at_ms: w.accepted_at_ms,
        })
    }
}

impl From<ClaimRequested> for RequestedWire {
    fn from(e: ClaimRequested) -> Self {
        Self {
            claim_id: e.claim_id,
            tenant_id: e.resource.tenant.clone(),
            resource: ResourceWire::from_key(e.resource),
            user_id: e.user_id,
            quantity: e.quantity,
            accepted_at_ms: e.accepted_at_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DecidedWire {
    claim_id: ClaimId,
    tenant_id: TenantId,
    resource: ResourceWire,
    status: ClaimStatus,
    reason: Option<RejectReason>,
    fence: u64,
    decided_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    door: Option<DoorWire>,
}

/// [`DecisionFact`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DoorWire {
    #[serde(default)]
    stock_epoch: u64,
    remaining: i64,
    user_id: UserId,
    user_holds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_user_limit: Option<u32>,
}

impl TryFrom<DoorWire> for DecisionFact {
    type Error = ParseError;
    fn try_from(w: DoorWire) -> Result<Self, Self::Error> {
        if w.remaining < 0 {
            return Err(ParseError::new("door.remaining", "must not be negative"));
        }
        Ok(Self {
            stock_epoch: w.stock_epoch,
            remaining: w.remaining,
            user_id: w.user_id.as_str().to_owned(),
            user_holds: w.user_holds,
            per_user_limit: w.per_user_limit,
        })
    }
}

impl TryFrom<DecidedWire> for ClaimDecided {
    type Error = ParseError;
    fn try_from(w: DecidedWire) -> Result<Self, Self::Error> {
        Ok(Self {
            claim_id: w.claim_id,
            resource: w.resource.into_key(w.tenant_id)?,
            status: w.status,
            reason: w.reason,
            fence: w.fence,
            decided_at_ms: w.decided_at_ms,
            door: w.door.map(DecisionFact::try_from).transpose()?,
        })
    }
}

impl From<ClaimDecided> for DecidedWire {
    fn from(e: ClaimDecided) -> Self {
        Self {
            claim_id: e.claim_id,
            tenant_id: e.resource.tenant.clone(),
            resource: ResourceWire::from_key(e.resource),
            status: e.status,
            reason: e.reason,
            fence: e.fence,
            decided_at_ms: e.decided_at_ms,
            door: e.door.and_then(|fact| {
                Some(DoorWire {
                    stock_epoch: fact.stock_epoch,
                    remaining: fact.remaining,
                    user_id: UserId::parse(&fact.user_id).ok()?,
                    user_holds: fact.user_holds,
                    per_user_limit: fact.per_user_limit,
                })
            }),
        }
    }
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
    fn the_resource_belongs_to_the_events_tenant() {
        let old = decode(valid()).unwrap();
        assert_eq!(
            old.tenant().as_str(),
            "default",
            "an event without resource.tenant takes tenant_id"
        );
        let json = serde_json::to_value(&old).unwrap();
        assert_eq!(json["resource"]["tenant"], "default");
        assert_eq!(json["tenant_id"], "default");

        let mut foreign = valid();
        foreign["resource"]["tenant"] = serde_json::json!("other");
        assert!(decode(foreign).is_err(), "a resource of another tenant decoded");
    }

    #[test]
    fn a_decision_carries_what_it_tells_the_door_and_older_ones_decode_without() {
        let mut decided = serde_json::json!({
            "claim_id": "5f0c6f5e-8d7a-5b8e-9c1d-2e3f4a5b6c7d",
            "tenant_id": "default",
            "resource": {"kind": "coupon", "id": "SPRING"},
            "status": "rejected",
            "reason": "sold_out",
            "fence": 7,
            "decided_at_ms": 1_795_000_000_000_i64,
        });
        let old: ClaimDecided = serde_json::from_value(decided.clone()).unwrap();
        assert_eq!(old.door, None);
        decided["door"] = serde_json::json!({"remaining": 0, "user_id": "u1", "user_holds": 0, "per_user_limit": 1});
        let new: ClaimDecided = serde_json::from_value(decided.clone()).unwrap();
        let fact = new.door.clone().unwrap();
        assert_eq!(
            (fact.remaining, fact.user_id.as_str(), fact.per_user_limit),
            (0, "u1", Some(1))
        );
        let again: ClaimDecided = serde_json::from_slice(&serde_json::to_vec(&new).unwrap()).unwrap();
        assert_eq!(again, new);
        decided["door"]["remaining"] = serde_json::json!(-1);
        assert!(serde_json::from_value::<ClaimDecided>(decided).is_err());
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
