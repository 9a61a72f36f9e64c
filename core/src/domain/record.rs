//! Sealed usage records: the frozen unit meterd submits to AWS, and the states it moves through.
//!
//! ```text
//! Sealed ──▶ InFlight ──▶ Accepted (MeteringRecordId)
//!   │           │    └──▶ Rejected (reason)
//!   │           └──(retryable failure: stays InFlight, retried with backoff until its deadline)
//!   └───────────┴──────▶ Expired (deadline passed; never sent again)
//! Carried: an hour whose usage was all a fraction of a unit; nothing to send, all carried on.
//! Merged: a record held under a tenant whose AWS key (the identity it maps to, the hour, the dimension) is
//!   already taken by another record; never sent, its units carried into the identity's next open hour.
//! ```
//! A record's content never changes after sealing, so every send is byte-identical.

use serde::{Deserialize, Serialize};

use super::event::{Identity, TagSet};
use super::quantity::Micros;
use crate::clock::UnixMillis;

/// What identifies a record to AWS (first write wins per this key), and in our outbox.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    pub hour_ms: UnixMillis,
    pub product: String,
    pub identity: Identity,
    pub dimension: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Empty for the untagged share.
    pub tags: TagSet,
    pub quantity: u32,
}

/// Why a record ended rejected.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    CustomerNotSubscribed,
    /// AWS already holds a different quantity for this key (someone else metered the hour).
    DuplicateRecord,
    /// A request-level AWS exception isolated to this record by bisection (the exception name).
    AwsException(String),
    /// meterd's own pre-send check failed (what AWS would refuse).
    Invalid(String),
}

impl RejectReason {
    /// Revenue AWS will never pay for this record: it already holds another quantity under the same key, so
    /// nothing meterd can resend bills these units.
    pub fn is_lost(&self) -> bool {
        matches!(self, RejectReason::DuplicateRecord)
    }

    pub fn label(&self) -> String {
        match self {
            RejectReason::CustomerNotSubscribed => "CustomerNotSubscribed".into(),
            RejectReason::DuplicateRecord => "DuplicateRecord".into(),
            RejectReason::AwsException(e) => e.clone(),
            RejectReason::Invalid(m) => format!("Invalid: {m}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpiryReason {
    /// The deadline passed before AWS accepted it (outage, throttling, ...).
    DeadlinePassed,
    /// The customer had no marketplace identity (tenant never mapped) before the deadline.
    Unmapped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    Sealed,
    /// Handed to AWS at least once; the outcome is not known yet. Resent unchanged after a restart.
    InFlight {
        attempts: u32,
        next_attempt_ms: UnixMillis,
    },
    Accepted {
        /// None when AWS answered DuplicateRecord to a resend of this very record: already billed, verify.
        metering_record_id: Option<String>,
        aws_request_id: Option<String>,
        at_ms: UnixMillis,
        verify: bool,
    },
    Rejected {
        reason: RejectReason,
        aws_request_id: Option<String>,
        at_ms: UnixMillis,
    },
    Expired {
        reason: ExpiryReason,
        at_ms: UnixMillis,
    },
    /// The hour's usage was all a fraction of a unit: nothing to send, it all rode on in the carry.
    Carried,
    /// A held tenant record whose AWS key was already taken when the tenant was mapped (another record of the
    /// identity, or of another tenant mapped to it, for the same hour and dimension). AWS keeps the first
    /// record per key, so this one is never sent: its whole units were carried into `into`'s series and bill
    /// in that identity's next sealed hour (`into_hour_ms`, or the first one sealed after it).
    Merged {
        into: Identity,
        into_hour_ms: UnixMillis,
        at_ms: UnixMillis,
    },
}

impl RecordState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RecordState::Accepted { .. }
                | RecordState::Rejected { .. }
                | RecordState::Expired { .. }
                | RecordState::Carried
                | RecordState::Merged { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            RecordState::Sealed => "sealed",
            RecordState::InFlight { .. } => "in_flight",
            RecordState::Accepted { .. } => "accepted",
            RecordState::Rejected { .. } => "rejected",
            RecordState::Expired { .. } => "expired",
            RecordState::Carried => "carried",
            RecordState::Merged { .. } => "merged",
        }
    }

    /// Whether this record was possibly already delivered to AWS.
    pub fn was_sent(&self) -> bool {
        matches!(self, RecordState::InFlight { .. })
    }
}

/// A frozen record plus its accounting and state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRecord {
    pub key: RecordKey,
    /// Whole units sent to AWS.
    pub quantity: u32,
    /// Empty when the hour had no tagged usage (then no UsageAllocations are sent).
    pub allocations: Vec<Allocation>,
    pub deadline_ms: UnixMillis,
    pub sealed_at_ms: UnixMillis,
    /// Usage recorded into this hour's buckets (including late usage carried into it).
    pub recorded: Micros,
    /// Fraction carried in from the previous sealed hour of this customer/dimension.
    pub carried_in: Micros,
    /// Fraction carried out to the next one.
    pub carried_out: Micros,
    /// Part of `recorded` that arrived late (for an already sealed hour) and was counted here.
    pub late: Micros,
    /// For a record held under a tenant id: the marketplace identity it was first sent as. Frozen from then on,
    /// like the rest of the content, so a re-mapped tenant cannot change what a retry sends.
    pub sent_as: Option<Identity>,
    pub state: RecordState,
}

/// Why a new state of a sealed record is refused: its content is frozen at seal time and a terminal state is final.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateRefused {
    #[error("attempt to change the sealed content of {0:?}")]
    ContentChanged(RecordKey),
    #[error("record {0:?} is already {1}")]
    Final(RecordKey, &'static str),
}

/// Checks that `new` may replace `old`: same frozen content (quantity, allocations, deadline, and the identity it
/// was first sent as), and `old` not in a terminal state.
pub fn check_update(old: &SealedRecord, new: &SealedRecord) -> Result<(), UpdateRefused> {
    let identity_changed = old.sent_as.is_some() && old.sent_as != new.sent_as;
    if old.quantity != new.quantity
        || old.allocations != new.allocations
        || old.deadline_ms != new.deadline_ms
        || identity_changed
    {
        return Err(UpdateRefused::ContentChanged(new.key.clone()));
    }
    if old.state.is_terminal() {
        return Err(UpdateRefused::Final(new.key.clone(), old.state.name()));
    }
    Ok(())
}

/// Totals of the records and events retention removed, kept so the report still reconciles (the sled store's
/// `m/compacted`, the shared ledger's `meterd_compacted`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    pub records: u64,
    /// Event keys forgotten with them.
    pub events: u64,
    pub recorded: Micros,
    pub late: Micros,
    /// Whole units of the accepted, rejected and expired records removed.
    pub accepted: u64,
    pub rejected: u64,
    pub expired: u64,
}

/// The units a record's new state loses for good (DuplicateRecord on a first send), if any.
pub fn lost_units(r: &SealedRecord) -> Option<u64> {
    match &r.state {
        RecordState::Rejected { reason, .. } if reason.is_lost() => Some(u64::from(r.quantity)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: RecordState) -> SealedRecord {
        SealedRecord {
            key: RecordKey {
                hour_ms: 0,
                product: "p".into(),
                identity: Identity::Tenant("t".into()),
                dimension: "d".into(),
            },
            quantity: 3,
            allocations: Vec::new(),
            deadline_ms: 10,
            sealed_at_ms: 1,
            recorded: Micros(3_000_000),
            carried_in: Micros::ZERO,
            carried_out: Micros::ZERO,
            late: Micros::ZERO,
            sent_as: None,
            state,
        }
    }

    #[test]
    fn only_the_state_of_a_pending_record_may_change() {
        let old = record(RecordState::Sealed);
        let sent = record(RecordState::InFlight { attempts: 1, next_attempt_ms: 5 });
        assert_eq!(check_update(&old, &sent), Ok(()));
        for changed in [
            SealedRecord { quantity: 4, ..sent.clone() },
            SealedRecord { deadline_ms: 11, ..sent.clone() },
            SealedRecord { allocations: vec![Allocation { tags: Default::default(), quantity: 3 }], ..sent.clone() },
        ] {
            assert!(matches!(check_update(&old, &changed), Err(UpdateRefused::ContentChanged(_))));
        }
        // The identity a held record was first sent as is frozen too; fixing it the first time is allowed.
        let aws = Identity::Legacy { customer_identifier: "c".into() };
        let fixed = SealedRecord { sent_as: Some(aws.clone()), ..old.clone() };
        assert_eq!(check_update(&old, &fixed), Ok(()));
        let moved =
            SealedRecord { sent_as: Some(Identity::Legacy { customer_identifier: "x".into() }), ..fixed.clone() };
        assert!(matches!(check_update(&fixed, &moved), Err(UpdateRefused::ContentChanged(_))));
        let done = record(RecordState::Expired { reason: ExpiryReason::DeadlinePassed, at_ms: 9 });
        assert_eq!(check_update(&done, &sent), Err(UpdateRefused::Final(sent.key.clone(), "expired")));
    }

    #[test]
    fn only_a_duplicate_record_on_a_first_send_is_lost() {
        let rejected = |reason| RecordState::Rejected { reason, aws_request_id: None, at_ms: 1 };
        assert_eq!(lost_units(&record(rejected(RejectReason::DuplicateRecord))), Some(3));
        assert_eq!(lost_units(&record(rejected(RejectReason::CustomerNotSubscribed))), None);
        assert_eq!(lost_units(&record(RecordState::Sealed)), None);
    }
}
