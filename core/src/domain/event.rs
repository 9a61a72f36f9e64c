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
    /// Quantities are compared by value ("1.0" equals "1"), tags as a set. Computed over the explicit layout of
    /// [`content_bytes`](Self::content_bytes), never over a serde layout a refactor could change.
    pub fn content_digest(&self) -> ContentDigest {
        // Streamed into the hash: the same bytes as `content_bytes`, without a buffer per event.
        let mut h = Sha256::new();
        self.write_content(|b| h.update(b));
        ContentDigest::V2(first16(&h.finalize()))
    }

    /// The explicit content layout the digest covers. Fields in this order, never reordered (a change is a new
    /// digest version): the tag `meterd.event.v2\0`; product; identity (`u8` kind 0 tenant, 1 AWS, 2 legacy,
    /// 3 deployment, then its strings); dimension; quantity (`u128` micro-units, big-endian); timestamp (`0`, or
    /// `1` + `i64` ms big-endian); tag count (`u32`) and each key and value in key order. Strings are a `u32`
    /// big-endian length + UTF-8 bytes.
    pub fn content_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_content(|b| out.extend_from_slice(b));
        out
    }

    /// [`content_bytes`](Self::content_bytes), piece by piece into `out`.
    fn write_content(&self, mut out: impl FnMut(&[u8])) {
        fn put(out: &mut impl FnMut(&[u8]), s: &str) {
            out(&(s.len() as u32).to_be_bytes());
            out(s.as_bytes());
        }
        out(b"meterd.event.v2\0");
        put(&mut out, &self.product);
        match &self.identity {
            Identity::Tenant(t) => {
                out(&[0]);
                put(&mut out, t);
            }
            Identity::Aws { account_id, license_arn } => {
                out(&[1]);
                put(&mut out, account_id);
                put(&mut out, license_arn);
            }
            Identity::Legacy { customer_identifier } => {
                out(&[2]);
                put(&mut out, customer_identifier);
            }
            Identity::Deployment => out(&[3]),
        }
        put(&mut out, &self.dimension);
        out(&self.quantity.0.to_be_bytes());
        match self.timestamp_ms {
            None => out(&[0]),
            Some(t) => {
                out(&[1]);
                out(&t.to_be_bytes());
            }
        }
        out(&(self.tags.len() as u32).to_be_bytes());
        for (k, v) in &self.tags {
            put(&mut out, k);
            put(&mut out, v);
        }
    }

    /// The digest meterd 0.x with store v1 kept (postcard of these fields). Frozen: only entries migrated from a
    /// v1 store carry it, and they leave with the dedupe window.
    pub fn content_digest_v1(&self) -> [u8; 32] {
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

    /// Whether this event has the content a stored digest fingerprints (of whichever layout it was made with).
    pub fn matches(&self, stored: &ContentDigest) -> bool {
        match stored {
            ContentDigest::V2(_) => self.content_digest() == *stored,
            ContentDigest::V1(d) => first16(&self.content_digest_v1()) == *d,
        }
    }
}

/// The first 128 bits of a SHA-256: collisions stay out of reach (2^-128 per pair) at half the bytes stored.
fn first16(digest: &[u8]) -> [u8; 16] {
    digest[..16].try_into().expect("a SHA-256 has 32 bytes")
}

/// A content fingerprint, tagged with the layout it was computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentDigest {
    /// Over [`UsageEvent::content_bytes`].
    V2([u8; 16]),
    /// Over the v1 postcard layout ([`UsageEvent::content_digest_v1`]): entries migrated from a v1 store.
    V1([u8; 16]),
}

impl ContentDigest {
    /// The fingerprint's 16 bytes (whichever layout it was made with).
    pub fn bytes(&self) -> [u8; 16] {
        match self {
            ContentDigest::V2(d) | ContentDigest::V1(d) => *d,
        }
    }

    /// A current-layout fingerprint kept elsewhere as bytes (the fleet ledger stores only these); None unless it
    /// is 16 bytes.
    pub fn v2_from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(ContentDigest::V2)
    }
}

/// The aggregation key: one bucket per (product, customer, dimension, UTC hour, tag set). Sealing turns all
/// tag-set buckets of one (product, customer, dimension, hour) into one AWS `UsageRecord`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BucketKey {
    pub hour_ms: UnixMillis,
    pub product: String,
    pub identity: Identity,
    pub dimension: String,
    pub tags: TagSet,
}

/// A [`BucketKey`] made of borrowed parts: an ingest group looks its buckets up with it, so an event whose bucket
/// the group already holds copies no string. Hashes exactly as the owned key (one function hashes both).
#[derive(Clone, Copy, Debug)]
pub struct BucketKeyRef<'a> {
    pub hour_ms: UnixMillis,
    pub product: &'a str,
    pub identity: &'a Identity,
    pub dimension: &'a str,
    pub tags: &'a TagSet,
}

impl BucketKeyRef<'_> {
    pub fn to_owned_key(&self) -> BucketKey {
        BucketKey {
            hour_ms: self.hour_ms,
            product: self.product.to_string(),
            identity: self.identity.clone(),
            dimension: self.dimension.to_string(),
            tags: self.tags.clone(),
        }
    }

    fn matches(&self, k: &BucketKey) -> bool {
        self.hour_ms == k.hour_ms
            && self.product == k.product
            && *self.identity == k.identity
            && self.dimension == k.dimension
            && *self.tags == k.tags
    }
}

fn hash_bucket_parts<H: std::hash::Hasher>(
    state: &mut H,
    hour_ms: UnixMillis,
    product: &str,
    identity: &Identity,
    dimension: &str,
    tags: &TagSet,
) {
    use std::hash::Hash;
    hour_ms.hash(state);
    product.hash(state);
    identity.hash(state);
    dimension.hash(state);
    tags.hash(state);
}

impl std::hash::Hash for BucketKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_bucket_parts(state, self.hour_ms, &self.product, &self.identity, &self.dimension, &self.tags);
    }
}

impl std::hash::Hash for BucketKeyRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_bucket_parts(state, self.hour_ms, self.product, self.identity, self.dimension, self.tags);
    }
}

impl hashbrown::Equivalent<BucketKey> for BucketKeyRef<'_> {
    fn equivalent(&self, key: &BucketKey) -> bool {
        self.matches(key)
    }
}

/// What the store keeps per idempotency key: enough to answer a replay with the original receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub digest: ContentDigest,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_bucket_key_hashes_and_compares_as_the_owned_one() {
        use std::hash::BuildHasher;
        let tags: TagSet = [("team".to_string(), "a".to_string())].into();
        let keys = [
            BucketKey { hour_ms: 0, product: "p".into(), identity: Identity::Deployment, dimension: "d".into(), tags },
            BucketKey {
                hour_ms: 3_600_000,
                product: "p".into(),
                identity: Identity::Aws { account_id: "1".into(), license_arn: "arn:l".into() },
                dimension: "d".into(),
                tags: TagSet::new(),
            },
            BucketKey {
                hour_ms: 3_600_000,
                product: "p".into(),
                identity: Identity::Tenant("1".into()),
                dimension: "d".into(),
                tags: TagSet::new(),
            },
        ];
        let s = std::hash::RandomState::new();
        for (i, k) in keys.iter().enumerate() {
            let r = BucketKeyRef {
                hour_ms: k.hour_ms,
                product: &k.product,
                identity: &k.identity,
                dimension: &k.dimension,
                tags: &k.tags,
            };
            assert_eq!(s.hash_one(k), s.hash_one(r), "{k:?}");
            assert_eq!(r.to_owned_key(), *k);
            for (j, other) in keys.iter().enumerate() {
                assert_eq!(hashbrown::Equivalent::equivalent(&r, other), i == j);
            }
        }
    }

    fn sample() -> UsageEvent {
        UsageEvent {
            idempotency_key: "k".into(),
            product: "app".into(),
            identity: Identity::Aws { account_id: "111122223333".into(), license_arn: "arn:l".into() },
            dimension: "api_calls".into(),
            quantity: Micros(1_500_000),
            timestamp_ms: Some(1_764_460_800_000),
            tags: [("region".to_string(), "eu".to_string())].into(),
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn content_layout_is_pinned_byte_for_byte() {
        let mut want = b"meterd.event.v2\0".to_vec();
        want.extend_from_slice(&[0, 0, 0, 3]);
        want.extend_from_slice(b"app");
        want.push(1);
        want.extend_from_slice(&[0, 0, 0, 12]);
        want.extend_from_slice(b"111122223333");
        want.extend_from_slice(&[0, 0, 0, 5]);
        want.extend_from_slice(b"arn:l");
        want.extend_from_slice(&[0, 0, 0, 9]);
        want.extend_from_slice(b"api_calls");
        want.extend_from_slice(&1_500_000u128.to_be_bytes());
        want.push(1);
        want.extend_from_slice(&1_764_460_800_000i64.to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 6]);
        want.extend_from_slice(b"region");
        want.extend_from_slice(&[0, 0, 0, 2]);
        want.extend_from_slice(b"eu");
        assert_eq!(sample().content_bytes(), want);
    }

    #[test]
    fn digests_are_pinned_and_the_v1_one_still_matches_v1_entries() {
        let e = sample();
        let ContentDigest::V2(d) = e.content_digest() else { panic!() };
        assert_eq!(hex(&d), hex(&Sha256::digest(e.content_bytes())[..16]));
        // The digest meterd with store v1 stored for this event (its code, unchanged, is `content_digest_v1`).
        assert_eq!(hex(&e.content_digest_v1()), V1_SAMPLE_DIGEST);
        let v1 = ContentDigest::V1(e.content_digest_v1()[..16].try_into().unwrap());
        assert!(e.matches(&v1) && e.matches(&e.content_digest()));
        let changed = UsageEvent { quantity: Micros(1_500_001), ..e.clone() };
        assert!(!changed.matches(&v1) && !changed.matches(&e.content_digest()));
        let untimed = UsageEvent { timestamp_ms: None, ..e };
        assert!(!untimed.matches(&v1) && !untimed.matches(&sample().content_digest()));
    }

    const V1_SAMPLE_DIGEST: &str = "bd0a047e275879be0fa412b41df314d5eec95ad25eedb0cd46207558620fa8ce";
}
