//! The one place domain values and errors become wire values and gRPC statuses.

use meterd_proto::{Timestamp, v1};
use tonic::Status;

use crate::clock::UnixMillis;
use crate::domain::event::Receipt;
use crate::domain::ingest::RefusalKind;
use crate::domain::validate::{RawCustomer, RawEvent, RawTimestamp};
use crate::store::StoreError;

pub fn timestamp(ms: UnixMillis) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A receipt on the wire, taking its strings (the batch path moves every receipt it answers with).
pub fn receipt_into_wire(r: Receipt) -> v1::Receipt {
    v1::Receipt {
        event_time: Some(timestamp(r.event_time_ms)),
        usage_hour: Some(timestamp(r.hour_ms)),
        recorded_at: Some(timestamp(r.recorded_at_ms)),
        idempotency_key: r.idempotency_key,
        replayed: r.replayed,
        product: r.product,
    }
}

/// Store failures are the agent's problem, never the caller's: UNAVAILABLE tells SDKs to retry with the same
/// idempotency key, which is safe because nothing was acknowledged.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Corrupt(_) | StoreError::UnsupportedSchema { .. } | StoreError::Missing(_) => {
            Status::internal(e.to_string())
        }
        StoreError::Io(_) | StoreError::Closed | StoreError::Poisoned(_) => Status::unavailable(e.to_string()),
        // Not retried by the SDKs: the operator has to make room; sealing and submission go on meanwhile.
        StoreError::DiskFull(_) => Status::resource_exhausted(e.to_string()),
        StoreError::Overflow(_) => Status::out_of_range(e.to_string()),
    }
}

/// The wire event as the domain's unchecked input, moving its strings; every rule is applied by
/// [`crate::domain::validate::validate`]. A `customer` without an identity is the same as no customer.
/// (A function, not `From`: both types live in other crates.)
pub fn raw_event(ev: v1::UsageEvent) -> RawEvent {
    use v1::customer::Identity as Wire;
    RawEvent {
        idempotency_key: ev.idempotency_key,
        product: ev.product,
        customer: ev.customer.and_then(|c| c.identity).map(|w| match w {
            Wire::TenantId(t) => RawCustomer::TenantId(t),
            Wire::AwsAccount(a) => RawCustomer::AwsAccount {
                customer_aws_account_id: a.customer_aws_account_id,
                license_arn: a.license_arn,
            },
            Wire::Legacy(l) => {
                RawCustomer::Legacy { customer_identifier: l.customer_identifier, product_code: l.product_code }
            }
        }),
        dimension: ev.dimension,
        quantity: ev.quantity,
        timestamp: ev.timestamp.map(|t| RawTimestamp { seconds: t.seconds, nanos: t.nanos }),
        tags: ev.tags,
    }
}

/// The gRPC status code of a refused event's class.
pub fn refusal_code(kind: RefusalKind) -> tonic::Code {
    use tonic::Code;
    match kind {
        RefusalKind::Invalid => Code::InvalidArgument,
        RefusalKind::Conflict => Code::AlreadyExists,
        RefusalKind::Overflow => Code::OutOfRange,
        RefusalKind::Late | RefusalKind::NotActive => Code::FailedPrecondition,
    }
}

pub fn report_to_wire(r: &crate::report::Report) -> v1::ReportResponse {
    v1::ReportResponse {
        rows: r.rows.iter().map(row_to_wire).collect(),
        totals: Some(totals_to_wire(&r.totals)),
        // Filled in by Admin.Report: drops are not part of the ledger.
        usage_drops: Vec::new(),
    }
}

pub fn row_to_wire(row: &crate::report::Row) -> v1::ReportRow {
    v1::ReportRow {
        hour: Some(timestamp(row.hour)),
        product: row.product.clone(),
        customer: row.customer.clone(),
        dimension: row.dimension.clone(),
        state: row.state.clone(),
        recorded: row.recorded.clone(),
        late: row.late.clone(),
        carried_in: row.carried_in.clone(),
        carried_out: row.carried_out.clone(),
        sealed: row.sealed,
        accepted: row.accepted,
        rejected: row.rejected,
        expired: row.expired,
        pending: row.pending,
        reason: row.reason.clone(),
        metering_record_id: row.metering_record_id.clone(),
        deadline: row.deadline.map(timestamp),
    }
}

pub fn totals_to_wire(t: &crate::report::Totals) -> v1::ReportTotals {
    v1::ReportTotals {
        recorded: t.recorded.clone(),
        late: t.late.clone(),
        accepted: t.accepted.clone(),
        rejected: t.rejected.clone(),
        expired: t.expired.clone(),
        pending: t.pending.clone(),
        carried: t.carried.clone(),
        open: t.open.clone(),
        rejected_by_reason: t.rejected_by_reason.clone().into_iter().collect(),
        expired_by_reason: t.expired_by_reason.clone().into_iter().collect(),
        reconciled: t.reconciled,
        compacted_records: t.compacted_records,
        lost_records: t.lost_records,
        lost_units: t.lost_units,
        merged_units: t.merged_units,
        conflicts: t.conflicts,
    }
}

pub fn drop_to_wire(d: &crate::domain::silence::UsageDrop) -> v1::UsageDrop {
    v1::UsageDrop {
        hour: Some(timestamp(d.hour_ms)),
        product: d.product.clone(),
        dimension: d.dimension.clone(),
        customer: d.customer.clone().unwrap_or_default(),
        observed: d.observed.to_string(),
        baseline: d.baseline.to_string(),
    }
}

/// One drop as the CLI and the dashboard show it (JSON; quantities stay exact decimal strings).
pub fn drop_json(d: &v1::UsageDrop) -> serde_json::Value {
    let hour = d.hour.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000)).unwrap_or_default();
    serde_json::json!({
        "hour": hour,
        "product": d.product,
        "dimension": d.dimension,
        "customer": (!d.customer.is_empty()).then_some(&d.customer),
        "observed": d.observed,
        "baseline": d.baseline,
    })
}

/// One line per drop for `meterd status` and `meterd report`.
pub fn drop_line(d: &v1::UsageDrop) -> String {
    let hour = d.hour.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000)).unwrap_or_default();
    let who = if d.customer.is_empty() { String::new() } else { format!(" customer {}", d.customer) };
    format!(
        "{hour} {}/{}{who}: {} recorded, baseline {} (same hour on previous days and weekdays)",
        d.product, d.dimension, d.observed, d.baseline
    )
}

/// The CLI renders reports it receives over gRPC with the same code the agent uses.
pub fn report_from_wire(r: &v1::ReportResponse) -> crate::report::Report {
    crate::report::Report {
        rows: r.rows.iter().map(row_from_wire).collect(),
        totals: totals_from_wire(r.totals.clone().unwrap_or_default()),
    }
}

fn ms(t: &Option<Timestamp>) -> Option<UnixMillis> {
    t.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

pub fn row_from_wire(row: &v1::ReportRow) -> crate::report::Row {
    crate::report::Row {
        hour: ms(&row.hour).unwrap_or_default(),
        product: row.product.clone(),
        customer: row.customer.clone(),
        dimension: row.dimension.clone(),
        state: row.state.clone(),
        recorded: row.recorded.clone(),
        late: row.late.clone(),
        carried_in: row.carried_in.clone(),
        carried_out: row.carried_out.clone(),
        sealed: row.sealed,
        accepted: row.accepted,
        rejected: row.rejected,
        expired: row.expired,
        pending: row.pending,
        reason: row.reason.clone(),
        metering_record_id: row.metering_record_id.clone(),
        deadline: ms(&row.deadline),
    }
}

pub fn totals_from_wire(t: v1::ReportTotals) -> crate::report::Totals {
    crate::report::Totals {
        recorded: t.recorded,
        late: t.late,
        accepted: t.accepted,
        rejected: t.rejected,
        expired: t.expired,
        pending: t.pending,
        carried: t.carried,
        open: t.open,
        rejected_by_reason: t.rejected_by_reason.into_iter().collect(),
        expired_by_reason: t.expired_by_reason.into_iter().collect(),
        reconciled: t.reconciled,
        compacted_records: t.compacted_records,
        lost_records: t.lost_records,
        lost_units: t.lost_units,
        merged_units: t.merged_units,
        conflicts: t.conflicts,
    }
}
