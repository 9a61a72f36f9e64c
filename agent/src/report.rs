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
use crate::domain::record::{RecordKey, RecordState, SealedRecord};

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
    /// Fleet mode: keys forwarded to the shared ledger with other content than the event counted under them —
    /// recorded there, never counted (not part of `recorded`); 0 for a standalone agent.
    pub conflicts: u64,
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
    let at_risk = |t: &str| !mapped.contains(t);
    let mut rows = Vec::new();
    let mut acc = TotalsAcc::default();
    for r in &snap.records {
        rows.push(acc.record(r, &at_risk)?);
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
        rows.push(acc.open(k, total, l, &at_risk)?);
    }
    rows.sort_by(|a, b| {
        (a.hour, &a.product, &a.customer, &a.dimension).cmp(&(b.hour, &b.product, &b.customer, &b.dimension))
    });
    acc.add_carried(Micros::try_sum(snap.carries.iter().copied()).map_err(overflow)?)?;
    Ok(Report { rows, totals: acc.finish(&snap.compacted, snap.lost)? })
}

/// The totals, accumulated row by row: one place computes them for the one-reply report and for the streamed one
/// (which never holds its rows).
#[derive(Debug, Default, Clone)]
pub struct TotalsAcc {
    recorded: Micros,
    late: Micros,
    open: Micros,
    carried: Micros,
    accepted: u64,
    rejected: u64,
    expired: u64,
    pending: u64,
    rejected_by_reason: BTreeMap<String, u64>,
    expired_by_reason: BTreeMap<String, u64>,
    merged_units: u64,
}

impl TotalsAcc {
    /// The row of a sealed record, counted into the totals. `at_risk(tenant)`: the tenant has no mapping.
    pub fn record(&mut self, r: &SealedRecord, at_risk: &dyn Fn(&str) -> bool) -> Result<Row, StoreError> {
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
                    && at_risk(t)
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
                *self.rejected_by_reason.entry(reason.label()).or_default() += q;
            }
            RecordState::Expired { reason, .. } => {
                row.expired = q;
                row.reason = format!("{reason:?}");
                *self.expired_by_reason.entry(format!("{reason:?}")).or_default() += q;
            }
            RecordState::Carried => {}
            RecordState::Merged { into, into_hour_ms, .. } => {
                self.merged_units += q;
                row.reason = format!(
                    "merged: another record has this AWS key; {q} units carried to {} from {}",
                    into.label(),
                    crate::clock::rfc3339(*into_hour_ms)
                );
            }
        }
        self.recorded = self.recorded.try_add(r.recorded).map_err(overflow)?;
        self.late = self.late.try_add(r.late).map_err(overflow)?;
        self.accepted += row.accepted;
        self.rejected += row.rejected;
        self.expired += row.expired;
        self.pending += row.pending;
        Ok(row)
    }

    /// The row of an open hour (every tag set of one future record summed), counted into the totals.
    pub fn open(
        &mut self,
        k: RecordKey,
        total: Micros,
        late: Micros,
        at_risk: &dyn Fn(&str) -> bool,
    ) -> Result<Row, StoreError> {
        let reason = match &k.identity {
            Identity::Tenant(t) if at_risk(t) => AT_RISK.to_string(),
            _ => String::new(),
        };
        self.recorded = self.recorded.try_add(total).map_err(overflow)?;
        self.late = self.late.try_add(late).map_err(overflow)?;
        self.open = self.open.try_add(total).map_err(overflow)?;
        Ok(Row {
            hour: k.hour_ms,
            product: k.product,
            customer: k.identity.label(),
            dimension: k.dimension,
            state: "open".into(),
            recorded: total.to_string(),
            late: late.to_string(),
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
        })
    }

    /// Fractions waiting for a series' next hour.
    pub fn add_carried(&mut self, m: Micros) -> Result<(), StoreError> {
        self.carried = self.carried.try_add(m).map_err(overflow)?;
        Ok(())
    }

    /// The totals, with history removed by retention (which still counts) and the revenue lost.
    pub fn finish(self, compacted: &crate::store::Compacted, lost: crate::store::Lost) -> Result<Totals, StoreError> {
        let recorded = self.recorded.try_add(compacted.recorded).map_err(overflow)?;
        let late = self.late.try_add(compacted.late).map_err(overflow)?;
        let accepted = self.accepted + compacted.accepted;
        let rejected = self.rejected + compacted.rejected;
        let expired = self.expired + compacted.expired;
        let accounted =
            [units(accepted), units(rejected), units(expired), units(self.pending), self.carried, self.open]
                .into_iter()
                .try_fold(Micros::ZERO, |a, m| a.checked_add(m));
        Ok(Totals {
            recorded: recorded.to_string(),
            late: late.to_string(),
            accepted: accepted.to_string(),
            rejected: rejected.to_string(),
            expired: expired.to_string(),
            pending: self.pending.to_string(),
            carried: self.carried.to_string(),
            open: self.open.to_string(),
            rejected_by_reason: self.rejected_by_reason,
            expired_by_reason: self.expired_by_reason,
            compacted_records: compacted.records,
            reconciled: accounted == Some(recorded),
            lost_records: lost.records,
            lost_units: lost.units,
            merged_units: self.merged_units,
            conflicts: 0,
        })
    }
}

/// CSV of rows: the header, then [`csv_row`] per row.
pub const CSV_HEADER: &str = "hour,product,customer,dimension,state,recorded,late,carried_in,carried_out,sealed,accepted,rejected,expired,pending,reason,metering_record_id\n";

pub fn csv_escape(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

pub fn csv_row(r: &Row) -> String {
    let esc = csv_escape;
    format!(
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
    )
}

/// The table of rows: this header, then [`table_row`] per row, then [`totals_text`].
pub fn table_header() -> String {
    format!(
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
    )
}

pub fn table_row(r: &Row) -> String {
    let mut customer = r.customer.clone();
    if customer.chars().count() > 34 {
        customer = format!("{}…", customer.chars().take(33).collect::<String>());
    }
    format!(
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
    )
}

/// What `meterd report` exits with: 3 when the ledger does not reconcile, 4 when revenue was lost.
pub fn exit_code(t: &Totals) -> u8 {
    match (t.reconciled, t.lost_records > 0 || t.lost_units > 0) {
        (false, _) => 3,
        (true, true) => 4,
        (true, false) => 0,
    }
}

/// The totals lines under a table.
pub fn totals_text(t: &Totals) -> String {
    let verdict = match (t.reconciled, t.lost_units > 0 || t.lost_records > 0) {
        (false, _) => "DOES NOT RECONCILE",
        (true, true) => "reconciled, REVENUE LOST",
        (true, false) => "reconciled",
    };
    let mut out = format!(
        "\ntotals: recorded {} (late {}) = accepted {} + rejected {} + expired {} + pending {} + carried {} + open {}  [{}]\n",
        t.recorded, t.late, t.accepted, t.rejected, t.expired, t.pending, t.carried, t.open, verdict
    );
    if t.lost_records > 0 || t.lost_units > 0 {
        out.push_str(&format!(
            "LOST REVENUE: {} units in {} records that AWS answered DuplicateRecord on their first send (it already \
             holds another quantity for those hours: they will never be billed; see docs/operations.md)\n",
            t.lost_units, t.lost_records
        ));
    }
    if t.conflicts > 0 {
        out.push_str(&format!(
            "conflicts: {} events reused an idempotency key with other content on another agent: recorded in the \
             shared ledger (meterd_conflicts), not counted\n",
            t.conflicts
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

impl Report {
    pub fn to_csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        for r in &self.rows {
            out.push_str(&csv_row(r));
        }
        out
    }

    /// What `meterd report` exits with: 3 when the ledger does not reconcile, 4 when revenue was lost.
    pub fn exit_code(&self) -> u8 {
        exit_code(&self.totals)
    }

    pub fn to_table(&self) -> String {
        let mut out = table_header();
        for r in &self.rows {
            out.push_str(&table_row(r));
        }
        out.push_str(&totals_text(&self.totals));
        out
    }
}
