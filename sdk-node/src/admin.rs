//! `status()`, `flush()` and `report()` results: plain objects copied from the `meterd.v1.Admin` replies.
//! Counters are numbers; times are epoch milliseconds (`index.js` turns them into `Date`s).

use std::collections::HashMap;

use meterd_proto::sdk::from_timestamp;
use meterd_proto::{Timestamp, v1};
use napi_derive::napi;

use crate::usage::to_ms;

pub(crate) fn ms(t: Option<Timestamp>) -> Option<f64> {
    t.map(|t| to_ms(from_timestamp(Some(t))))
}

#[napi(object)]
pub struct NativeProductStatus {
    pub name: String,
    pub identity: String,
    pub dimensions: Vec<String>,
}

#[napi(object)]
pub struct NativeAccountStatus {
    pub name: String,
    pub last_successful_call_ms: Option<f64>,
    pub clock_skew_ms: Option<i64>,
    pub calls_ok: i64,
    pub calls_throttled: i64,
    pub calls_failed: i64,
    pub records_accepted: i64,
    pub records_rejected: i64,
    pub records_expired: i64,
}

/// An ended hour far below its own baseline: the product may have stopped calling meterd.
#[napi(object)]
pub struct NativeUsageDrop {
    pub hour_ms: Option<f64>,
    pub product: String,
    pub dimension: String,
    pub customer: String,
    pub observed: String,
    pub baseline: String,
}

pub(crate) fn drops(d: Vec<v1::UsageDrop>) -> Vec<NativeUsageDrop> {
    d.into_iter()
        .map(|d| NativeUsageDrop {
            hour_ms: ms(d.hour),
            product: d.product,
            dimension: d.dimension,
            customer: d.customer,
            observed: d.observed,
            baseline: d.baseline,
        })
        .collect()
}

/// Fleet mode: one agent sharing the ledger in PostgreSQL.
#[napi(object)]
pub struct NativeFleetNode {
    pub node_id: String,
    pub version: String,
    pub last_heartbeat_ms: Option<f64>,
    pub live: bool,
    pub watermark_ms: Option<f64>,
    pub forward_lag_seconds: i64,
    pub events_forwarded: i64,
    pub spool_events: Option<i64>,
}

/// Fleet mode: who submits for an account (the submitter lease holder).
#[napi(object)]
pub struct NativeFleetSubmitter {
    pub account: String,
    pub node_id: String,
    pub epoch: i64,
    pub lease_expires_ms: Option<f64>,
}

#[napi(object)]
pub struct NativeFleetStatus {
    pub node_id: String,
    pub spool_events: i64,
    pub spool_oldest_age_seconds: i64,
    pub ack: String,
    pub database_error: String,
    pub nodes: Vec<NativeFleetNode>,
    pub submitters: Vec<NativeFleetSubmitter>,
    pub conflicts: i64,
}

impl From<v1::FleetStatus> for NativeFleetStatus {
    fn from(f: v1::FleetStatus) -> Self {
        NativeFleetStatus {
            node_id: f.node_id,
            spool_events: f.spool_events as i64,
            spool_oldest_age_seconds: f.spool_oldest_age_seconds,
            ack: f.ack,
            database_error: f.database_error,
            nodes: f
                .nodes
                .into_iter()
                .map(|n| NativeFleetNode {
                    node_id: n.node_id,
                    version: n.version,
                    last_heartbeat_ms: ms(n.last_heartbeat),
                    live: n.live,
                    watermark_ms: ms(n.watermark),
                    forward_lag_seconds: n.forward_lag_seconds,
                    events_forwarded: n.events_forwarded as i64,
                    spool_events: n.spool_events.map(|s| s as i64),
                })
                .collect(),
            submitters: f
                .submitters
                .into_iter()
                .map(|s| NativeFleetSubmitter {
                    account: s.account,
                    node_id: s.node_id,
                    epoch: s.epoch,
                    lease_expires_ms: ms(s.lease_expires),
                })
                .collect(),
            conflicts: f.conflicts as i64,
        }
    }
}

#[napi(object)]
pub struct NativeStatus {
    pub version: String,
    pub started_at_ms: Option<f64>,
    pub now_ms: Option<f64>,
    pub data_dir: String,
    pub schema_version: u32,
    pub events_stored: i64,
    pub open_buckets: i64,
    pub store_size_bytes: i64,
    pub products: Vec<NativeProductStatus>,
    pub pending_records: i64,
    pub oldest_pending_age_seconds: i64,
    pub most_urgent_deadline_ms: Option<f64>,
    pub sealed_through_ms: Option<f64>,
    pub accounts: Vec<NativeAccountStatus>,
    pub late_events: i64,
    pub records_at_risk: i64,
    pub customers_by_status: HashMap<String, i64>,
    pub customers_not_subscribed: i64,
    pub records_lost: i64,
    pub units_lost: i64,
    pub disk_free_bytes: i64,
    pub disk_reserve_bytes: i64,
    pub disk_full: bool,
    pub usage_drops: Vec<NativeUsageDrop>,
    pub pending_in_flight: i64,
    pub pending_units: i64,
    pub units_at_risk: i64,
    pub projected_drain_seconds: i64,
    pub fleet: Option<NativeFleetStatus>,
}

impl From<v1::StatusResponse> for NativeStatus {
    fn from(s: v1::StatusResponse) -> Self {
        NativeStatus {
            version: s.version,
            started_at_ms: ms(s.started_at),
            now_ms: ms(s.now),
            data_dir: s.data_dir,
            schema_version: s.schema_version,
            events_stored: s.events_stored as i64,
            open_buckets: s.open_buckets as i64,
            store_size_bytes: s.store_size_bytes as i64,
            products: s
                .products
                .into_iter()
                .map(|p| NativeProductStatus { name: p.name, identity: p.identity, dimensions: p.dimensions })
                .collect(),
            pending_records: s.pending_records as i64,
            oldest_pending_age_seconds: s.oldest_pending_age_seconds,
            most_urgent_deadline_ms: ms(s.most_urgent_deadline),
            sealed_through_ms: ms(s.sealed_through),
            accounts: s
                .accounts
                .into_iter()
                .map(|a| NativeAccountStatus {
                    name: a.name,
                    last_successful_call_ms: ms(a.last_successful_call),
                    clock_skew_ms: a.clock_skew_ms,
                    calls_ok: a.calls_ok as i64,
                    calls_throttled: a.calls_throttled as i64,
                    calls_failed: a.calls_failed as i64,
                    records_accepted: a.records_accepted as i64,
                    records_rejected: a.records_rejected as i64,
                    records_expired: a.records_expired as i64,
                })
                .collect(),
            late_events: s.late_events as i64,
            records_at_risk: s.records_at_risk as i64,
            customers_by_status: s.customers_by_status.into_iter().map(|(k, v)| (k, v as i64)).collect(),
            customers_not_subscribed: s.customers_not_subscribed as i64,
            records_lost: s.records_lost as i64,
            units_lost: s.units_lost as i64,
            disk_free_bytes: s.disk_free_bytes as i64,
            disk_reserve_bytes: s.disk_reserve_bytes as i64,
            disk_full: s.disk_full,
            usage_drops: drops(s.usage_drops),
            pending_in_flight: s.pending_in_flight as i64,
            pending_units: s.pending_units as i64,
            units_at_risk: s.units_at_risk as i64,
            projected_drain_seconds: s.projected_drain_seconds as i64,
            fleet: s.fleet.map(NativeFleetStatus::from),
        }
    }
}

#[napi(object)]
pub struct NativeFlush {
    pub records_sealed: i64,
    pub hours_carried_only: i64,
    pub sealed_through_ms: Option<f64>,
    pub events_forwarded: i64,
    pub waiting_for: Vec<String>,
}

impl From<v1::FlushResponse> for NativeFlush {
    fn from(f: v1::FlushResponse) -> Self {
        NativeFlush {
            records_sealed: f.records_sealed as i64,
            hours_carried_only: f.hours_carried_only as i64,
            sealed_through_ms: ms(f.sealed_through),
            events_forwarded: f.events_forwarded as i64,
            waiting_for: f.waiting_for,
        }
    }
}

#[napi(object)]
pub struct NativeReportRow {
    pub hour_ms: Option<f64>,
    pub product: String,
    pub customer: String,
    pub dimension: String,
    pub state: String,
    pub recorded: String,
    pub late: String,
    pub carried_in: String,
    pub carried_out: String,
    pub sealed: i64,
    pub accepted: i64,
    pub rejected: i64,
    pub expired: i64,
    pub pending: i64,
    pub reason: String,
    pub metering_record_id: String,
    pub deadline_ms: Option<f64>,
}

#[napi(object)]
pub struct NativeReportTotals {
    pub recorded: String,
    pub late: String,
    pub accepted: String,
    pub rejected: String,
    pub expired: String,
    pub pending: String,
    pub carried: String,
    pub open: String,
    pub rejected_by_reason: HashMap<String, i64>,
    pub expired_by_reason: HashMap<String, i64>,
    pub reconciled: bool,
    pub compacted_records: i64,
    pub lost_records: i64,
    pub lost_units: i64,
    pub merged_units: i64,
    pub conflicts: i64,
}

#[napi(object)]
pub struct NativeReport {
    pub rows: Vec<NativeReportRow>,
    pub totals: NativeReportTotals,
    pub usage_drops: Vec<NativeUsageDrop>,
}

impl From<v1::ReportResponse> for NativeReport {
    fn from(r: v1::ReportResponse) -> Self {
        NativeReport {
            rows: r.rows.into_iter().map(row).collect(),
            totals: totals(r.totals.unwrap_or_default()),
            usage_drops: drops(r.usage_drops),
        }
    }
}

pub(crate) fn counts(m: HashMap<String, u64>) -> HashMap<String, i64> {
    m.into_iter().map(|(k, v)| (k, v as i64)).collect()
}

pub(crate) fn row(row: v1::ReportRow) -> NativeReportRow {
    NativeReportRow {
        hour_ms: ms(row.hour),
        product: row.product,
        customer: row.customer,
        dimension: row.dimension,
        state: row.state,
        recorded: row.recorded,
        late: row.late,
        carried_in: row.carried_in,
        carried_out: row.carried_out,
        sealed: row.sealed as i64,
        accepted: row.accepted as i64,
        rejected: row.rejected as i64,
        expired: row.expired as i64,
        pending: row.pending as i64,
        reason: row.reason,
        metering_record_id: row.metering_record_id,
        deadline_ms: ms(row.deadline),
    }
}

pub(crate) fn totals(t: v1::ReportTotals) -> NativeReportTotals {
    NativeReportTotals {
        recorded: t.recorded,
        late: t.late,
        accepted: t.accepted,
        rejected: t.rejected,
        expired: t.expired,
        pending: t.pending,
        carried: t.carried,
        open: t.open,
        rejected_by_reason: counts(t.rejected_by_reason),
        expired_by_reason: counts(t.expired_by_reason),
        reconciled: t.reconciled,
        compacted_records: t.compacted_records as i64,
        lost_records: t.lost_records as i64,
        lost_units: t.lost_units as i64,
        merged_units: t.merged_units as i64,
        conflicts: t.conflicts as i64,
    }
}
