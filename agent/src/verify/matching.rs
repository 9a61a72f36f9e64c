//! Matching meterd's ledger (the report's rows) with what CloudTrail shows AWS answered.
//!
//! - Every record meterd holds as accepted must appear in CloudTrail as `Success` with its MeteringRecordId
//!   (else **missing**), with the same quantity, dimension, hour and customer (else **mismatch**).
//! - Every `Success` in CloudTrail whose MeteringRecordId meterd does not hold as accepted is a **foreign** call:
//!   AWS billed usage meterd did not send (another system metering the product: double-billing risk) —
//!   unless meterd has that AWS key still in flight (its answer was lost; the resend will confirm it).
//! - Any other answer (CustomerNotSubscribed, DuplicateRecord, unprocessed) for an AWS key meterd never had is
//!   foreign too: another system is calling for this product.

use std::collections::{BTreeMap, HashMap, HashSet};

use meterd_proto::v1;
use serde::Serialize;

use super::trail::{Trail, TrailRecord};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    /// missing | foreign | mismatch
    pub kind: &'static str,
    pub hour: String,
    pub product: String,
    pub customer: String,
    pub dimension: String,
    pub meterd_quantity: Option<u64>,
    pub cloudtrail_quantity: Option<u64>,
    pub metering_record_id: String,
    /// CloudTrail's status for the record (empty for missing ones).
    pub status: String,
    pub event_id: String,
    pub event_time: String,
    /// For mismatches: which member differs (quantity, dimension, hour, customer).
    pub field: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub files: usize,
    pub events: u64,
    pub batch_meter_usage_calls: u64,
    pub meter_usage_calls: u64,
    pub failed_calls: u64,
    pub first_event: String,
    pub last_event: String,
    /// Usage records in CloudTrail (within the window), and how many AWS answered Success.
    pub trail_records: u64,
    pub trail_success: u64,
    /// Records meterd holds as accepted (within the window).
    pub meterd_accepted: u64,
    pub matched: u64,
    /// Success in CloudTrail for an AWS key meterd still has in flight.
    pub confirmed_in_flight: u64,
    pub missing: u64,
    pub foreign: u64,
    pub mismatched: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub reconciled: bool,
    pub summary: Summary,
    pub discrepancies: Vec<Discrepancy>,
}

/// Hours compared: `[from, to)`, either end open.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl Window {
    fn contains(&self, hour_ms: i64) -> bool {
        self.from_ms.is_none_or(|f| hour_ms >= f) && self.to_ms.is_none_or(|t| hour_ms < t)
    }
}

fn ms_of(t: &Option<meterd_proto::Timestamp>) -> i64 {
    t.as_ref().map_or(0, |t| t.seconds * 1000)
}

type Key<'a> = (&'a str, &'a str, i64);

pub fn verify(report: &v1::ReportResponse, trail: &Trail, window: Window) -> Verification {
    let rows: Vec<&v1::ReportRow> = report.rows.iter().filter(|r| window.contains(ms_of(&r.hour))).collect();
    let accepted: HashMap<&str, &v1::ReportRow> = rows
        .iter()
        .filter(|r| r.state == "accepted" && !r.metering_record_id.is_empty())
        .map(|r| (r.metering_record_id.as_str(), *r))
        .collect();
    // Every AWS key meterd sent or will send, by state.
    let mut by_key: HashMap<Key, &str> = HashMap::new();
    for r in &rows {
        if matches!(r.state.as_str(), "sealed" | "in_flight" | "accepted" | "rejected" | "expired") {
            by_key.insert((r.customer.as_str(), r.dimension.as_str(), ms_of(&r.hour)), r.state.as_str());
        }
    }
    let records: Vec<&TrailRecord> =
        trail.records.iter().filter(|r| r.hour_ms.is_none_or(|h| window.contains(h))).collect();

    let mut summary = Summary {
        files: trail.files,
        events: trail.events,
        batch_meter_usage_calls: trail.batch_calls,
        meter_usage_calls: trail.meter_usage_calls,
        failed_calls: trail.failed_calls,
        first_event: trail.first_event.clone().unwrap_or_default(),
        last_event: trail.last_event.clone().unwrap_or_default(),
        trail_records: records.len() as u64,
        trail_success: records.iter().filter(|r| r.status == "Success").count() as u64,
        meterd_accepted: accepted.len() as u64,
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    // One line per foreign record, however often it was resent.
    let mut foreign: BTreeMap<(String, String, String, i64, String), Discrepancy> = BTreeMap::new();
    let mut in_flight_confirmed: HashSet<Key> = HashSet::new();
    for t in &records {
        let hour = t.hour_ms.unwrap_or(i64::MIN);
        let key_state = by_key.get(&(t.customer.as_str(), t.dimension.as_str(), hour)).copied();
        if t.status == "Success" && !t.metering_record_id.is_empty() {
            if let Some(row) = accepted.get(t.metering_record_id.as_str()) {
                if seen.insert(row.metering_record_id.as_str()) {
                    out.extend(compare(row, t));
                }
                continue;
            }
            if matches!(key_state, Some("in_flight" | "sealed")) {
                in_flight_confirmed.insert((t.customer.as_str(), t.dimension.as_str(), hour));
                continue;
            }
            let why = match key_state {
                Some(state) => format!(
                    "AWS billed this key under a MeteringRecordId meterd does not hold; meterd's record is {state}"
                ),
                None => "AWS billed usage meterd never sent: another system meters this product".to_string(),
            };
            add_foreign(&mut foreign, t, why);
        } else if key_state.is_none() {
            add_foreign(&mut foreign, t, format!("a {} call meterd never made (answered {})", t.operation, t.status));
        }
    }
    summary.confirmed_in_flight = in_flight_confirmed.len() as u64;
    let mut missing: Vec<&&v1::ReportRow> =
        accepted.values().filter(|r| !seen.contains(r.metering_record_id.as_str())).collect();
    missing.sort_by_key(|r| (ms_of(&r.hour), r.customer.clone(), r.dimension.clone()));
    for r in missing {
        out.push(Discrepancy {
            kind: "missing",
            hour: crate::clock::rfc3339(ms_of(&r.hour)),
            product: r.product.clone(),
            customer: r.customer.clone(),
            dimension: r.dimension.clone(),
            meterd_quantity: Some(r.accepted),
            cloudtrail_quantity: None,
            metering_record_id: r.metering_record_id.clone(),
            status: String::new(),
            event_id: String::new(),
            event_time: String::new(),
            field: String::new(),
            detail: "meterd holds this record as accepted, but no Success with its MeteringRecordId is in CloudTrail"
                .into(),
        });
    }
    summary.matched = seen.len() as u64;
    summary.mismatched = out.iter().filter(|d| d.kind == "mismatch").count() as u64;
    summary.missing = out.iter().filter(|d| d.kind == "missing").count() as u64;
    summary.foreign = foreign.len() as u64;
    out.extend(foreign.into_values());
    out.sort_by(|a, b| (kind_rank(a.kind), &a.hour, &a.customer).cmp(&(kind_rank(b.kind), &b.hour, &b.customer)));
    Verification { reconciled: out.is_empty(), summary, discrepancies: out }
}

fn kind_rank(kind: &str) -> u8 {
    match kind {
        "missing" => 0,
        "mismatch" => 1,
        _ => 2,
    }
}

fn add_foreign(
    foreign: &mut BTreeMap<(String, String, String, i64, String), Discrepancy>,
    t: &TrailRecord,
    detail: String,
) {
    let hour = t.hour_ms.unwrap_or(i64::MIN);
    let k = (t.metering_record_id.clone(), t.customer.clone(), t.dimension.clone(), hour, t.status.clone());
    foreign.entry(k).or_insert_with(|| Discrepancy {
        kind: "foreign",
        hour: t.hour_ms.map(crate::clock::rfc3339).unwrap_or_else(|| "unreadable".into()),
        product: t.product_code.clone(),
        customer: t.customer.clone(),
        dimension: t.dimension.clone(),
        meterd_quantity: None,
        cloudtrail_quantity: t.quantity,
        metering_record_id: t.metering_record_id.clone(),
        status: t.status.clone(),
        event_id: t.event_id.clone(),
        event_time: t.event_time.clone(),
        field: String::new(),
        detail,
    });
}

/// The same MeteringRecordId: every member meterd sent must be what CloudTrail shows.
fn compare(row: &v1::ReportRow, t: &TrailRecord) -> Vec<Discrepancy> {
    let hour = ms_of(&row.hour);
    let mut out = Vec::new();
    let mut differs = |field: &str, ours: String, theirs: String| {
        out.push(Discrepancy {
            kind: "mismatch",
            hour: crate::clock::rfc3339(hour),
            product: row.product.clone(),
            customer: row.customer.clone(),
            dimension: row.dimension.clone(),
            meterd_quantity: Some(row.accepted),
            cloudtrail_quantity: t.quantity,
            metering_record_id: row.metering_record_id.clone(),
            status: t.status.clone(),
            event_id: t.event_id.clone(),
            event_time: t.event_time.clone(),
            field: field.to_string(),
            detail: format!("{field}: meterd {ours}, CloudTrail {theirs}"),
        });
    };
    if t.quantity != Some(row.accepted) {
        differs("quantity", row.accepted.to_string(), t.quantity.map_or("unreadable".into(), |q| q.to_string()));
    }
    if t.dimension != row.dimension {
        differs("dimension", row.dimension.clone(), t.dimension.clone());
    }
    if t.hour_ms != Some(hour) {
        differs("hour", crate::clock::rfc3339(hour), t.hour_ms.map_or("unreadable".into(), crate::clock::rfc3339));
    }
    // A tenant's record is sent as the identity it is mapped to, which the report does not show.
    if !row.customer.starts_with("tenant:") && t.customer != row.customer {
        differs("customer", row.customer.clone(), t.customer.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 1_796_032_800_000;

    fn row(customer: &str, hour: i64, state: &str, units: u64, id: &str) -> v1::ReportRow {
        v1::ReportRow {
            hour: Some(meterd_proto::Timestamp { seconds: hour / 1000, nanos: 0 }),
            product: "app".into(),
            customer: customer.into(),
            dimension: "api_calls".into(),
            state: state.into(),
            accepted: if state == "accepted" { units } else { 0 },
            metering_record_id: id.into(),
            ..Default::default()
        }
    }

    fn rec(customer: &str, hour: i64, units: u64, id: &str, status: &str) -> TrailRecord {
        TrailRecord {
            event_id: format!("ev-{id}"),
            event_time: "2026-11-29T10:00:00Z".into(),
            operation: "BatchMeterUsage".into(),
            product_code: "prod-code-app".into(),
            customer: customer.into(),
            dimension: "api_calls".into(),
            hour_ms: Some(hour),
            quantity: Some(units),
            status: status.into(),
            metering_record_id: id.into(),
            file: "t.json".into(),
        }
    }

    fn run(rows: Vec<v1::ReportRow>, records: Vec<TrailRecord>) -> Verification {
        let report = v1::ReportResponse { rows, totals: None, usage_drops: Vec::new() };
        verify(&report, &Trail { records, ..Default::default() }, Window::default())
    }

    #[test]
    fn a_clean_ledger_reconciles_resends_included() {
        let v = run(
            vec![
                row("aws:1/a", H, "accepted", 5, "m1"),
                row("aws:1/b", H, "rejected", 0, ""),
                row("aws:1/c", H, "open", 0, ""),
            ],
            vec![
                rec("aws:1/a", H, 5, "m1", "Success"),
                rec("aws:1/a", H, 5, "m1", "Success"),
                rec("aws:1/b", H, 3, "", "CustomerNotSubscribed"),
            ],
        );
        assert!(v.reconciled, "{:?}", v.discrepancies);
        assert_eq!((v.summary.matched, v.summary.meterd_accepted, v.summary.trail_success), (1, 1, 2));
    }

    #[test]
    fn missing_foreign_and_mismatched_records_are_each_found() {
        let v = run(
            vec![
                row("aws:1/a", H, "accepted", 5, "m1"),
                row("aws:1/b", H, "accepted", 7, "m2"),
                row("aws:1/d", H, "rejected", 0, ""),
            ],
            vec![
                rec("aws:1/a", H, 6, "m1", "Success"),
                rec("aws:1/x", H, 2, "m9", "Success"),
                rec("aws:1/x", H, 2, "m9", "Success"),
                rec("aws:1/y", H, 1, "", "DuplicateRecord"),
                rec("aws:1/d", H, 4, "m7", "Success"),
            ],
        );
        let kinds: Vec<(&str, &str, &str)> =
            v.discrepancies.iter().map(|d| (d.kind, d.customer.as_str(), d.field.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                ("missing", "aws:1/b", ""),
                ("mismatch", "aws:1/a", "quantity"),
                ("foreign", "aws:1/d", ""),
                ("foreign", "aws:1/x", ""),
                ("foreign", "aws:1/y", ""),
            ]
        );
        assert!(!v.reconciled);
        assert_eq!((v.summary.missing, v.summary.mismatched, v.summary.foreign), (1, 1, 3));
        assert!(v.discrepancies[2].detail.contains("rejected"), "{}", v.discrepancies[2].detail);
    }

    #[test]
    fn a_success_for_a_record_still_in_flight_is_a_confirmation_not_foreign() {
        let v = run(vec![row("aws:1/a", H, "in_flight", 0, "")], vec![rec("aws:1/a", H, 5, "m1", "Success")]);
        assert!(v.reconciled);
        assert_eq!(v.summary.confirmed_in_flight, 1);
    }

    #[test]
    fn the_window_limits_both_sides() {
        let rows = vec![row("aws:1/a", H, "accepted", 5, "m1"), row("aws:1/b", H + 3_600_000, "accepted", 1, "m2")];
        let records =
            vec![rec("aws:1/b", H + 3_600_000, 1, "m2", "Success"), rec("aws:1/z", H - 3_600_000, 1, "m3", "Success")];
        let report = v1::ReportResponse { rows, totals: None, usage_drops: Vec::new() };
        let trail = Trail { records, ..Default::default() };
        let v = verify(&report, &trail, Window { from_ms: Some(H + 3_600_000), to_ms: None });
        assert!(v.reconciled, "{:?}", v.discrepancies);
        let v = verify(&report, &trail, Window::default());
        assert_eq!((v.summary.missing, v.summary.foreign), (1, 1));
    }
}
