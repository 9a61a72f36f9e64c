//! The store's own records under `m/`: totals kept beside the data they count and the progress of a seal.
//! Every integer is a varint (micro-units for quantities), every time a zigzag varint, in the order listed:
//!
//! | key                | version | fields after the version byte, then CRC32                                   |
//! |--------------------|---------|-----------------------------------------------------------------------------|
//! | `m/compacted`      | 1       | records, events, recorded, late, accepted, rejected, expired                |
//! | `m/lost`           | 1       | records, units                                                              |
//! | `m/pending`        | 1       | records, in flight, units, at-risk records, at-risk units                   |
//! | `m/seal_progress`  | 1       | cutoff (zigzag), resume key (byte string)                                   |
//! | `m/sealed_through` | 1       | cutoff (zigzag): every hour before it is sealed                             |

use super::codec::{Reader, Writer};
use super::{DecodeError, Stored, stored_via};
use crate::domain::quantity::Micros;
use crate::store::pending::PendingTotals;
use crate::store::{Compacted, Lost, SealProgress};

pub const COMPACTED_VERSION: u8 = 1;
pub const LOST_VERSION: u8 = 1;
pub const PENDING_VERSION: u8 = 1;
pub const SEAL_PROGRESS_VERSION: u8 = 1;
pub const SEALED_THROUGH_VERSION: u8 = 1;

/// `m/compacted` value: totals of history compacted away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCompacted {
    pub records: u64,
    pub events: u64,
    pub recorded: u128,
    pub late: u128,
    pub accepted: u64,
    pub rejected: u64,
    pub expired: u64,
}

impl StoredCompacted {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(COMPACTED_VERSION);
        w.u64(self.records);
        w.u64(self.events);
        w.varint(self.recorded);
        w.varint(self.late);
        w.u64(self.accepted);
        w.u64(self.rejected);
        w.u64(self.expired);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, COMPACTED_VERSION)?;
        let v = StoredCompacted {
            records: r.u64("records")?,
            events: r.u64("events")?,
            recorded: r.varint("recorded")?,
            late: r.varint("late")?,
            accepted: r.u64("accepted")?,
            rejected: r.u64("rejected")?,
            expired: r.u64("expired")?,
        };
        r.end()?;
        Ok(v)
    }
}

impl From<&Compacted> for StoredCompacted {
    fn from(c: &Compacted) -> Self {
        StoredCompacted {
            records: c.records,
            events: c.events,
            recorded: c.recorded.0,
            late: c.late.0,
            accepted: c.accepted,
            rejected: c.rejected,
            expired: c.expired,
        }
    }
}

impl From<StoredCompacted> for Compacted {
    fn from(s: StoredCompacted) -> Self {
        Compacted {
            records: s.records,
            events: s.events,
            recorded: Micros(s.recorded),
            late: Micros(s.late),
            accepted: s.accepted,
            rejected: s.rejected,
            expired: s.expired,
        }
    }
}

stored_via!(Compacted, StoredCompacted, "m/compacted");

/// `m/lost` value: revenue AWS will never pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLost {
    pub records: u64,
    pub units: u64,
}

impl StoredLost {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(LOST_VERSION);
        w.u64(self.records);
        w.u64(self.units);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, LOST_VERSION)?;
        let v = StoredLost { records: r.u64("records")?, units: r.u64("units")? };
        r.end()?;
        Ok(v)
    }
}

impl From<&Lost> for StoredLost {
    fn from(l: &Lost) -> Self {
        StoredLost { records: l.records, units: l.units }
    }
}

impl From<StoredLost> for Lost {
    fn from(s: StoredLost) -> Self {
        Lost { records: s.records, units: s.units }
    }
}

stored_via!(Lost, StoredLost, "m/lost");

/// `m/pending` value: the pending queue's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredPending {
    pub records: u64,
    pub in_flight: u64,
    pub units: u64,
    pub at_risk_records: u64,
    pub at_risk_units: u64,
}

impl StoredPending {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(PENDING_VERSION);
        w.u64(self.records);
        w.u64(self.in_flight);
        w.u64(self.units);
        w.u64(self.at_risk_records);
        w.u64(self.at_risk_units);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, PENDING_VERSION)?;
        let v = StoredPending {
            records: r.u64("records")?,
            in_flight: r.u64("in flight")?,
            units: r.u64("units")?,
            at_risk_records: r.u64("at-risk records")?,
            at_risk_units: r.u64("at-risk units")?,
        };
        r.end()?;
        Ok(v)
    }
}

impl From<&PendingTotals> for StoredPending {
    fn from(p: &PendingTotals) -> Self {
        StoredPending {
            records: p.records,
            in_flight: p.in_flight,
            units: p.units,
            at_risk_records: p.at_risk_records,
            at_risk_units: p.at_risk_units,
        }
    }
}

impl From<StoredPending> for PendingTotals {
    fn from(s: StoredPending) -> Self {
        PendingTotals {
            records: s.records,
            in_flight: s.in_flight,
            units: s.units,
            at_risk_records: s.at_risk_records,
            at_risk_units: s.at_risk_units,
        }
    }
}

stored_via!(PendingTotals, StoredPending, "m/pending");

/// `m/seal_progress` value: a chunked seal under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSealProgress {
    pub cutoff_ms: i64,
    pub resume_key: Vec<u8>,
}

impl StoredSealProgress {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(SEAL_PROGRESS_VERSION);
        w.i64(self.cutoff_ms);
        w.bytes(&self.resume_key);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, SEAL_PROGRESS_VERSION)?;
        let v = StoredSealProgress { cutoff_ms: r.i64("cutoff")?, resume_key: r.bytes("resume key")? };
        r.end()?;
        Ok(v)
    }
}

impl From<&SealProgress> for StoredSealProgress {
    fn from(p: &SealProgress) -> Self {
        StoredSealProgress { cutoff_ms: p.cutoff_ms, resume_key: p.resume_key.clone() }
    }
}

impl From<StoredSealProgress> for SealProgress {
    fn from(s: StoredSealProgress) -> Self {
        SealProgress { cutoff_ms: s.cutoff_ms, resume_key: s.resume_key }
    }
}

stored_via!(SealProgress, StoredSealProgress, "m/seal_progress");

/// `m/sealed_through` value: every hour before `cutoff_ms` is sealed. The watermark is a bare time in the store's
/// code, so this stored type is also what the store reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSealedThrough {
    pub cutoff_ms: i64,
}

impl Stored for StoredSealedThrough {
    const FAMILY: &'static str = "m/sealed_through";

    fn to_stored(&self) -> Vec<u8> {
        let mut w = Writer::new(SEALED_THROUGH_VERSION);
        w.i64(self.cutoff_ms);
        w.finish()
    }

    fn from_stored(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, SEALED_THROUGH_VERSION)?;
        let v = StoredSealedThrough { cutoff_ms: r.i64("cutoff")? };
        r.end()?;
        Ok(v)
    }
}
