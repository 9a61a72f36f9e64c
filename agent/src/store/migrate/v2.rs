//! The store v2 value layouts, frozen: postcard of these types, whose fields and variants are in the order the
//! domain's structs had when store v2 was current. Never change them (a v2 store on disk has exactly these
//! bytes). Read by the v2 → v3 migration; the encoding direction is kept so tests can make a v2 store from one
//! this build wrote ([`rewrite_as_v2`]), the way the v1 event record is kept ([`super::super::schema::V1StoredEvent`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::customer::{CustomerLifecycle, CustomerStatus, StatusChange, TenantMapping};
use crate::domain::event::{Bucket, Identity};
use crate::domain::quantity::Micros;
use crate::domain::record::{Allocation, ExpiryReason, RecordKey, RecordState, RejectReason, SealedRecord};
use crate::store::pending::PendingTotals;
use crate::store::{Compacted, Lost, SealProgress, StoreError, keys, outbox, schema};

#[derive(Serialize, Deserialize)]
pub enum V2Identity {
    Tenant(String),
    Aws { account_id: String, license_arn: String },
    Legacy { customer_identifier: String },
    Deployment,
}

#[derive(Serialize, Deserialize)]
pub struct V2Bucket {
    pub total: u128,
    pub events: u64,
    pub late: u128,
}

#[derive(Serialize, Deserialize)]
pub struct V2RecordKey {
    pub hour_ms: i64,
    pub product: String,
    pub identity: V2Identity,
    pub dimension: String,
}

#[derive(Serialize, Deserialize)]
pub struct V2Allocation {
    pub tags: BTreeMap<String, String>,
    pub quantity: u32,
}

#[derive(Serialize, Deserialize)]
pub enum V2RejectReason {
    CustomerNotSubscribed,
    DuplicateRecord,
    AwsException(String),
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
pub enum V2ExpiryReason {
    DeadlinePassed,
    Unmapped,
}

#[derive(Serialize, Deserialize)]
pub enum V2RecordState {
    Sealed,
    InFlight { attempts: u32, next_attempt_ms: i64 },
    Accepted { metering_record_id: Option<String>, aws_request_id: Option<String>, at_ms: i64, verify: bool },
    Rejected { reason: V2RejectReason, aws_request_id: Option<String>, at_ms: i64 },
    Expired { reason: V2ExpiryReason, at_ms: i64 },
    Carried,
    Merged { into: V2Identity, into_hour_ms: i64, at_ms: i64 },
}

#[derive(Serialize, Deserialize)]
pub struct V2SealedRecord {
    pub key: V2RecordKey,
    pub quantity: u32,
    pub allocations: Vec<V2Allocation>,
    pub deadline_ms: i64,
    pub sealed_at_ms: i64,
    pub recorded: u128,
    pub carried_in: u128,
    pub carried_out: u128,
    pub late: u128,
    pub sent_as: Option<V2Identity>,
    pub state: V2RecordState,
}

#[derive(Serialize, Deserialize)]
pub struct V2TenantMapping {
    pub tenant_id: String,
    pub product: String,
    pub identity: V2Identity,
    pub agreement_id: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
pub enum V2CustomerStatus {
    Active,
    Deprovisioning { since_ms: i64 },
    Ended { since_ms: i64, reason: String },
}

#[derive(Serialize, Deserialize)]
pub struct V2StatusChange {
    pub at_ms: i64,
    pub status: V2CustomerStatus,
    pub source: String,
    pub event_id: Option<String>,
    pub applied: bool,
}

#[derive(Serialize, Deserialize)]
pub struct V2CustomerLifecycle {
    pub identity: V2Identity,
    pub product_code: Option<String>,
    pub agreement_id: Option<String>,
    pub status: V2CustomerStatus,
    pub history: Vec<V2StatusChange>,
    pub not_subscribed_at_ms: Option<i64>,
}

#[derive(Serialize, Deserialize)]
pub struct V2Compacted {
    pub records: u64,
    pub events: u64,
    pub recorded: u128,
    pub late: u128,
    pub accepted: u64,
    pub rejected: u64,
    pub expired: u64,
}

#[derive(Serialize, Deserialize)]
pub struct V2Lost {
    pub records: u64,
    pub units: u64,
}

#[derive(Serialize, Deserialize)]
pub struct V2PendingTotals {
    pub records: u64,
    pub in_flight: u64,
    pub units: u64,
    pub at_risk_records: u64,
    pub at_risk_units: u64,
}

/// The outbox's encoding 1 (fleet spool), after its leading `1` byte.
#[derive(Serialize, Deserialize)]
pub struct V2OutboxEntry {
    pub idempotency_key: String,
    pub product: String,
    pub identity: V2Identity,
    pub dimension: String,
    pub quantity: u128,
    pub timestamp_ms: Option<i64>,
    pub tags: BTreeMap<String, String>,
    pub received_ms: i64,
}

/// The byte that led every v2 outbox entry.
const OUTBOX_ENCODING_1: u8 = 1;

#[derive(Serialize, Deserialize)]
pub struct V2SealProgress {
    pub cutoff_ms: i64,
    pub resume_key: Vec<u8>,
}

/// The value families store v2 kept as postcard (everything in the default tree but `m/schema_version`,
/// `m/events_stored`, `m/spool`, `m/fleet_incarnation`, the `g/` counts, the `q/` index and the `a/` references,
/// whose raw layouts v3 keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bucket,
    Record,
    Carry,
    Mapping,
    Lifecycle,
    Compacted,
    Lost,
    Pending,
    SealProgress,
    SealedThrough,
    Outbox,
}

impl Family {
    pub fn of(key: &[u8]) -> Option<Family> {
        let exact = [
            (keys::COMPACTED_KEY, Family::Compacted),
            (keys::LOST_KEY, Family::Lost),
            (keys::PENDING_KEY, Family::Pending),
            (keys::SEAL_PROGRESS_KEY, Family::SealProgress),
            (keys::SEALED_THROUGH_KEY, Family::SealedThrough),
        ];
        let prefixed = [
            (keys::BUCKET_PREFIX, Family::Bucket),
            (keys::RECORD_PREFIX, Family::Record),
            (keys::CARRY_PREFIX, Family::Carry),
            (keys::TENANT_PREFIX, Family::Mapping),
            (keys::LIFECYCLE_PREFIX, Family::Lifecycle),
            (outbox::OUTBOX_PREFIX, Family::Outbox),
        ];
        exact.iter().find(|(k, _)| *k == key).or_else(|| prefixed.iter().find(|(p, _)| key.starts_with(p))).map(|f| f.1)
    }
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("store v2 value of {:?}: {e}", String::from_utf8_lossy(key)))
}

/// Trailing bytes are damage too (postcard alone would ignore them, and a value converted twice would pass).
fn from_v2<'a, V: Deserialize<'a>>(key: &[u8], bytes: &'a [u8]) -> Result<V, StoreError> {
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(corrupt(key, format!("{} bytes after the value", rest.len()))),
        Err(e) => Err(corrupt(key, e)),
    }
}

fn to_v2<V: Serialize>(v: &V) -> Vec<u8> {
    postcard::to_allocvec(v).expect("in-memory encoding cannot fail")
}

/// The store v3 bytes of the v2 value `bytes` of `key`.
pub fn to_v3(family: Family, key: &[u8], bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    Ok(match family {
        Family::Bucket => schema::encode(&Bucket::from(from_v2::<V2Bucket>(key, bytes)?)),
        Family::Record => schema::encode(&SealedRecord::from(from_v2::<V2SealedRecord>(key, bytes)?)),
        Family::Carry => schema::encode(&Micros(from_v2::<u128>(key, bytes)?)),
        Family::Mapping => schema::encode(&TenantMapping::from(from_v2::<V2TenantMapping>(key, bytes)?)),
        Family::Lifecycle => schema::encode(&CustomerLifecycle::from(from_v2::<V2CustomerLifecycle>(key, bytes)?)),
        Family::Compacted => schema::encode(&Compacted::from(from_v2::<V2Compacted>(key, bytes)?)),
        Family::Lost => schema::encode(&Lost::from(from_v2::<V2Lost>(key, bytes)?)),
        Family::Pending => schema::encode(&PendingTotals::from(from_v2::<V2PendingTotals>(key, bytes)?)),
        Family::SealProgress => schema::encode(&SealProgress::from(from_v2::<V2SealProgress>(key, bytes)?)),
        Family::SealedThrough => {
            schema::encode(&schema::meta::StoredSealedThrough { cutoff_ms: from_v2::<i64>(key, bytes)? })
        }
        Family::Outbox => match bytes.split_first() {
            Some((&OUTBOX_ENCODING_1, rest)) => {
                schema::encode(&outbox::Entry::from(from_v2::<V2OutboxEntry>(key, rest)?))
            }
            _ => return Err(corrupt(key, "an outbox entry not in encoding 1")),
        },
    })
}

/// The store v2 bytes of the v3 value `bytes` of `key` (tests: a v2 store made from one this build wrote).
pub fn from_v3(family: Family, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    use schema::decode;
    Ok(match family {
        Family::Bucket => to_v2(&V2Bucket::from(decode::<Bucket>(bytes)?)),
        Family::Record => to_v2(&V2SealedRecord::from(decode::<SealedRecord>(bytes)?)),
        Family::Carry => to_v2(&decode::<Micros>(bytes)?.0),
        Family::Mapping => to_v2(&V2TenantMapping::from(decode::<TenantMapping>(bytes)?)),
        Family::Lifecycle => to_v2(&V2CustomerLifecycle::from(decode::<CustomerLifecycle>(bytes)?)),
        Family::Compacted => to_v2(&V2Compacted::from(decode::<Compacted>(bytes)?)),
        Family::Lost => to_v2(&V2Lost::from(decode::<Lost>(bytes)?)),
        Family::Pending => to_v2(&V2PendingTotals::from(decode::<PendingTotals>(bytes)?)),
        Family::SealProgress => to_v2(&V2SealProgress::from(decode::<SealProgress>(bytes)?)),
        Family::SealedThrough => to_v2(&decode::<schema::meta::StoredSealedThrough>(bytes)?.cutoff_ms),
        Family::Outbox => outbox_v2(decode::<outbox::Entry>(bytes)?),
    })
}

/// One outbox entry as store v2 wrote it (encoding 1, one entry per key).
fn outbox_v2(e: outbox::Entry) -> Vec<u8> {
    let mut v = vec![OUTBOX_ENCODING_1];
    v.extend(to_v2(&V2OutboxEntry::from(e)));
    v
}

/// The compacted totals of a v2 (or v1) store, read by the v1 → v2 migration.
pub fn compacted(db: &sled::Db) -> Result<Compacted, StoreError> {
    let v = db.get(keys::COMPACTED_KEY)?;
    Ok(v.map(|v| from_v2::<V2Compacted>(keys::COMPACTED_KEY, &v)).transpose()?.map(Compacted::from).unwrap_or_default())
}

/// Rewrites every value of a closed store this build wrote into the v2 layout and marks it schema version 2:
/// a store as meterd with store v2 left it (for migration tests).
pub fn rewrite_as_v2(db: &sled::Db) -> Result<u64, StoreError> {
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for kv in db.iter() {
        let (k, v) = kv?;
        match Family::of(&k) {
            // A block (outbox encoding 3, newer than store v3 itself) was one key per entry in store v2.
            Some(Family::Outbox) if v.first() == Some(&schema::outbox::OUTBOX_BLOCK_VERSION) => {
                let first = u64::from_be_bytes(
                    k[outbox::OUTBOX_PREFIX.len()..]
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("outbox key is not o/ + 8 bytes".into()))?,
                );
                for (seq, e) in (first..).zip(outbox::decode_value(&v)?) {
                    batch.insert([outbox::OUTBOX_PREFIX, &seq.to_be_bytes()].concat(), outbox_v2(e));
                    n += 1;
                }
            }
            Some(f) => {
                batch.insert(k, from_v3(f, &v)?);
                n += 1;
            }
            None => {}
        }
    }
    batch.insert(keys::SCHEMA_VERSION_KEY, &2u32.to_be_bytes());
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(n)
}

// Conversions between the frozen v2 types and the domain, both ways.

impl From<V2OutboxEntry> for outbox::Entry {
    fn from(v: V2OutboxEntry) -> Self {
        outbox::Entry {
            idempotency_key: v.idempotency_key,
            product: v.product,
            identity: v.identity.into(),
            dimension: v.dimension,
            quantity: Micros(v.quantity),
            timestamp_ms: v.timestamp_ms,
            tags: v.tags,
            received_ms: v.received_ms,
        }
    }
}

impl From<outbox::Entry> for V2OutboxEntry {
    fn from(v: outbox::Entry) -> Self {
        V2OutboxEntry {
            idempotency_key: v.idempotency_key,
            product: v.product,
            identity: v.identity.into(),
            dimension: v.dimension,
            quantity: v.quantity.0,
            timestamp_ms: v.timestamp_ms,
            tags: v.tags,
            received_ms: v.received_ms,
        }
    }
}

impl From<V2Identity> for Identity {
    fn from(v: V2Identity) -> Self {
        match v {
            V2Identity::Tenant(t) => Identity::Tenant(t),
            V2Identity::Aws { account_id, license_arn } => Identity::Aws { account_id, license_arn },
            V2Identity::Legacy { customer_identifier } => Identity::Legacy { customer_identifier },
            V2Identity::Deployment => Identity::Deployment,
        }
    }
}

impl From<Identity> for V2Identity {
    fn from(v: Identity) -> Self {
        match v {
            Identity::Tenant(t) => V2Identity::Tenant(t),
            Identity::Aws { account_id, license_arn } => V2Identity::Aws { account_id, license_arn },
            Identity::Legacy { customer_identifier } => V2Identity::Legacy { customer_identifier },
            Identity::Deployment => V2Identity::Deployment,
        }
    }
}

impl From<V2Bucket> for Bucket {
    fn from(v: V2Bucket) -> Self {
        Bucket { total: Micros(v.total), events: v.events, late: Micros(v.late) }
    }
}

impl From<Bucket> for V2Bucket {
    fn from(v: Bucket) -> Self {
        V2Bucket { total: v.total.0, events: v.events, late: v.late.0 }
    }
}

impl From<V2SealedRecord> for SealedRecord {
    fn from(v: V2SealedRecord) -> Self {
        SealedRecord {
            key: RecordKey {
                hour_ms: v.key.hour_ms,
                product: v.key.product,
                identity: v.key.identity.into(),
                dimension: v.key.dimension,
            },
            quantity: v.quantity,
            allocations: v.allocations.into_iter().map(|a| Allocation { tags: a.tags, quantity: a.quantity }).collect(),
            deadline_ms: v.deadline_ms,
            sealed_at_ms: v.sealed_at_ms,
            recorded: Micros(v.recorded),
            carried_in: Micros(v.carried_in),
            carried_out: Micros(v.carried_out),
            late: Micros(v.late),
            sent_as: v.sent_as.map(Into::into),
            state: match v.state {
                V2RecordState::Sealed => RecordState::Sealed,
                V2RecordState::InFlight { attempts, next_attempt_ms } => {
                    RecordState::InFlight { attempts, next_attempt_ms }
                }
                V2RecordState::Accepted { metering_record_id, aws_request_id, at_ms, verify } => {
                    RecordState::Accepted { metering_record_id, aws_request_id, at_ms, verify }
                }
                V2RecordState::Rejected { reason, aws_request_id, at_ms } => RecordState::Rejected {
                    reason: match reason {
                        V2RejectReason::CustomerNotSubscribed => RejectReason::CustomerNotSubscribed,
                        V2RejectReason::DuplicateRecord => RejectReason::DuplicateRecord,
                        V2RejectReason::AwsException(e) => RejectReason::AwsException(e),
                        V2RejectReason::Invalid(m) => RejectReason::Invalid(m),
                    },
                    aws_request_id,
                    at_ms,
                },
                V2RecordState::Expired { reason, at_ms } => RecordState::Expired {
                    reason: match reason {
                        V2ExpiryReason::DeadlinePassed => ExpiryReason::DeadlinePassed,
                        V2ExpiryReason::Unmapped => ExpiryReason::Unmapped,
                    },
                    at_ms,
                },
                V2RecordState::Carried => RecordState::Carried,
                V2RecordState::Merged { into, into_hour_ms, at_ms } => {
                    RecordState::Merged { into: into.into(), into_hour_ms, at_ms }
                }
            },
        }
    }
}

impl From<SealedRecord> for V2SealedRecord {
    fn from(v: SealedRecord) -> Self {
        V2SealedRecord {
            key: V2RecordKey {
                hour_ms: v.key.hour_ms,
                product: v.key.product,
                identity: v.key.identity.into(),
                dimension: v.key.dimension,
            },
            quantity: v.quantity,
            allocations: v
                .allocations
                .into_iter()
                .map(|a| V2Allocation { tags: a.tags, quantity: a.quantity })
                .collect(),
            deadline_ms: v.deadline_ms,
            sealed_at_ms: v.sealed_at_ms,
            recorded: v.recorded.0,
            carried_in: v.carried_in.0,
            carried_out: v.carried_out.0,
            late: v.late.0,
            sent_as: v.sent_as.map(Into::into),
            state: match v.state {
                RecordState::Sealed => V2RecordState::Sealed,
                RecordState::InFlight { attempts, next_attempt_ms } => {
                    V2RecordState::InFlight { attempts, next_attempt_ms }
                }
                RecordState::Accepted { metering_record_id, aws_request_id, at_ms, verify } => {
                    V2RecordState::Accepted { metering_record_id, aws_request_id, at_ms, verify }
                }
                RecordState::Rejected { reason, aws_request_id, at_ms } => V2RecordState::Rejected {
                    reason: match reason {
                        RejectReason::CustomerNotSubscribed => V2RejectReason::CustomerNotSubscribed,
                        RejectReason::DuplicateRecord => V2RejectReason::DuplicateRecord,
                        RejectReason::AwsException(e) => V2RejectReason::AwsException(e),
                        RejectReason::Invalid(m) => V2RejectReason::Invalid(m),
                    },
                    aws_request_id,
                    at_ms,
                },
                RecordState::Expired { reason, at_ms } => V2RecordState::Expired {
                    reason: match reason {
                        ExpiryReason::DeadlinePassed => V2ExpiryReason::DeadlinePassed,
                        ExpiryReason::Unmapped => V2ExpiryReason::Unmapped,
                    },
                    at_ms,
                },
                RecordState::Carried => V2RecordState::Carried,
                RecordState::Merged { into, into_hour_ms, at_ms } => {
                    V2RecordState::Merged { into: into.into(), into_hour_ms, at_ms }
                }
            },
        }
    }
}

impl From<V2TenantMapping> for TenantMapping {
    fn from(v: V2TenantMapping) -> Self {
        TenantMapping {
            tenant_id: v.tenant_id,
            product: v.product,
            identity: v.identity.into(),
            agreement_id: v.agreement_id,
            updated_at_ms: v.updated_at_ms,
        }
    }
}

impl From<TenantMapping> for V2TenantMapping {
    fn from(v: TenantMapping) -> Self {
        V2TenantMapping {
            tenant_id: v.tenant_id,
            product: v.product,
            identity: v.identity.into(),
            agreement_id: v.agreement_id,
            updated_at_ms: v.updated_at_ms,
        }
    }
}

impl From<V2CustomerStatus> for CustomerStatus {
    fn from(v: V2CustomerStatus) -> Self {
        match v {
            V2CustomerStatus::Active => CustomerStatus::Active,
            V2CustomerStatus::Deprovisioning { since_ms } => CustomerStatus::Deprovisioning { since_ms },
            V2CustomerStatus::Ended { since_ms, reason } => CustomerStatus::Ended { since_ms, reason },
        }
    }
}

impl From<CustomerStatus> for V2CustomerStatus {
    fn from(v: CustomerStatus) -> Self {
        match v {
            CustomerStatus::Active => V2CustomerStatus::Active,
            CustomerStatus::Deprovisioning { since_ms } => V2CustomerStatus::Deprovisioning { since_ms },
            CustomerStatus::Ended { since_ms, reason } => V2CustomerStatus::Ended { since_ms, reason },
        }
    }
}

impl From<V2CustomerLifecycle> for CustomerLifecycle {
    fn from(v: V2CustomerLifecycle) -> Self {
        CustomerLifecycle {
            identity: v.identity.into(),
            product_code: v.product_code,
            agreement_id: v.agreement_id,
            status: v.status.into(),
            history: v
                .history
                .into_iter()
                .map(|h| StatusChange {
                    at_ms: h.at_ms,
                    status: h.status.into(),
                    source: h.source,
                    event_id: h.event_id,
                    applied: h.applied,
                })
                .collect(),
            not_subscribed_at_ms: v.not_subscribed_at_ms,
        }
    }
}

impl From<CustomerLifecycle> for V2CustomerLifecycle {
    fn from(v: CustomerLifecycle) -> Self {
        V2CustomerLifecycle {
            identity: v.identity.into(),
            product_code: v.product_code,
            agreement_id: v.agreement_id,
            status: v.status.into(),
            history: v
                .history
                .into_iter()
                .map(|h| V2StatusChange {
                    at_ms: h.at_ms,
                    status: h.status.into(),
                    source: h.source,
                    event_id: h.event_id,
                    applied: h.applied,
                })
                .collect(),
            not_subscribed_at_ms: v.not_subscribed_at_ms,
        }
    }
}

impl From<V2Compacted> for Compacted {
    fn from(v: V2Compacted) -> Self {
        Compacted {
            records: v.records,
            events: v.events,
            recorded: Micros(v.recorded),
            late: Micros(v.late),
            accepted: v.accepted,
            rejected: v.rejected,
            expired: v.expired,
        }
    }
}

impl From<Compacted> for V2Compacted {
    fn from(v: Compacted) -> Self {
        V2Compacted {
            records: v.records,
            events: v.events,
            recorded: v.recorded.0,
            late: v.late.0,
            accepted: v.accepted,
            rejected: v.rejected,
            expired: v.expired,
        }
    }
}

impl From<V2Lost> for Lost {
    fn from(v: V2Lost) -> Self {
        Lost { records: v.records, units: v.units }
    }
}

impl From<Lost> for V2Lost {
    fn from(v: Lost) -> Self {
        V2Lost { records: v.records, units: v.units }
    }
}

impl From<V2PendingTotals> for PendingTotals {
    fn from(v: V2PendingTotals) -> Self {
        PendingTotals {
            records: v.records,
            in_flight: v.in_flight,
            units: v.units,
            at_risk_records: v.at_risk_records,
            at_risk_units: v.at_risk_units,
        }
    }
}

impl From<PendingTotals> for V2PendingTotals {
    fn from(v: PendingTotals) -> Self {
        V2PendingTotals {
            records: v.records,
            in_flight: v.in_flight,
            units: v.units,
            at_risk_records: v.at_risk_records,
            at_risk_units: v.at_risk_units,
        }
    }
}

impl From<V2SealProgress> for SealProgress {
    fn from(v: V2SealProgress) -> Self {
        SealProgress { cutoff_ms: v.cutoff_ms, resume_key: v.resume_key }
    }
}

impl From<SealProgress> for V2SealProgress {
    fn from(v: SealProgress) -> Self {
        V2SealProgress { cutoff_ms: v.cutoff_ms, resume_key: v.resume_key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::golden;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The v2 layout of each sample is its v3 bytes without the version byte and the checksum (v3 kept
    /// postcard's order and integer encodings), and each converts to exactly its pinned v3 bytes.
    #[test]
    fn frozen_v2_layouts_are_pinned_and_convert_to_v3() {
        let cases: Vec<(Family, &[u8], Vec<u8>, &str)> = vec![
            (Family::Bucket, b"b/x", to_v2(&V2Bucket { total: 1_500_000, events: 3, late: 500_000 }), golden::BUCKET),
            (Family::Carry, b"c/x", to_v2(&250_000u128), golden::CARRY),
            (Family::Record, b"r/x", to_v2(&V2SealedRecord::from(golden::record())), golden::RECORD),
            (Family::Mapping, b"t/x", to_v2(&V2TenantMapping::from(golden::mapping())), golden::MAPPING),
            (Family::Lifecycle, b"s/x", to_v2(&V2CustomerLifecycle::from(golden::lifecycle())), golden::LIFECYCLE),
            (Family::Compacted, keys::COMPACTED_KEY, to_v2(&V2Compacted::from(golden::compacted())), golden::COMPACTED),
            (Family::Lost, keys::LOST_KEY, to_v2(&V2Lost { records: 1, units: 2 }), golden::LOST),
            (Family::Pending, keys::PENDING_KEY, to_v2(&V2PendingTotals::from(golden::pending())), golden::PENDING),
            (
                Family::SealProgress,
                keys::SEAL_PROGRESS_KEY,
                to_v2(&V2SealProgress::from(golden::progress())),
                golden::PROGRESS,
            ),
            (Family::SealedThrough, keys::SEALED_THROUGH_KEY, to_v2(&(-2 * crate::clock::HOUR_MS)), golden::THROUGH),
        ];
        // The outbox's v2 value led with its own encoding byte (1) where v3 has the version (2).
        let outbox_v2 = from_v3(Family::Outbox, &hex(golden::OUTBOX)).unwrap();
        assert_eq!(outbox_v2[0], 1);
        assert_eq!(&outbox_v2[1..], &hex(golden::OUTBOX)[1..hex(golden::OUTBOX).len() - 4]);
        assert_eq!(to_v2(&V2OutboxEntry::from(golden::outbox())), outbox_v2[1..]);
        assert_eq!(to_v3(Family::Outbox, b"o/x", &outbox_v2).unwrap(), hex(golden::OUTBOX));
        assert!(to_v3(Family::Outbox, b"o/x", &hex(golden::OUTBOX)).is_err(), "a v3 entry is not read as v2");
        for (family, key, v2, v3) in cases {
            let v3 = hex(v3);
            assert_eq!(Family::of(key), Some(family));
            assert_eq!(v2, &v3[1..v3.len() - 4], "{family:?}: the frozen v2 layout changed");
            assert_eq!(to_v3(family, key, &v2).unwrap(), v3, "{family:?}");
            assert_eq!(from_v3(family, &v3).unwrap(), v2, "{family:?}");
        }
    }

    #[test]
    fn only_the_families_v2_kept_as_postcard_are_converted() {
        for key in [
            keys::SCHEMA_VERSION_KEY,
            keys::EVENTS_STORED_KEY,
            b"m/spool".as_slice(),
            b"g/0",
            b"q/0",
            b"a/agmt",
            b"m/fleet_incarnation",
            super::super::V3_PROGRESS_KEY,
        ] {
            assert_eq!(Family::of(key), None, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn a_damaged_v2_value_names_its_key() {
        let e = to_v3(Family::Bucket, b"b/k", &[0xff]).unwrap_err();
        assert!(e.to_string().starts_with("store data is corrupt: store v2 value of \"b/k\""), "{e}");
        // A value already in its v3 layout is not misread as a v2 one (postcard alone takes a prefix of it).
        let v3 = hex(golden::BUCKET);
        let e = to_v3(Family::Bucket, b"b/k", &v3).unwrap_err();
        assert!(e.to_string().ends_with("bytes after the value"), "{e}");
    }
}
