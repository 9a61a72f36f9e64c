//! The reconciliation report: per hour × customer × dimension, where every recorded micro-unit went.
//!
//! Totals reconcile exactly: recorded = accepted + rejected + expired + pending + carried + open, where
//! the first four are whole units sent (or to be sent) to AWS, `carried` is the fraction waiting for a
//! series' next hour, and `open` is usage in hours not sealed yet. A held record merged into its identity's
//! next hour (its AWS key was taken) counts nothing itself: its units are in `carried` until that hour seals.
//!
//! Reconciling is not the same as being paid: units AWS answered DuplicateRecord for on a first send are
//! `rejected` in the ledger and also `lost` — shown apart, so "reconciled" never hides them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::UnixMillis;
use crate::domain::event::Identity;
use crate::domain::quantity::{Micros, SCALE};
use crate::domain::record::{RecordKey, RecordState};

/// The reason shown for usage held under a tenant that has no marketplace identity yet.
pub const AT_RISK: &str = "at risk: tenant not mapped";
use crate::store::{Ledger, LedgerSnapshot, StoreError};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    pub hour: UnixMillis,
    pub product: String,
    pub customer: String,
    pub dimension: String,
    /// open | sealed | in_flight | accepted | rejected | expired | carried | merged
    pub state: String,
    pub recorded: String,
    pub late: String,
    pub carried_in: String,
    pub carried_out: String,
    /// Whole units in the sealed record.
    pub sealed: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub expired: u64,
    pub pending: u64,
    pub reason: String,
    pub metering_record_id: String,
    pub deadline: Option<UnixMillis>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub recorded: String,
    pub late: String,
    pub accepted: String,
    pub rejected: String,
    pub expired: String,
    pub pending: String,
    pub carried: String,
    pub open: String,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub expired_by_reason: BTreeMap<String, u64>,
    /// Terminal records older than the retention, removed from the rows but kept in these totals.
    pub compacted_records: u64,
    /// True when recorded == accepted + rejected + expired + pending + carried + open, to the micro-unit.
    pub reconciled: bool,
    /// Records, and their whole units, AWS answered DuplicateRecord for on a first send: it holds another
    /// quantity under their key and will never bill these (part of `rejected`; kept through retention).
    pub lost_records: u64,
    pub lost_units: u64,
    /// Whole units of held records merged into their identity's next hour (their AWS key was taken).
    pub merged_units: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub totals: Totals,
}

fn units(u: u64) -> Micros {
    Micros(u128::from(u) * u128::from(SCALE))
}

/// The report over one consistent snapshot of the ledger ([`crate::store::Ledger::snapshot`]).
pub async fn build(ledger: &(impl Ledger + ?Sized)) -> Result<Report, StoreError> {
    from_snapshot(&ledger.snapshot().await?)
}

fn overflow(_: crate::domain::quantity::Overflow) -> StoreError {
    StoreError::Overflow("report totals".into())
}

/// Builds the report from a snapshot: pure, so its parts can only disagree if the snapshot did.
pub fn from_snapshot(snap: &LedgerSnapshot) -> Result<Report, StoreError> {
    let mapped: std::collections::HashSet<&str> = snap.mappings.iter().map(|m| m.tenant_id.as_str()).collect();
    let mut rows = Vec::new();
    let (mut recorded, mut late, mut open) = (Micros::ZERO, Micros::ZERO, Micros::ZERO);
    let (mut accepted, mut rejected, mut expired, mut pending) = (0u64, 0u64, 0u64, 0u64);
    let mut totals = Totals::default();

    for r in &snap.records {
        let q = u64::from(r.quantity);
        let mut row = Row {
            hour: r.key.hour_ms,
            product: r.key.product.clone(),
            customer: r.key.identity.label(),
            dimension: r.key.dimension.clone(),
            state: r.state.name().to_string(),
            recorded: r.recorded.to_string(),
            late: r.late.to_string(),
            carried_in: r.carried_in.to_string(),
            carried_out: r.carried_out.to_string(),
            sealed: q,
            accepted: 0,
            rejected: 0,
            expired: 0,
            pending: 0,
            reason: String::new(),
            metering_record_id: String::new(),
            deadline: Some(r.deadline_ms),
        };
        match &r.state {
            RecordState::Sealed | RecordState::InFlight { .. } => {
                row.pending = q;
                if let Identity::Tenant(t) = &r.key.identity
                    && r.sent_as.is_none()
                    && !mapped.contains(t.as_str())
                {
                    row.reason = AT_RISK.into();
                }
            }
            RecordState::Accepted { metering_record_id, verify, .. } => {
                row.accepted = q;
                row.metering_record_id = metering_record_id.clone().unwrap_or_default();
                if *verify {
                    row.reason = "DuplicateRecord on resend: verify".into();
                }
            }
            RecordState::Rejected { reason, aws_request_id, .. } => {
                row.rejected = q;
                row.reason = if reason.is_lost() {
                    format!(
                        "LOST: {} (AWS holds another quantity for this hour; request id {})",
                        reason.label(),
                        aws_request_id.as_deref().unwrap_or("-")
                    )
                } else {
                    reason.label()
                };
                *totals.rejected_by_reason.entry(reason.label()).or_default() += q;
            }
            RecordState::Expired { reason, .. } => {
                row.expired = q;
                row.reason = format!("{reason:?}");
                *totals.expired_by_reason.entry(format!("{reason:?}")).or_default() += q;
            }
            RecordState::Carried => {}
            RecordState::Merged { into, into_hour_ms, .. } => {
                totals.merged_units += q;
                row.reason = format!(
                    "merged: another record has this AWS key; {q} units carried to {} from {}",
                    into.label(),
                    crate::clock::rfc3339(*into_hour_ms)
                );
            }
        }
        recorded = recorded.try_add(r.recorded).map_err(overflow)?;
        late = late.try_add(r.late).map_err(overflow)?;
        accepted += row.accepted;
        rejected += row.rejected;
        expired += row.expired;
        pending += row.pending;
        rows.push(row);
    }

    // Open hours: buckets not sealed yet, one row per future record.
    let mut open_rows: BTreeMap<RecordKey, (Micros, Micros)> = BTreeMap::new();
    for (k, b) in &snap.buckets {
        let key = RecordKey {
            hour_ms: k.hour_ms,
            product: k.product.clone(),
            identity: k.identity.clone(),
            dimension: k.dimension.clone(),
        };
        let e = open_rows.entry(key).or_default();
        e.0 = e.0.try_add(b.total).map_err(overflow)?;
        e.1 = e.1.try_add(b.late).map_err(overflow)?;
    }
    for (k, (total, l)) in open_rows {
        let reason = match &k.identity {
            Identity::Tenant(t) if !mapped.contains(t.as_str()) => AT_RISK.to_string(),
            _ => String::new(),
        };
        recorded = recorded.try_add(total).map_err(overflow)?;
        late = late.try_add(l).map_err(overflow)?;
        open = open.try_add(total).map_err(overflow)?;
        rows.push(Row {
            hour: k.hour_ms,
            product: k.product,
            customer: k.identity.label(),
            dimension: k.dimension,
            state: "open".into(),
            recorded: total.to_string(),
            late: l.to_string(),
            carried_in: "0".into(),
            carried_out: "0".into(),
            sealed: 0,
            accepted: 0,
            rejected: 0,
            expired: 0,
            pending: 0,
            reason,
            metering_record_id: String::new(),
            deadline: None,
        });
    }
    rows.sort_by(|a, b| {
        (a.hour, &a.product, &a.customer, &a.dimension).cmp(&(b.hour, &b.product, &b.customer, &b.dimension))
    });

    // History removed by retention still counts in the totals.
    let compacted = &snap.compacted;
    recorded = recorded.try_add(compacted.recorded).map_err(overflow)?;
    late = late.try_add(compacted.late).map_err(overflow)?;
    accepted += compacted.accepted;
    rejected += compacted.rejected;
    expired += compacted.expired;
    totals.compacted_records = compacted.records;
    let carried = Micros::try_sum(snap.carries.iter().copied()).map_err(overflow)?;
    let accounted = [units(accepted), units(rejected), units(expired), units(pending), carried, open]
        .into_iter()
        .try_fold(Micros::ZERO, |a, m| a.checked_add(m));
    totals.recorded = recorded.to_string();
    totals.late = late.to_string();
    totals.accepted = accepted.to_string();
    totals.rejected = rejected.to_string();
    totals.expired = expired.to_string();
    totals.pending = pending.to_string();
    totals.carried = carried.to_string();
    totals.open = open.to_string();
    totals.reconciled = accounted == Some(recorded);
    let lost = snap.lost;
    totals.lost_records = lost.records;
    totals.lost_units = lost.units;
    Ok(Report { rows, totals })
}

impl Report {
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "hour,product,customer,dimension,state,recorded,late,carried_in,carried_out,sealed,accepted,rejected,expired,pending,reason,metering_record_id\n",
        );
        let esc = |s: &str| {
            if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
        };
        for r in &self.rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                crate::clock::rfc3339(r.hour),
                esc(&r.product),
                esc(&r.customer),
                esc(&r.dimension),
                r.state,
                r.recorded,
                r.late,
                r.carried_in,
                r.carried_out,
                r.sealed,
                r.accepted,
                r.rejected,
                r.expired,
                r.pending,
                esc(&r.reason),
                esc(&r.metering_record_id)
            ));
        }
        out
    }

    /// What `meterd report` exits with: 3 when the ledger does not reconcile, 4 when revenue was lost.
    pub fn exit_code(&self) -> u8 {
        match (self.totals.reconciled, self.totals.lost_records > 0 || self.totals.lost_units > 0) {
            (false, _) => 3,
            (true, true) => 4,
            (true, false) => 0,
        }
    }

    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{:<20} {:<10} {:<34} {:<16} {:<9} {:>12} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8}  {}\n",
            "hour",
            "product",
            "customer",
            "dimension",
            "state",
            "recorded",
            "sealed",
            "accepted",
            "rejected",
            "expired",
            "pending",
            "carried",
            "reason"
        );
        for r in &self.rows {
            let mut customer = r.customer.clone();
            if customer.chars().count() > 34 {
                customer = format!("{}…", customer.chars().take(33).collect::<String>());
            }
            out.push_str(&format!(
                "{:<20} {:<10} {:<34} {:<16} {:<9} {:>12} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8}  {}\n",
                crate::clock::rfc3339(r.hour).trim_end_matches(":00.000Z"),
                r.product,
                customer,
                r.dimension,
                r.state,
                r.recorded,
                r.sealed,
                r.accepted,
                r.rejected,
                r.expired,
                r.pending,
                r.carried_out,
                r.reason
            ));
        }
        let t = &self.totals;
        let verdict = match (t.reconciled, t.lost_units > 0 || t.lost_records > 0) {
            (false, _) => "DOES NOT RECONCILE",
            (true, true) => "reconciled, REVENUE LOST",
            (true, false) => "reconciled",
        };
        out.push_str(&format!(
            "\ntotals: recorded {} (late {}) = accepted {} + rejected {} + expired {} + pending {} + carried {} + open {}  [{}]\n",
            t.recorded,
            t.late,
            t.accepted,
            t.rejected,
            t.expired,
            t.pending,
            t.carried,
            t.open,
            verdict
        ));
        if t.lost_records > 0 || t.lost_units > 0 {
            out.push_str(&format!(
                "LOST REVENUE: {} units in {} records that AWS answered DuplicateRecord on their first send (it already \
                 holds another quantity for those hours: they will never be billed; see docs/operations.md)\n",
                t.lost_units, t.lost_records
            ));
        }
        if t.merged_units > 0 {
            out.push_str(&format!(
                "merged: {} units of held tenant usage carried into their identity's next hour (AWS key already taken)\n",
                t.merged_units
            ));
        }
        out
    }
}
