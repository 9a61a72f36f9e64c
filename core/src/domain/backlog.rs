//! The figures operators watch about what is still to be sent: how many pending records, how many of them are at
//! risk (held under a tenant nobody mapped), the oldest pending hour and the most urgent deadline. Computed once
//! here for `status`, `/metrics` and the report, so the three never disagree.

use super::event::Identity;
use super::record::SealedRecord;
use crate::clock::UnixMillis;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: u64,
    /// Pending records held under an unmapped tenant: they expire unsent unless the tenant is mapped in time.
    pub at_risk: u64,
    pub oldest_pending_hour_ms: Option<UnixMillis>,
    pub most_urgent_deadline_ms: Option<UnixMillis>,
}

impl Backlog {
    /// Over the pending records (Sealed or InFlight); `is_mapped` answers whether a tenant has a mapping now.
    pub fn of<E>(pending: &[SealedRecord], mut is_mapped: impl FnMut(&str) -> Result<bool, E>) -> Result<Backlog, E> {
        let mut b = Backlog { pending: pending.len() as u64, ..Backlog::default() };
        for r in pending {
            if let Identity::Tenant(t) = &r.key.identity
                && r.sent_as.is_none()
                && !is_mapped(t)?
            {
                b.at_risk += 1;
            }
            b.oldest_pending_hour_ms = Some(b.oldest_pending_hour_ms.map_or(r.key.hour_ms, |h| h.min(r.key.hour_ms)));
            b.most_urgent_deadline_ms = Some(b.most_urgent_deadline_ms.map_or(r.deadline_ms, |d| d.min(r.deadline_ms)));
        }
        Ok(b)
    }

    /// Seconds to send `pending` records at `records_per_call` (BatchMeterUsage: 25) and `calls_per_second` in
    /// all (None when nothing is pending or nothing sends).
    pub fn drain_seconds(pending: u64, records_per_call: usize, calls_per_second: f64) -> Option<u64> {
        if pending == 0 || calls_per_second <= 0.0 || records_per_call == 0 {
            return None;
        }
        let calls = pending.div_ceil(records_per_call as u64);
        Some((calls as f64 / calls_per_second).ceil() as u64)
    }

    /// Age of the oldest pending hour at `now_ms`, in whole seconds (0 when nothing is pending).
    pub fn oldest_pending_age_seconds(&self, now_ms: UnixMillis) -> i64 {
        self.oldest_pending_hour_ms.map_or(0, |h| (now_ms - h).max(0) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::quantity::Micros;
    use crate::domain::record::{RecordKey, RecordState};

    fn pending(who: Identity, hour_ms: i64, deadline_ms: i64, sent_as: Option<Identity>) -> SealedRecord {
        SealedRecord {
            key: RecordKey { hour_ms, product: "p".into(), identity: who, dimension: "d".into() },
            quantity: 1,
            allocations: Vec::new(),
            deadline_ms,
            sealed_at_ms: 0,
            recorded: Micros::ZERO,
            carried_in: Micros::ZERO,
            carried_out: Micros::ZERO,
            late: Micros::ZERO,
            sent_as,
            state: RecordState::Sealed,
        }
    }

    #[test]
    fn only_unmapped_unsent_tenant_records_are_at_risk() {
        let legacy = Identity::Legacy { customer_identifier: "c".into() };
        let t = |s: &str| Identity::Tenant(s.into());
        let records = vec![
            pending(t("unmapped"), 7_200_000, 50, None),
            pending(t("mapped"), 3_600_000, 90, None),
            pending(t("unmapped"), 0, 70, Some(legacy.clone())),
            pending(legacy, 10_800_000, 60, None),
        ];
        let b = Backlog::of(&records, |t| Ok::<_, ()>(t == "mapped")).unwrap();
        assert_eq!(
            b,
            Backlog { pending: 4, at_risk: 1, oldest_pending_hour_ms: Some(0), most_urgent_deadline_ms: Some(50) }
        );
        assert_eq!(b.oldest_pending_age_seconds(5_000), 5);
        let none = Backlog::of(&[], |_| Ok::<_, ()>(true)).unwrap();
        assert_eq!((none.oldest_pending_hour_ms, none.oldest_pending_age_seconds(9)), (None, 0));
        assert_eq!(Backlog::of(&records, |_| Err("store")), Err("store"), "a failed lookup is an error, not a guess");
    }

    #[test]
    fn a_full_hour_at_the_quota_drains_in_an_hour() {
        // AWS's ceiling: 10 calls/s x 25 records = 900,000 records an hour.
        assert_eq!(Backlog::drain_seconds(900_000, 25, 10.0), Some(3_600));
        assert_eq!(Backlog::drain_seconds(26, 25, 10.0), Some(1), "two calls at 10/s take 0.2 s, shown as 1 s");
        assert_eq!(Backlog::drain_seconds(1_000, 25, 2.5), Some(16));
        assert_eq!(Backlog::drain_seconds(0, 25, 10.0), None);
        assert_eq!(Backlog::drain_seconds(5, 25, 0.0), None);
    }
}
