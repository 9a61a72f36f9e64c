//! The customer registry's values: tenant → marketplace identity mappings and each identity's lifecycle.

use serde::{Deserialize, Serialize};

use super::event::Identity;
use crate::clock::UnixMillis;

/// The seller's tenant id mapped to the identity AWS bills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantMapping {
    pub tenant_id: String,
    pub product: String,
    /// `Identity::Aws` or `Identity::Legacy`, never `Tenant`.
    pub identity: Identity,
    pub agreement_id: Option<String>,
    pub updated_at_ms: UnixMillis,
}

/// Where a marketplace customer stands. Only ever moves forward: Active → Deprovisioning → Ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerStatus {
    Active,
    /// In the final reporting hour: open usage was sealed and sent first; new usage is refused.
    Deprovisioning {
        since_ms: UnixMillis,
    },
    Ended {
        since_ms: UnixMillis,
        reason: String,
    },
}

impl CustomerStatus {
    fn rank(&self) -> u8 {
        match self {
            CustomerStatus::Active => 0,
            CustomerStatus::Deprovisioning { .. } => 1,
            CustomerStatus::Ended { .. } => 2,
        }
    }

    /// Whether moving to `next` is progress (events may arrive twice or out of order).
    pub fn advances_to(&self, next: &CustomerStatus) -> bool {
        next.rank() > self.rank()
    }

    pub fn accepts_usage(&self) -> bool {
        matches!(self, CustomerStatus::Active)
    }

    pub fn name(&self) -> &'static str {
        match self {
            CustomerStatus::Active => "active",
            CustomerStatus::Deprovisioning { .. } => "deprovisioning",
            CustomerStatus::Ended { .. } => "ended",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub at_ms: UnixMillis,
    pub status: CustomerStatus,
    /// What caused it: an event type, "CustomerNotSubscribed from AWS", "operator".
    pub source: String,
    pub event_id: Option<String>,
    /// False when the event changed nothing (a duplicate, or older than the current status).
    pub applied: bool,
}

/// One marketplace identity's lifecycle, keyed by license ARN (or legacy product code + identifier).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerLifecycle {
    pub identity: Identity,
    pub product_code: Option<String>,
    pub agreement_id: Option<String>,
    pub status: CustomerStatus,
    pub history: Vec<StatusChange>,
    /// Last time AWS answered CustomerNotSubscribed for this customer's usage.
    pub not_subscribed_at_ms: Option<UnixMillis>,
}

/// History kept per customer; older entries are dropped first.
pub const MAX_HISTORY: usize = 64;
