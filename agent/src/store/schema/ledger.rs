//! The ledger's values: open buckets (`b/`), sealed records with their outcome (`r/`) and carries (`c/`).
//!
//! Open bucket, version 1: `version` · `total` varint (micro-units) · `events` varint · `late` varint
//! (micro-units) · CRC32.
//!
//! Carry, version 1: `version` · `fraction` varint (micro-units) · CRC32.
//!
//! Sealed record, version 1 (fields in this order, never reordered):
//!
//! | #  | field        | encoding                                                                  |
//! |----|--------------|---------------------------------------------------------------------------|
//! | 1  | version      | `u8` = 1                                                                  |
//! | 2  | hour         | zigzag varint: `hour_ms`                                                  |
//! | 3  | product      | string                                                                    |
//! | 4  | identity     | identity (below)                                                          |
//! | 5  | dimension    | string                                                                    |
//! | 6  | quantity     | varint (≤ u32): whole units sent                                          |
//! | 7  | allocations  | count, then per allocation: tag set (below), quantity varint (≤ u32)       |
//! | 8  | deadline     | zigzag varint: `deadline_ms`                                              |
//! | 9  | sealed at    | zigzag varint: `sealed_at_ms`                                             |
//! | 10 | recorded     | varint micro-units                                                        |
//! | 11 | carried in   | varint micro-units                                                        |
//! | 12 | carried out  | varint micro-units                                                        |
//! | 13 | late         | varint micro-units                                                        |
//! | 14 | sent as      | option of identity                                                        |
//! | 15 | state        | tag: 0 sealed; 1 in flight (attempts varint ≤ u32, next attempt zigzag); 2 accepted (metering record id option string, request id option string, at zigzag, verify bool); 3 rejected (reason, request id option string, at zigzag); 4 expired (tag 0 deadline passed / 1 unmapped, at zigzag); 5 carried; 6 merged (into identity, into hour zigzag, at zigzag) |
//! | 16 | checksum     | CRC32 of 1–15                                                             |
//!
//! Identity: tag 0 tenant (tenant id string); 1 AWS (account id string, license ARN string); 2 legacy (customer
//! identifier string); 3 deployment. Tag set: count, then key string and value string per tag, keys strictly
//! ascending. Reject reason: tag 0 CustomerNotSubscribed; 1 DuplicateRecord; 2 AWS exception (name string);
//! 3 invalid (message string).

use super::codec::{Reader, Writer};
use super::{DecodeError, stored_via};
use crate::domain::event::{Bucket, Identity, TagSet};
use crate::domain::quantity::Micros;
use crate::domain::record::{Allocation, ExpiryReason, RecordKey, RecordState, RejectReason, SealedRecord};

pub const BUCKET_VERSION: u8 = 1;
pub const CARRY_VERSION: u8 = 1;
pub const RECORD_VERSION: u8 = 1;

/// `b/` value: one open bucket's running total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBucket {
    pub total: u128,
    pub events: u64,
    pub late: u128,
}

impl StoredBucket {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(BUCKET_VERSION);
        w.varint(self.total);
        w.u64(self.events);
        w.varint(self.late);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, BUCKET_VERSION)?;
        let v = StoredBucket { total: r.varint("total")?, events: r.u64("events")?, late: r.varint("late")? };
        r.end()?;
        Ok(v)
    }
}

impl From<&Bucket> for StoredBucket {
    fn from(b: &Bucket) -> Self {
        StoredBucket { total: b.total.0, events: b.events, late: b.late.0 }
    }
}

impl From<StoredBucket> for Bucket {
    fn from(s: StoredBucket) -> Self {
        Bucket { total: Micros(s.total), events: s.events, late: Micros(s.late) }
    }
}

stored_via!(Bucket, StoredBucket, "b/ open bucket");

/// `c/` value: the fraction of a unit carried into a series' next sealed hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCarry {
    pub fraction: u128,
}

impl StoredCarry {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(CARRY_VERSION);
        w.varint(self.fraction);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, CARRY_VERSION)?;
        let v = StoredCarry { fraction: r.varint("fraction")? };
        r.end()?;
        Ok(v)
    }
}

impl From<&Micros> for StoredCarry {
    fn from(m: &Micros) -> Self {
        StoredCarry { fraction: m.0 }
    }
}

impl From<StoredCarry> for Micros {
    fn from(s: StoredCarry) -> Self {
        Micros(s.fraction)
    }
}

// A bare quantity is stored alone only as a carry; another family holding one needs a stored type of its own
// (and a family name of its own in errors), not this impl.
stored_via!(Micros, StoredCarry, "c/ carry");

/// A customer as stored (tags in the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredIdentity {
    Tenant(String),
    Aws { account_id: String, license_arn: String },
    Legacy(String),
    Deployment,
}

impl StoredIdentity {
    pub(super) fn put(&self, w: &mut Writer) {
        IdentityRef::from(self).put(w)
    }

    pub(super) fn get(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        Ok(match r.u8(field)? {
            0 => StoredIdentity::Tenant(r.str(field)?),
            1 => StoredIdentity::Aws { account_id: r.str(field)?, license_arn: r.str(field)? },
            2 => StoredIdentity::Legacy(r.str(field)?),
            3 => StoredIdentity::Deployment,
            _ => return Err(r.bad_tag(field)),
        })
    }
}

/// A customer, borrowed, as it is written: the one place the layout of [`StoredIdentity`] is written, shared by
/// the stored type and the domain's [`Identity`] (an outbox entry is encoded straight from the event).
#[derive(Debug, Clone, Copy)]
pub(super) enum IdentityRef<'a> {
    Tenant(&'a str),
    Aws { account_id: &'a str, license_arn: &'a str },
    Legacy(&'a str),
    Deployment,
}

impl IdentityRef<'_> {
    pub(super) fn put(self, w: &mut Writer) {
        match self {
            IdentityRef::Tenant(t) => {
                w.u8(0);
                w.str(t);
            }
            IdentityRef::Aws { account_id, license_arn } => {
                w.u8(1);
                w.str(account_id);
                w.str(license_arn);
            }
            IdentityRef::Legacy(c) => {
                w.u8(2);
                w.str(c);
            }
            IdentityRef::Deployment => w.u8(3),
        }
    }
}

impl<'a> From<&'a StoredIdentity> for IdentityRef<'a> {
    fn from(i: &'a StoredIdentity) -> Self {
        match i {
            StoredIdentity::Tenant(t) => IdentityRef::Tenant(t),
            StoredIdentity::Aws { account_id, license_arn } => IdentityRef::Aws { account_id, license_arn },
            StoredIdentity::Legacy(c) => IdentityRef::Legacy(c),
            StoredIdentity::Deployment => IdentityRef::Deployment,
        }
    }
}

impl<'a> From<&'a Identity> for IdentityRef<'a> {
    fn from(i: &'a Identity) -> Self {
        match i {
            Identity::Tenant(t) => IdentityRef::Tenant(t),
            Identity::Aws { account_id, license_arn } => IdentityRef::Aws { account_id, license_arn },
            Identity::Legacy { customer_identifier } => IdentityRef::Legacy(customer_identifier),
            Identity::Deployment => IdentityRef::Deployment,
        }
    }
}

impl From<&Identity> for StoredIdentity {
    fn from(i: &Identity) -> Self {
        match i {
            Identity::Tenant(t) => StoredIdentity::Tenant(t.clone()),
            Identity::Aws { account_id, license_arn } => {
                StoredIdentity::Aws { account_id: account_id.clone(), license_arn: license_arn.clone() }
            }
            Identity::Legacy { customer_identifier } => StoredIdentity::Legacy(customer_identifier.clone()),
            Identity::Deployment => StoredIdentity::Deployment,
        }
    }
}

impl From<StoredIdentity> for Identity {
    fn from(s: StoredIdentity) -> Self {
        match s {
            StoredIdentity::Tenant(t) => Identity::Tenant(t),
            StoredIdentity::Aws { account_id, license_arn } => Identity::Aws { account_id, license_arn },
            StoredIdentity::Legacy(customer_identifier) => Identity::Legacy { customer_identifier },
            StoredIdentity::Deployment => Identity::Deployment,
        }
    }
}

/// One allocation of a record's units to a tag set (tags in ascending key order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAllocation {
    pub tags: Vec<(String, String)>,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredRejectReason {
    CustomerNotSubscribed,
    DuplicateRecord,
    AwsException(String),
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredState {
    Sealed,
    InFlight {
        attempts: u32,
        next_attempt_ms: i64,
    },
    Accepted {
        metering_record_id: Option<String>,
        aws_request_id: Option<String>,
        at_ms: i64,
        verify: bool,
    },
    Rejected {
        reason: StoredRejectReason,
        aws_request_id: Option<String>,
        at_ms: i64,
    },
    /// `unmapped`: false for a deadline that passed, true for a tenant never mapped.
    Expired {
        unmapped: bool,
        at_ms: i64,
    },
    Carried,
    Merged {
        into: StoredIdentity,
        into_hour_ms: i64,
        at_ms: i64,
    },
}

/// `r/` value: a sealed record, its accounting and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub hour_ms: i64,
    pub product: String,
    pub identity: StoredIdentity,
    pub dimension: String,
    pub quantity: u32,
    pub allocations: Vec<StoredAllocation>,
    pub deadline_ms: i64,
    pub sealed_at_ms: i64,
    pub recorded: u128,
    pub carried_in: u128,
    pub carried_out: u128,
    pub late: u128,
    pub sent_as: Option<StoredIdentity>,
    pub state: StoredState,
}

fn put_opt_str(w: &mut Writer, s: &Option<String>) {
    w.opt(s.as_deref(), |w, s| w.str(s));
}

fn get_opt_str(r: &mut Reader<'_>, field: &'static str) -> Result<Option<String>, DecodeError> {
    r.opt(field, |r| r.str(field))
}

impl StoredRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(RECORD_VERSION);
        w.i64(self.hour_ms);
        w.str(&self.product);
        self.identity.put(&mut w);
        w.str(&self.dimension);
        w.u64(u64::from(self.quantity));
        w.u64(self.allocations.len() as u64);
        for a in &self.allocations {
            w.u64(a.tags.len() as u64);
            for (k, v) in &a.tags {
                w.str(k);
                w.str(v);
            }
            w.u64(u64::from(a.quantity));
        }
        w.i64(self.deadline_ms);
        w.i64(self.sealed_at_ms);
        w.varint(self.recorded);
        w.varint(self.carried_in);
        w.varint(self.carried_out);
        w.varint(self.late);
        w.opt(self.sent_as.as_ref(), |w, i| i.put(w));
        match &self.state {
            StoredState::Sealed => w.u8(0),
            StoredState::InFlight { attempts, next_attempt_ms } => {
                w.u8(1);
                w.u64(u64::from(*attempts));
                w.i64(*next_attempt_ms);
            }
            StoredState::Accepted { metering_record_id, aws_request_id, at_ms, verify } => {
                w.u8(2);
                put_opt_str(&mut w, metering_record_id);
                put_opt_str(&mut w, aws_request_id);
                w.i64(*at_ms);
                w.bool(*verify);
            }
            StoredState::Rejected { reason, aws_request_id, at_ms } => {
                w.u8(3);
                match reason {
                    StoredRejectReason::CustomerNotSubscribed => w.u8(0),
                    StoredRejectReason::DuplicateRecord => w.u8(1),
                    StoredRejectReason::AwsException(e) => {
                        w.u8(2);
                        w.str(e);
                    }
                    StoredRejectReason::Invalid(m) => {
                        w.u8(3);
                        w.str(m);
                    }
                }
                put_opt_str(&mut w, aws_request_id);
                w.i64(*at_ms);
            }
            StoredState::Expired { unmapped, at_ms } => {
                w.u8(4);
                w.u8(u8::from(*unmapped));
                w.i64(*at_ms);
            }
            StoredState::Carried => w.u8(5),
            StoredState::Merged { into, into_hour_ms, at_ms } => {
                w.u8(6);
                into.put(&mut w);
                w.i64(*into_hour_ms);
                w.i64(*at_ms);
            }
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, RECORD_VERSION)?;
        let v = StoredRecord {
            hour_ms: r.i64("hour")?,
            product: r.str("product")?,
            identity: StoredIdentity::get(&mut r, "identity")?,
            dimension: r.str("dimension")?,
            quantity: r.u32("quantity")?,
            allocations: {
                let n = r.count("allocations")?;
                let mut all = Vec::new();
                for _ in 0..n {
                    let tags = get_tags(&mut r, "allocation tags")?;
                    all.push(StoredAllocation { tags, quantity: r.u32("allocation quantity")? });
                }
                all
            },
            deadline_ms: r.i64("deadline")?,
            sealed_at_ms: r.i64("sealed at")?,
            recorded: r.varint("recorded")?,
            carried_in: r.varint("carried in")?,
            carried_out: r.varint("carried out")?,
            late: r.varint("late")?,
            sent_as: r.opt("sent as", |r| StoredIdentity::get(r, "sent as"))?,
            state: get_state(&mut r)?,
        };
        r.end()?;
        Ok(v)
    }
}

pub(super) fn get_tags(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<(String, String)>, DecodeError> {
    let n = r.count(field)?;
    let mut tags: Vec<(String, String)> = Vec::new();
    for _ in 0..n {
        let at = r.pos();
        let k = r.str(field)?;
        // Strictly ascending keys: one tag set has one encoding, and a duplicate key cannot vanish on reading.
        if tags.last().is_some_and(|(last, _)| *last >= k) {
            return Err(DecodeError::Field { field, at });
        }
        let v = r.str(field)?;
        tags.push((k, v));
    }
    Ok(tags)
}

fn get_state(r: &mut Reader<'_>) -> Result<StoredState, DecodeError> {
    Ok(match r.u8("state")? {
        0 => StoredState::Sealed,
        1 => StoredState::InFlight { attempts: r.u32("attempts")?, next_attempt_ms: r.i64("next attempt")? },
        2 => StoredState::Accepted {
            metering_record_id: get_opt_str(r, "metering record id")?,
            aws_request_id: get_opt_str(r, "aws request id")?,
            at_ms: r.i64("accepted at")?,
            verify: r.bool("verify")?,
        },
        3 => StoredState::Rejected {
            reason: match r.u8("reject reason")? {
                0 => StoredRejectReason::CustomerNotSubscribed,
                1 => StoredRejectReason::DuplicateRecord,
                2 => StoredRejectReason::AwsException(r.str("reject reason")?),
                3 => StoredRejectReason::Invalid(r.str("reject reason")?),
                _ => return Err(r.bad_tag("reject reason")),
            },
            aws_request_id: get_opt_str(r, "aws request id")?,
            at_ms: r.i64("rejected at")?,
        },
        4 => StoredState::Expired {
            unmapped: match r.u8("expiry reason")? {
                0 => false,
                1 => true,
                _ => return Err(r.bad_tag("expiry reason")),
            },
            at_ms: r.i64("expired at")?,
        },
        5 => StoredState::Carried,
        6 => StoredState::Merged {
            into: StoredIdentity::get(r, "merged into")?,
            into_hour_ms: r.i64("merged into hour")?,
            at_ms: r.i64("merged at")?,
        },
        _ => return Err(r.bad_tag("state")),
    })
}

impl From<&SealedRecord> for StoredRecord {
    fn from(r: &SealedRecord) -> Self {
        let opt = |s: &Option<String>| s.clone();
        StoredRecord {
            hour_ms: r.key.hour_ms,
            product: r.key.product.clone(),
            identity: (&r.key.identity).into(),
            dimension: r.key.dimension.clone(),
            quantity: r.quantity,
            allocations: r
                .allocations
                .iter()
                .map(|a| StoredAllocation {
                    tags: a.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    quantity: a.quantity,
                })
                .collect(),
            deadline_ms: r.deadline_ms,
            sealed_at_ms: r.sealed_at_ms,
            recorded: r.recorded.0,
            carried_in: r.carried_in.0,
            carried_out: r.carried_out.0,
            late: r.late.0,
            sent_as: r.sent_as.as_ref().map(Into::into),
            state: match &r.state {
                RecordState::Sealed => StoredState::Sealed,
                RecordState::InFlight { attempts, next_attempt_ms } => {
                    StoredState::InFlight { attempts: *attempts, next_attempt_ms: *next_attempt_ms }
                }
                RecordState::Accepted { metering_record_id, aws_request_id, at_ms, verify } => StoredState::Accepted {
                    metering_record_id: opt(metering_record_id),
                    aws_request_id: opt(aws_request_id),
                    at_ms: *at_ms,
                    verify: *verify,
                },
                RecordState::Rejected { reason, aws_request_id, at_ms } => StoredState::Rejected {
                    reason: match reason {
                        RejectReason::CustomerNotSubscribed => StoredRejectReason::CustomerNotSubscribed,
                        RejectReason::DuplicateRecord => StoredRejectReason::DuplicateRecord,
                        RejectReason::AwsException(e) => StoredRejectReason::AwsException(e.clone()),
                        RejectReason::Invalid(m) => StoredRejectReason::Invalid(m.clone()),
                    },
                    aws_request_id: opt(aws_request_id),
                    at_ms: *at_ms,
                },
                RecordState::Expired { reason, at_ms } => {
                    StoredState::Expired { unmapped: matches!(reason, ExpiryReason::Unmapped), at_ms: *at_ms }
                }
                RecordState::Carried => StoredState::Carried,
                RecordState::Merged { into, into_hour_ms, at_ms } => {
                    StoredState::Merged { into: into.into(), into_hour_ms: *into_hour_ms, at_ms: *at_ms }
                }
            },
        }
    }
}

impl From<StoredRecord> for SealedRecord {
    fn from(s: StoredRecord) -> Self {
        SealedRecord {
            key: RecordKey {
                hour_ms: s.hour_ms,
                product: s.product,
                identity: s.identity.into(),
                dimension: s.dimension,
            },
            quantity: s.quantity,
            allocations: s
                .allocations
                .into_iter()
                .map(|a| Allocation { tags: a.tags.into_iter().collect::<TagSet>(), quantity: a.quantity })
                .collect(),
            deadline_ms: s.deadline_ms,
            sealed_at_ms: s.sealed_at_ms,
            recorded: Micros(s.recorded),
            carried_in: Micros(s.carried_in),
            carried_out: Micros(s.carried_out),
            late: Micros(s.late),
            sent_as: s.sent_as.map(Into::into),
            state: match s.state {
                StoredState::Sealed => RecordState::Sealed,
                StoredState::InFlight { attempts, next_attempt_ms } => {
                    RecordState::InFlight { attempts, next_attempt_ms }
                }
                StoredState::Accepted { metering_record_id, aws_request_id, at_ms, verify } => {
                    RecordState::Accepted { metering_record_id, aws_request_id, at_ms, verify }
                }
                StoredState::Rejected { reason, aws_request_id, at_ms } => RecordState::Rejected {
                    reason: match reason {
                        StoredRejectReason::CustomerNotSubscribed => RejectReason::CustomerNotSubscribed,
                        StoredRejectReason::DuplicateRecord => RejectReason::DuplicateRecord,
                        StoredRejectReason::AwsException(e) => RejectReason::AwsException(e),
                        StoredRejectReason::Invalid(m) => RejectReason::Invalid(m),
                    },
                    aws_request_id,
                    at_ms,
                },
                StoredState::Expired { unmapped, at_ms } => RecordState::Expired {
                    reason: if unmapped { ExpiryReason::Unmapped } else { ExpiryReason::DeadlinePassed },
                    at_ms,
                },
                StoredState::Carried => RecordState::Carried,
                StoredState::Merged { into, into_hour_ms, at_ms } => {
                    RecordState::Merged { into: into.into(), into_hour_ms, at_ms }
                }
            },
        }
    }
}

stored_via!(SealedRecord, StoredRecord, "r/ sealed record");
