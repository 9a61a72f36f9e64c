//! The customer registry's values: tenant → marketplace identity mappings and each identity's lifecycle.

use serde::{Deserialize, Serialize};

use super::event::Identity;
use super::lifecycle::{LifecycleEvent, LifecycleKind, Subject};
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

impl CustomerLifecycle {
    /// A customer meterd starts tracking: Active, no history yet.
    pub fn new(identity: Identity, product_code: Option<String>, agreement_id: Option<String>) -> Self {
        CustomerLifecycle {
            identity,
            product_code,
            agreement_id,
            status: CustomerStatus::Active,
            history: Vec::new(),
            not_subscribed_at_ms: None,
        }
    }

    /// Appends to the history, dropping the oldest entry beyond [`MAX_HISTORY`].
    pub fn record(&mut self, change: StatusChange) {
        self.history.push(change);
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
    }

    /// Applies a lifecycle event at `now_ms`: the status only moves forward; a duplicate (same event id) or an
    /// older event is kept in the history with `applied = false` and changes nothing.
    pub fn apply(&mut self, ev: &LifecycleEvent, now_ms: UnixMillis) -> Transition {
        // A license event may carry the account id an earlier event lacked.
        if let (Identity::Aws { account_id, .. }, Subject::License { account_id: Some(a), .. }) =
            (&mut self.identity, &ev.subject)
            && account_id.is_empty()
        {
            account_id.clone_from(a);
        }
        let next = match ev.kind {
            LifecycleKind::Active => CustomerStatus::Active,
            LifecycleKind::Deprovisioning => CustomerStatus::Deprovisioning { since_ms: now_ms },
            LifecycleKind::Ended => CustomerStatus::Ended { since_ms: now_ms, reason: ev.source_type.clone() },
        };
        let duplicate =
            ev.event_id.as_ref().is_some_and(|id| self.history.iter().any(|h| h.event_id.as_ref() == Some(id)));
        let applied = !duplicate && self.status.advances_to(&next);
        let was_active = self.status.accepts_usage();
        if applied {
            self.status = next.clone();
        }
        self.record(StatusChange {
            at_ms: now_ms,
            status: next,
            source: ev.source_type.clone(),
            event_id: ev.event_id.clone(),
            applied,
        });
        if self.agreement_id.is_none() {
            self.agreement_id.clone_from(&ev.agreement_id);
        }
        Transition { applied, leaves: applied && was_active && !self.status.accepts_usage() }
    }

    /// Appends `entry`; with `reinstate`, moves a customer that is not Active back to Active (the one move back,
    /// an operator's). Returns false, changing nothing, when asked to reinstate an Active customer.
    pub fn amend(&mut self, mut entry: StatusChange, reinstate: bool) -> bool {
        if reinstate {
            if self.status.accepts_usage() {
                return false;
            }
            self.status = CustomerStatus::Active;
            entry.status = CustomerStatus::Active;
        }
        self.record(entry);
        true
    }

    /// Keeps AWS's CustomerNotSubscribed answer: the status does not change (AWS decides eligibility at each call
    /// and a pending agreement may still activate), but the first answer goes into the history.
    pub fn note_not_subscribed(&mut self, at_ms: UnixMillis) {
        if self.not_subscribed_at_ms.is_none() {
            self.record(StatusChange {
                at_ms,
                status: self.status.clone(),
                source: "CustomerNotSubscribed from BatchMeterUsage".into(),
                event_id: None,
                applied: false,
            });
        }
        self.not_subscribed_at_ms = Some(at_ms);
    }
}

/// What a lifecycle event did to a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub applied: bool,
    /// The customer just stopped accepting usage: seal its open hours now (its final reporting hour).
    pub leaves: bool,
}

/// The deadline cap for a leaving customer's final records: one hour after the event, less at most half the
/// safety margin, so the queue sends them ahead of everything else.
pub fn final_hour_deadline(now_ms: UnixMillis, margin_ms: i64) -> UnixMillis {
    now_ms.saturating_add(crate::clock::HOUR_MS).saturating_sub(margin_ms.min(crate::clock::HOUR_MS / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: LifecycleKind, id: Option<&str>) -> LifecycleEvent {
        LifecycleEvent {
            kind,
            subject: Subject::License { license_arn: "arn:l".into(), account_id: Some("123".into()) },
            agreement_id: Some("agmt-1".into()),
            product_code: None,
            event_id: id.map(str::to_string),
            source_type: "License Deprovisioned".into(),
        }
    }

    fn customer() -> CustomerLifecycle {
        CustomerLifecycle::new(Identity::Aws { account_id: String::new(), license_arn: "arn:l".into() }, None, None)
    }

    #[test]
    fn status_moves_forward_only_and_duplicates_change_nothing() {
        let mut c = customer();
        let t = c.apply(&event(LifecycleKind::Deprovisioning, Some("e1")), 10);
        assert_eq!(t, Transition { applied: true, leaves: true });
        assert_eq!(c.status, CustomerStatus::Deprovisioning { since_ms: 10 });
        assert_eq!(c.identity, Identity::Aws { account_id: "123".into(), license_arn: "arn:l".into() });
        assert_eq!(c.agreement_id.as_deref(), Some("agmt-1"));
        // The same event again, then an older kind: recorded, not applied.
        assert_eq!(c.apply(&event(LifecycleKind::Ended, Some("e1")), 11), Transition { applied: false, leaves: false });
        assert_eq!(c.apply(&event(LifecycleKind::Active, None), 12), Transition { applied: false, leaves: false });
        // Ended after Deprovisioning is progress, but the customer had already left.
        assert_eq!(c.apply(&event(LifecycleKind::Ended, Some("e2")), 13), Transition { applied: true, leaves: false });
        assert_eq!(c.history.iter().map(|h| h.applied).collect::<Vec<_>>(), vec![true, false, false, true]);
    }

    #[test]
    fn history_is_bounded_and_reinstating_is_the_one_way_back() {
        let mut c = customer();
        for i in 0..(MAX_HISTORY + 5) {
            c.note_not_subscribed(i as i64);
            c.amend(
                StatusChange {
                    at_ms: 0,
                    status: CustomerStatus::Active,
                    source: "x".into(),
                    event_id: None,
                    applied: false,
                },
                false,
            );
        }
        assert_eq!(c.history.len(), MAX_HISTORY);
        assert_eq!(c.not_subscribed_at_ms, Some((MAX_HISTORY + 4) as i64));
        let entry = StatusChange {
            at_ms: 1,
            status: CustomerStatus::Ended { since_ms: 0, reason: String::new() },
            source: "operator".into(),
            event_id: None,
            applied: true,
        };
        assert!(!c.amend(entry.clone(), true), "an Active customer is not reinstated");
        c.apply(&event(LifecycleKind::Ended, None), 5);
        assert!(c.amend(entry, true));
        assert_eq!(c.status, CustomerStatus::Active);
        assert_eq!(c.history.last().unwrap().status, CustomerStatus::Active);
    }

    #[test]
    fn a_leaving_customers_deadline_is_within_the_hour() {
        let h = crate::clock::HOUR_MS;
        assert_eq!(final_hour_deadline(0, 10), h - 10);
        assert_eq!(final_hour_deadline(0, 3 * h), h / 2, "at most half the margin is taken");
        assert_eq!(final_hour_deadline(i64::MAX, 0), i64::MAX);
    }
}
