//! The events on the bus, as JSON. Field names are the wire contract between
//! claim-api and claim-worker; change them only additively.

use serde::{Deserialize, Serialize};

use crate::{ClaimId, ClaimStatus, RejectReason, ResourceKey, TenantId, UserId};

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
    pub quantity: u32,
    /// When the API accepted it, in Unix milliseconds.
    pub accepted_at_ms: i64,
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
