//! `status()`, `flush()` and `report()` results: read-only copies of the `meterd.v1.Admin` replies.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use meterd_proto::sdk::from_timestamp;
use meterd_proto::{Timestamp, v1};
use pyo3::prelude::*;

pub(crate) fn time(t: Option<Timestamp>) -> Option<DateTime<Utc>> {
    t.map(|t| from_timestamp(Some(t)).into())
}

#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct ProductStatus {
    pub name: String,
    pub identity: String,
    pub dimensions: Vec<String>,
}

#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct AccountStatus {
    pub name: String,
    pub last_successful_call: Option<DateTime<Utc>>,
    pub clock_skew_ms: Option<i64>,
    pub calls_ok: u64,
    pub calls_throttled: u64,
    pub calls_failed: u64,
    pub records_accepted: u64,
    pub records_rejected: u64,
    pub records_expired: u64,
}

/// An ended hour far below its own baseline: the product may have stopped calling meterd.
#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct UsageDrop {
    pub hour: Option<DateTime<Utc>>,
    pub product: String,
    pub dimension: String,
    /// Empty for the product x dimension as a whole.
    pub customer: String,
    pub observed: String,
    pub baseline: String,
}

pub(crate) fn drops(d: Vec<v1::UsageDrop>) -> Vec<UsageDrop> {
    d.into_iter()
        .map(|d| UsageDrop {
            hour: time(d.hour),
            product: d.product,
            dimension: d.dimension,
            customer: d.customer,
            observed: d.observed,
            baseline: d.baseline,
        })
        .collect()
}

/// Fleet mode: one agent sharing the ledger in PostgreSQL.
#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct FleetNode {
    pub node_id: String,
    pub version: String,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub live: bool,
    pub watermark: Option<DateTime<Utc>>,
    pub forward_lag_seconds: i64,
    pub events_forwarded: u64,
    /// Known for the answering agent only.
    pub spool_events: Option<u64>,
}

/// Fleet mode: who submits for an account (the submitter lease holder).
#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct FleetSubmitter {
    pub account: String,
    pub node_id: String,
    pub epoch: i64,
    pub lease_expires: Option<DateTime<Utc>>,
}

/// Fleet mode: the answering agent's spool, every node, and the submitters.
#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct FleetStatus {
    pub node_id: String,
    pub spool_events: u64,
    pub spool_oldest_age_seconds: i64,
    pub ack: String,
    pub database_error: String,
    pub nodes: Vec<FleetNode>,
    pub submitters: Vec<FleetSubmitter>,
    pub conflicts: u64,
}

fn fleet(f: v1::FleetStatus) -> FleetStatus {
    FleetStatus {
        node_id: f.node_id,
        spool_events: f.spool_events,
        spool_oldest_age_seconds: f.spool_oldest_age_seconds,
        ack: f.ack,
        database_error: f.database_error,
        nodes: f
            .nodes
            .into_iter()
            .map(|n| FleetNode {
                node_id: n.node_id,
                version: n.version,
                last_heartbeat: time(n.last_heartbeat),
                live: n.live,
                watermark: time(n.watermark),
                forward_lag_seconds: n.forward_lag_seconds,
                events_forwarded: n.events_forwarded,
                spool_events: n.spool_events,
            })
            .collect(),
        submitters: f
            .submitters
            .into_iter()
            .map(|s| FleetSubmitter {
                account: s.account,
                node_id: s.node_id,
                epoch: s.epoch,
                lease_expires: time(s.lease_expires),
            })
            .collect(),
        conflicts: f.conflicts,
    }
}

#[pyclass(frozen, get_all, module = "meterd")]
pub struct AgentStatus {
    pub version: String,
    pub started_at: Option<DateTime<Utc>>,
    pub now: Option<DateTime<Utc>>,
    pub data_dir: String,
    pub schema_version: u32,
    pub events_stored: u64,
    pub open_buckets: u64,
    pub store_size_bytes: u64,
    pub products: Vec<ProductStatus>,
    pub pending_records: u64,
    pub oldest_pending_age_seconds: i64,
    pub most_urgent_deadline: Option<DateTime<Utc>>,
    pub sealed_through: Option<DateTime<Utc>>,
    pub accounts: Vec<AccountStatus>,
    pub late_events: u64,
    pub records_at_risk: u64,
    pub customers_by_status: HashMap<String, u64>,
    pub customers_not_subscribed: u64,
    pub records_lost: u64,
    pub units_lost: u64,
    pub disk_free_bytes: u64,
    pub disk_reserve_bytes: u64,
    pub disk_full: bool,
    pub usage_drops: Vec<UsageDrop>,
    pub pending_in_flight: u64,
    pub pending_units: u64,
    pub units_at_risk: u64,
    pub projected_drain_seconds: u64,
    /// Fleet mode only (None for a standalone agent).
    pub fleet: Option<FleetStatus>,
}

#[pymethods]
impl AgentStatus {
    fn __repr__(&self) -> String {
        format!(
            "AgentStatus(version={:?}, events_stored={}, open_buckets={}, pending_records={})",
            self.version, self.events_stored, self.open_buckets, self.pending_records
        )
    }
}

pub fn status_to_py(py: Python<'_>, s: v1::StatusResponse) -> PyResult<Py<PyAny>> {
    let status = AgentStatus {
        version: s.version,
        started_at: time(s.started_at),
        now: time(s.now),
        data_dir: s.data_dir,
        schema_version: s.schema_version,
        events_stored: s.events_stored,
        open_buckets: s.open_buckets,
        store_size_bytes: s.store_size_bytes,
        products: s
            .products
            .into_iter()
            .map(|p| ProductStatus { name: p.name, identity: p.identity, dimensions: p.dimensions })
            .collect(),
        pending_records: s.pending_records,
        oldest_pending_age_seconds: s.oldest_pending_age_seconds,
        most_urgent_deadline: time(s.most_urgent_deadline),
        sealed_through: time(s.sealed_through),
        accounts: s
            .accounts
            .into_iter()
            .map(|a| AccountStatus {
                name: a.name,
                last_successful_call: time(a.last_successful_call),
                clock_skew_ms: a.clock_skew_ms,
                calls_ok: a.calls_ok,
                calls_throttled: a.calls_throttled,
                calls_failed: a.calls_failed,
                records_accepted: a.records_accepted,
                records_rejected: a.records_rejected,
                records_expired: a.records_expired,
            })
            .collect(),
        late_events: s.late_events,
        records_at_risk: s.records_at_risk,
        customers_by_status: s.customers_by_status,
        customers_not_subscribed: s.customers_not_subscribed,
        records_lost: s.records_lost,
        units_lost: s.units_lost,
        disk_free_bytes: s.disk_free_bytes,
        disk_reserve_bytes: s.disk_reserve_bytes,
        disk_full: s.disk_full,
        usage_drops: drops(s.usage_drops),
        pending_in_flight: s.pending_in_flight,
        pending_units: s.pending_units,
        units_at_risk: s.units_at_risk,
        projected_drain_seconds: s.projected_drain_seconds,
        fleet: s.fleet.map(fleet),
    };
    Ok(Py::new(py, status)?.into_any())
}

#[pyclass(frozen, get_all, module = "meterd")]
pub struct FlushResult {
    pub records_sealed: u64,
    pub hours_carried_only: u64,
    pub sealed_through: Option<DateTime<Utc>>,
    /// Fleet mode: events forwarded from the agent's spool, and live nodes the seal still waits for.
    pub events_forwarded: u64,
    pub waiting_for: Vec<String>,
}

#[pymethods]
impl FlushResult {
    fn __repr__(&self) -> String {
        format!("FlushResult(records_sealed={}, hours_carried_only={})", self.records_sealed, self.hours_carried_only)
    }
}

pub fn flush_to_py(py: Python<'_>, f: v1::FlushResponse) -> PyResult<Py<PyAny>> {
    let r = FlushResult {
        records_sealed: f.records_sealed,
        hours_carried_only: f.hours_carried_only,
        sealed_through: time(f.sealed_through),
        events_forwarded: f.events_forwarded,
        waiting_for: f.waiting_for,
    };
    Ok(Py::new(py, r)?.into_any())
}

/// One hour x customer x dimension. Decimal amounts are exact decimal strings; whole units are ints.
#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct ReportRow {
    pub hour: Option<DateTime<Utc>>,
    pub product: String,
    pub customer: String,
    pub dimension: String,
    pub state: String,
    pub recorded: String,
    pub late: String,
    pub carried_in: String,
    pub carried_out: String,
    pub sealed: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub expired: u64,
    pub pending: u64,
    pub reason: String,
    pub metering_record_id: String,
    pub deadline: Option<DateTime<Utc>>,
}

#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct ReportTotals {
    pub recorded: String,
    pub late: String,
    pub accepted: String,
    pub rejected: String,
    pub expired: String,
    pub pending: String,
    pub carried: String,
    pub open: String,
    pub rejected_by_reason: HashMap<String, u64>,
    pub expired_by_reason: HashMap<String, u64>,
    pub reconciled: bool,
    pub compacted_records: u64,
    pub lost_records: u64,
    pub lost_units: u64,
    pub merged_units: u64,
    pub conflicts: u64,
}

#[pyclass(frozen, get_all, module = "meterd")]
pub struct Report {
    pub rows: Vec<ReportRow>,
    pub totals: ReportTotals,
    pub usage_drops: Vec<UsageDrop>,
}

#[pymethods]
impl Report {
    fn __repr__(&self) -> String {
        format!(
            "Report(rows={}, recorded={:?}, accepted={:?}, reconciled={})",
            self.rows.len(),
            self.totals.recorded,
            self.totals.accepted,
            if self.totals.reconciled { "True" } else { "False" }
        )
    }
}

pub fn report_to_py(py: Python<'_>, r: v1::ReportResponse) -> PyResult<Py<PyAny>> {
    let report = Report {
        rows: r.rows.into_iter().map(row).collect(),
        totals: totals(r.totals.unwrap_or_default()),
        usage_drops: drops(r.usage_drops),
    };
    Ok(Py::new(py, report)?.into_any())
}

pub(crate) fn row(row: v1::ReportRow) -> ReportRow {
    ReportRow {
        hour: time(row.hour),
        product: row.product,
        customer: row.customer,
        dimension: row.dimension,
        state: row.state,
        recorded: row.recorded,
        late: row.late,
        carried_in: row.carried_in,
        carried_out: row.carried_out,
        sealed: row.sealed,
        accepted: row.accepted,
        rejected: row.rejected,
        expired: row.expired,
        pending: row.pending,
        reason: row.reason,
        metering_record_id: row.metering_record_id,
        deadline: time(row.deadline),
    }
}

pub(crate) fn totals(t: v1::ReportTotals) -> ReportTotals {
    ReportTotals {
        recorded: t.recorded,
        late: t.late,
        accepted: t.accepted,
        rejected: t.rejected,
        expired: t.expired,
        pending: t.pending,
        carried: t.carried,
        open: t.open,
        rejected_by_reason: t.rejected_by_reason,
        expired_by_reason: t.expired_by_reason,
        reconciled: t.reconciled,
        compacted_records: t.compacted_records,
        lost_records: t.lost_records,
        lost_units: t.lost_units,
        merged_units: t.merged_units,
        conflicts: t.conflicts,
    }
}
