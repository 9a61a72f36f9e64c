//! Key layout of the sled store. Everything but the idempotency keys lives in the default tree, so one
//! `apply_batch` is one atomic write; the idempotency keys live in dedupe segment trees `d/<start>`
//! ([`super::segments`], entries in [`super::schema`]), written in one sled transaction with the default tree.
//!
//! | prefix | key                                   | value                       |
//! |--------|---------------------------------------|-----------------------------|
//! | `m/`   | `m/schema_version`                    | u32 big-endian              |
//! | `e/`   | `e/` + idempotency key (v1 only; migrated away) | postcard v1 `StoredEvent` |
//! | `g/`   | `g/` + segment start                  | u64 big-endian: keys the segment received |
//! | `m/`   | `m/events_stored`                     | u64 big-endian: events ever stored |
//! | `b/`   | `b/` + [`encode_bucket_key`]          | stored bucket ([`super::schema::ledger`]) |
//! | `m/`   | `m/sealed_through`                    | stored cutoff: every hour before it is sealed ([`super::schema::meta`]) |
//! | `m/`   | `m/lost`                              | stored `Lost`: revenue AWS will never pay |
//! | `m/`   | `m/pending`                           | stored `PendingTotals`: the queue's counts, kept with it |
//! | `m/`   | `m/seal_progress`                     | stored `SealProgress`: a chunked seal under way |
//! | `m/`   | `m/migrate_v3`                        | the last key the v2 → v3 migration rewrote (while under way) |
//! | `r/`   | `r/` + hour + product + customer + dim | stored record ([`super::schema::ledger`]) |
//! | `q/`   | `q/` + deadline + record key          | empty: the pending queue, oldest deadline first |
//! | `c/`   | `c/` + product + customer + dimension | stored carry: fraction carried to the next hour |
//! | `t/`   | `t/` + tenant id                      | stored mapping ([`super::schema::customer`]) |
//! | `s/`   | `s/` + `l` license ARN / `g` customer identifier | stored lifecycle ([`super::schema::customer`]) |
//! | `a/`   | `a/` + agreement id                   | the `s/` key of that agreement's customer |
//! | `h/`   | `h/` + hour + product + dimension     | postcard `HourSummary`: the hour's usage, kept with it ([`super::hour_totals`]) |
//! | `m/`   | `m/hour_totals`                       | empty: the `h/` summaries are kept (absent: counted once at open) |
//! | `m/`   | `m/open_buckets`, `m/customers`       | postcard `u64`, `CustomerCounts`: kept counts ([`super::counts`]) |
//!
//! Bucket keys start with the hour (big-endian, sign-flipped) so a range scan visits hours in order, and
//! all tag sets of one (hour, product, customer, dimension) are contiguous: sealing reads them together.

use crate::domain::event::{BucketKey, Identity, TagSet};

pub const SCHEMA_VERSION_KEY: &[u8] = b"m/schema_version";
/// Store v1 only: one key per idempotency key for the whole retention. Read once, by the migration to v2.
pub const EVENT_PREFIX: &[u8] = b"e/";
/// `g/` + segment start: how many keys that dedupe segment received ([`super::segments`]).
pub const SEGMENT_INDEX_PREFIX: &[u8] = b"g/";
/// Every event ever stored, updated in the same write as the events (start-up reads it instead of counting).
pub const EVENTS_STORED_KEY: &[u8] = b"m/events_stored";
/// The dedupe journal's mark: the last record whose group this store holds (`journal::Mark`).
pub const JOURNAL_MARK_KEY: &[u8] = b"m/journal";
/// The number of the last redo record whose write this tree holds (`u64` big-endian), written with that write
/// ([`super::redo`]): the open replays the records after it.
pub const REDO_SEQ_KEY: &[u8] = b"m/redo_seq";
pub const BUCKET_PREFIX: &[u8] = b"b/";
pub const SEALED_THROUGH_KEY: &[u8] = b"m/sealed_through";
/// Totals of history compacted away, so the report still reconciles.
pub const COMPACTED_KEY: &[u8] = b"m/compacted";
/// Records AWS will never pay for (DuplicateRecord on a first send): never compacted, never decreases.
pub const LOST_KEY: &[u8] = b"m/lost";
/// Totals of the pending queue, updated in the same batch as every `q/` change ([`super::pending`]).
pub const PENDING_KEY: &[u8] = b"m/pending";
/// A seal under way: its target and the bucket key the next chunk starts from (absent when none is).
pub const SEAL_PROGRESS_KEY: &[u8] = b"m/seal_progress";
pub const RECORD_PREFIX: &[u8] = b"r/";
pub const QUEUE_PREFIX: &[u8] = b"q/";
pub const CARRY_PREFIX: &[u8] = b"c/";
pub const TENANT_PREFIX: &[u8] = b"t/";
pub const LIFECYCLE_PREFIX: &[u8] = b"s/";
pub const AGREEMENT_PREFIX: &[u8] = b"a/";

/// Open buckets (`u64`), kept with every write that opens or closes one ([`super::counts`]).
pub const OPEN_BUCKETS_KEY: &[u8] = b"m/open_buckets";
/// Customers per lifecycle status ([`super::counts::CustomerCounts`]), kept with every `s/` write.
pub const CUSTOMER_COUNTS_KEY: &[u8] = b"m/customers";
/// Per hour × product × dimension: usage and biggest customers ([`super::hour_totals`]).
pub const HOUR_TOTALS_PREFIX: &[u8] = b"h/";
/// Present once every `h/` summary is kept by the writes (a store written before them has them counted at open).
pub const HOUR_TOTALS_KEPT_KEY: &[u8] = b"m/hour_totals";

/// `h/` + hour + product + dimension.
pub fn hour_totals_key(hour_ms: i64, product: &str, dimension: &str) -> Vec<u8> {
    let mut out = hour_totals_hour_prefix(hour_ms);
    put_str(&mut out, product);
    put_str(&mut out, dimension);
    out
}

/// `h/` + hour: the prefix of every summary of that hour.
pub fn hour_totals_hour_prefix(hour_ms: i64) -> Vec<u8> {
    [HOUR_TOTALS_PREFIX, &hour_bytes(hour_ms)[..]].concat()
}

pub fn tenant_key(tenant_id: &str) -> Vec<u8> {
    [TENANT_PREFIX, tenant_id.as_bytes()].concat()
}

/// Lifecycle is tracked per license (Concurrent Agreements) or legacy customer identifier; tenants have none
/// of their own (they follow the identity they map to).
pub fn lifecycle_key(identity: &Identity) -> Option<Vec<u8>> {
    match identity {
        Identity::Aws { license_arn, .. } => Some([LIFECYCLE_PREFIX, b"l", license_arn.as_bytes()].concat()),
        Identity::Legacy { customer_identifier } => {
            Some([LIFECYCLE_PREFIX, b"g", customer_identifier.as_bytes()].concat())
        }
        // A deployment's buyer has no lifecycle meterd can see: AWS decides entitlement at each MeterUsage.
        Identity::Tenant(_) | Identity::Deployment => None,
    }
}

/// The `s/` key of a customer the ingest decision asks about (the same key [`lifecycle_key`] gives its identity).
pub fn customer_key(customer: &crate::domain::ingest::CustomerRef) -> Vec<u8> {
    use crate::domain::ingest::CustomerRef;
    match customer {
        CustomerRef::License(arn) => [LIFECYCLE_PREFIX, b"l", arn.as_bytes()].concat(),
        CustomerRef::Legacy(id) => [LIFECYCLE_PREFIX, b"g", id.as_bytes()].concat(),
    }
}

pub fn agreement_key(agreement_id: &str) -> Vec<u8> {
    [AGREEMENT_PREFIX, agreement_id.as_bytes()].concat()
}

pub fn event_key(idempotency_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + idempotency_key.len());
    k.extend_from_slice(EVENT_PREFIX);
    k.extend_from_slice(idempotency_key.as_bytes());
    k
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every field is bounded well below 64 KiB by validation.
    let len = u16::try_from(s.len()).expect("validated field length");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Orders negative and positive times correctly as unsigned bytes.
pub fn hour_bytes(hour_ms: i64) -> [u8; 8] {
    ((hour_ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// `b/` + hour + product + identity + dimension: the prefix shared by all tag sets of one future record.
pub fn record_prefix(hour_ms: i64, product: &str, identity: &Identity, dimension: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(BUCKET_PREFIX);
    out.extend_from_slice(&hour_bytes(hour_ms));
    put_series(&mut out, product, identity, dimension);
    out
}

/// Key of a sealed record: `r/` + hour + product + customer + dimension.
pub fn record_key(k: &crate::domain::record::RecordKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(RECORD_PREFIX);
    out.extend_from_slice(&hour_bytes(k.hour_ms));
    put_series(&mut out, &k.product, &k.identity, &k.dimension);
    out
}

/// `r/` + hour: the prefix of every record of that hour.
pub fn record_hour_prefix(hour_ms: i64) -> Vec<u8> {
    [RECORD_PREFIX, &hour_bytes(hour_ms)[..]].concat()
}

/// Whether a record key (`r/` + hour + series) belongs to `identity`'s series of `product`.
pub fn record_key_is_of(record_key: &[u8], product: &str, identity: &Identity) -> bool {
    let mut series = Vec::with_capacity(32);
    put_str(&mut series, product);
    put_identity(&mut series, identity);
    record_key.get(RECORD_PREFIX.len() + 8..).is_some_and(|rest| rest.starts_with(&series))
}

/// Whether a record key (`r/` + hour + series) belongs to a series of tenant `tenant_id`, of any product.
pub fn record_key_is_of_tenant(record_key: &[u8], tenant_id: &str) -> bool {
    let mut r = Reader { buf: record_key, pos: RECORD_PREFIX.len() + 8 };
    let Ok(_product) = r.str() else { return false };
    let mut tenant = vec![0u8];
    put_str(&mut tenant, tenant_id);
    record_key.get(r.pos..).is_some_and(|rest| rest.starts_with(&tenant))
}

/// Queue entry: `q/` + deadline + the record key, so a scan yields the most urgent record first.
pub fn queue_key(deadline_ms: i64, record_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + record_key.len());
    out.extend_from_slice(QUEUE_PREFIX);
    out.extend_from_slice(&hour_bytes(deadline_ms));
    out.extend_from_slice(record_key);
    out
}

/// The record key inside a queue entry.
pub fn record_key_of_queue_entry(q: &[u8]) -> Option<&[u8]> {
    q.get(QUEUE_PREFIX.len() + 8..)
}

/// Carry of one customer/dimension series: `c/` + product + customer + dimension (no hour).
pub fn carry_key(product: &str, identity: &Identity, dimension: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(CARRY_PREFIX);
    put_series(&mut out, product, identity, dimension);
    out
}

/// Bucket keys of every hour before `hour_ms` sort below this.
pub fn bucket_hour_bound(hour_ms: i64) -> Vec<u8> {
    let mut out = BUCKET_PREFIX.to_vec();
    out.extend_from_slice(&hour_bytes(hour_ms));
    out
}

fn put_series(out: &mut Vec<u8>, product: &str, identity: &Identity, dimension: &str) {
    put_str(out, product);
    put_identity(out, identity);
    put_str(out, dimension);
}

fn put_identity(out: &mut Vec<u8>, identity: &Identity) {
    match identity {
        Identity::Tenant(t) => {
            out.push(0);
            put_str(out, t);
        }
        Identity::Aws { account_id, license_arn } => {
            out.push(1);
            put_str(out, account_id);
            put_str(out, license_arn);
        }
        Identity::Legacy { customer_identifier } => {
            out.push(2);
            put_str(out, customer_identifier);
        }
        Identity::Deployment => out.push(3),
    }
}

pub fn encode_bucket_key(k: &BucketKey) -> Vec<u8> {
    let mut out = record_prefix(k.hour_ms, &k.product, &k.identity, &k.dimension);
    out.push(u8::try_from(k.tags.len()).expect("at most 5 tags"));
    for (key, value) in &k.tags {
        put_str(&mut out, key);
        put_str(&mut out, value);
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("corrupt bucket key at byte {0}")]
pub struct KeyError(usize);

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeyError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(KeyError(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, KeyError> {
        Ok(self.take(1)?[0])
    }
    fn str(&mut self) -> Result<String, KeyError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        let at = self.pos;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| KeyError(at))
    }
}

pub fn decode_bucket_key(key: &[u8]) -> Result<BucketKey, KeyError> {
    let mut r = Reader { buf: key, pos: 0 };
    if r.take(2)? != BUCKET_PREFIX {
        return Err(KeyError(0));
    }
    let hour = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes")) ^ (1 << 63);
    let product = r.str()?;
    let identity = match r.u8()? {
        0 => Identity::Tenant(r.str()?),
        1 => Identity::Aws { account_id: r.str()?, license_arn: r.str()? },
        2 => Identity::Legacy { customer_identifier: r.str()? },
        3 => Identity::Deployment,
        _ => return Err(KeyError(r.pos - 1)),
    };
    let dimension = r.str()?;
    let n = r.u8()?;
    let mut tags = TagSet::new();
    for _ in 0..n {
        let k = r.str()?;
        tags.insert(k, r.str()?);
    }
    if r.pos != key.len() {
        return Err(KeyError(r.pos));
    }
    Ok(BucketKey { hour_ms: hour as i64, product, identity, dimension, tags })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn identity() -> impl Strategy<Value = Identity> {
        prop_oneof![
            "\\PC{1,20}".prop_map(Identity::Tenant),
            ("[0-9]{12}", "arn:aws:[a-z/:0-9-]{1,30}")
                .prop_map(|(account_id, license_arn)| Identity::Aws { account_id, license_arn }),
            "\\PC{1,20}".prop_map(|customer_identifier| Identity::Legacy { customer_identifier }),
            Just(Identity::Deployment),
        ]
    }

    fn bucket_key() -> impl Strategy<Value = BucketKey> {
        (
            -100_000i64..100_000,
            "[a-z]{1,8}",
            identity(),
            "\\PC{1,12}",
            proptest::collection::btree_map("[a-z]{1,4}", "[a-z0-9 ]{1,6}", 0..=5),
        )
            .prop_map(|(h, product, identity, dimension, tags)| BucketKey {
                hour_ms: h * 3_600_000,
                product,
                identity,
                dimension,
                tags,
            })
    }

    proptest! {
        #[test]
        fn bucket_keys_round_trip(k in bucket_key()) {
            prop_assert_eq!(decode_bucket_key(&encode_bucket_key(&k)).unwrap(), k);
        }

        #[test]
        fn hours_sort_in_time_order(a in bucket_key(), b in bucket_key()) {
            if a.hour_ms < b.hour_ms {
                prop_assert!(encode_bucket_key(&a) < encode_bucket_key(&b));
            }
        }

        #[test]
        fn tag_sets_of_one_record_share_its_prefix(k in bucket_key()) {
            let prefix = record_prefix(k.hour_ms, &k.product, &k.identity, &k.dimension);
            prop_assert!(encode_bucket_key(&k).starts_with(&prefix));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut k = BUCKET_PREFIX.to_vec();
            k.extend(bytes);
            let _ = decode_bucket_key(&k);
        }
    }
}
