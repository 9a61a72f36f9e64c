//! A validated usage event and the hourly bucket it counts towards.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::quantity::Micros;
use crate::clock::UnixMillis;

/// Who used something, in one of the three shapes the API accepts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Identity {
    /// The seller's tenant id, to be mapped to a marketplace identity by the agent.
    Tenant(String),
    /// Concurrent Agreements: `CustomerAWSAccountId` + `LicenseArn`.
    Aws { account_id: String, license_arn: String },
    /// Legacy listings: `CustomerIdentifier` (the product code comes from the product).
    Legacy { customer_identifier: String },
    /// `identity = "deployment"`: the buyer whose host meterd runs on, known to AWS by the call's credentials.
    Deployment,
}

impl Identity {
    /// A short human label for logs and reports.
    pub fn label(&self) -> String {
        match self {
            Identity::Tenant(t) => format!("tenant:{t}"),
            Identity::Aws { account_id, license_arn } => format!("aws:{account_id}/{license_arn}"),
            Identity::Legacy { customer_identifier } => format!("legacy:{customer_identifier}"),
            Identity::Deployment => "deployment".into(),
        }
    }
}

/// Tags, sorted by key, so the same set always encodes the same way.
pub type TagSet = BTreeMap<String, String>;

/// An event that passed validation. Only these reach the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEvent {
    pub idempotency_key: String,
    pub product: String,
    pub identity: Identity,
    pub dimension: String,
    pub quantity: Micros,
    /// As the caller sent it; `None` means "when received".
    pub timestamp_ms: Option<UnixMillis>,
    pub tags: TagSet,
}

impl UsageEvent {
    /// Fingerprint of everything the caller said, used to tell a replay from a conflicting reuse of the key.
    /// Quantities are compared by value ("1.0" equals "1"), tags as a set.
    pub fn content_digest(&self) -> [u8; 32] {
        #[derive(Serialize)]
        struct Content<'a> {
            product: &'a str,
            identity: &'a Identity,
            dimension: &'a str,
            quantity: Micros,
            timestamp_ms: Option<UnixMillis>,
            tags: &'a TagSet,
        }
        let c = Content {
            product: &self.product,
            identity: &self.identity,
            dimension: &self.dimension,
            quantity: self.quantity,
            timestamp_ms: self.timestamp_ms,
            tags: &self.tags,
        };
        let bytes = postcard::to_allocvec(&c).expect("in-memory encoding cannot fail");
        Sha256::digest(&bytes).into()
    }
}

/// The aggregation key: one bucket per (product, customer, dimension, UTC hour, tag set). Sealing turns all
/// tag-set buckets of one (product, customer, dimension, hour) into one AWS `UsageRecord`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketKey {
    pub hour_ms: UnixMillis,
    pub product: String,
    pub identity: Identity,
    pub dimension: String,
    pub tags: TagSet,
}

/// What the store keeps per idempotency key: enough to answer a replay with the original receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub digest: [u8; 32],
    /// True when the event's own hour was already sealed and it was counted in `hour_ms` instead.
    pub late: bool,
    pub product: String,
    pub event_time_ms: UnixMillis,
    pub hour_ms: UnixMillis,
    pub recorded_at_ms: UnixMillis,
    pub quantity: Micros,
}

/// What a caller gets back for a stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub idempotency_key: String,
    pub replayed: bool,
    pub product: String,
    pub event_time_ms: UnixMillis,
    pub hour_ms: UnixMillis,
    pub recorded_at_ms: UnixMillis,
}

impl Receipt {
    pub fn from_stored(key: &str, s: &StoredEvent, replayed: bool) -> Self {
        Receipt {
            idempotency_key: key.to_string(),
            replayed,
            product: s.product.clone(),
            event_time_ms: s.event_time_ms,
            hour_ms: s.hour_ms,
            recorded_at_ms: s.recorded_at_ms,
        }
    }
}

/// Running total of one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub total: Micros,
    pub events: u64,
    /// Part of `total` that arrived for an hour already sealed and was counted here instead.
    pub late: Micros,
}
