//! The dashboard on the admin listener: `GET /` (a page and its assets, embedded in the binary) and
//! `GET /api/dashboard`, the one JSON document the page polls. The JSON is built from `Admin.Status`
//! ([`Source::status`]) and the reconciliation report ([`crate::report::build`]) — the same code `meterd status`
//! and `meterd report` use — regrouped for charts and panels, never recomputed.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::status::Source;
use crate::clock::{HOUR_MS, UnixMillis, hour_start, rfc3339};
use crate::report::{AT_RISK, Report, Row};

/// Hours of usage the chart shows (the report may hold more, up to `storage.retention`).
pub const CHART_DAYS: i64 = 7;
/// Pending records whose deadline is closer than this are "close to the deadline".
const DEADLINE_SOON_MS: i64 = 2 * HOUR_MS;
/// At most this many rows in the at-risk panel (the most urgent first); the total is given beside it.
const AT_RISK_ROWS: usize = 200;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard/dashboard.css");
const UPLOT_JS: &str = include_str!("../../assets/dashboard/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/dashboard/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../../assets/dashboard/vendor/uplot/LICENSE");

/// The page and its assets: no data in them, so they are served without the token (the page sends it with
/// its data requests).
pub fn assets() -> Router {
    let asset = |body: &'static str, kind: &'static str| {
        get(move || async move {
            ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
        })
    };
    Router::new()
        .route("/", asset(INDEX_HTML, "text/html; charset=utf-8"))
        .route("/assets/dashboard.js", asset(DASHBOARD_JS, "text/javascript; charset=utf-8"))
        .route("/assets/dashboard.css", asset(DASHBOARD_CSS, "text/css; charset=utf-8"))
        .route("/assets/uPlot.iife.min.js", asset(UPLOT_JS, "text/javascript; charset=utf-8"))
        .route("/assets/uPlot.min.css", asset(UPLOT_CSS, "text/css; charset=utf-8"))
        .route("/assets/uPlot.LICENSE.txt", asset(UPLOT_LICENSE, "text/plain; charset=utf-8"))
}

/// `GET /api/dashboard` (behind the admin token when the listener is not loopback).
pub fn api(source: Source) -> Router {
    Router::new().route("/api/dashboard", get(dashboard)).with_state(source)
}

async fn dashboard(State(s): State<Source>) -> Response {
    let status = match s.status().await {
        Ok(st) => st,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("status: {}\n", e.message())).into_response(),
    };
    // One snapshot of the ledger; the rows are built from it off the async workers.
    let snapshot = match s.store.snapshot().await {
        Ok(snap) => snap,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("report: {e}\n")).into_response(),
    };
    let report = match tokio::task::spawn_blocking(move || crate::report::from_snapshot(&snapshot)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (StatusCode::SERVICE_UNAVAILABLE, format!("report: {e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let body = document(&super::status::to_json(&status), &report, s.clock.now_ms());
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The dashboard document from a status (as `meterd status --json` prints it) and a report.
pub fn document(status: &serde_json::Value, report: &Report, now_ms: UnixMillis) -> serde_json::Value {
    json!({
        "generated_at": rfc3339(now_ms),
        "status": status,
        "usage": usage(report, now_ms),
        "states": states(report),
        "totals": report.totals,
        "at_risk": at_risk(report, now_ms),
        // Fleet mode does not exist yet; the page shows this agent as the only node.
        "nodes": [],
    })
}

/// Recorded usage per hour per product × dimension over the last [`CHART_DAYS`]: the hours are exactly the
/// report's hours in that window, so the chart and `meterd report` agree hour for hour.
fn usage(report: &Report, now_ms: UnixMillis) -> serde_json::Value {
    let from = hour_start(now_ms) - CHART_DAYS * 24 * HOUR_MS;
    let rows: Vec<&Row> = report.rows.iter().filter(|r| r.hour >= from).collect();
    let hours: Vec<UnixMillis> = {
        let mut h: Vec<_> = rows.iter().map(|r| r.hour).collect();
        h.sort_unstable();
        h.dedup();
        h
    };
    let index: BTreeMap<UnixMillis, usize> = hours.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    let mut series: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for r in &rows {
        // Display only: the exact decimal stays in the report; a chart needs a float.
        let v: f64 = r.recorded.parse().unwrap_or(0.0);
        series.entry((&r.product, &r.dimension)).or_insert_with(|| vec![0.0; hours.len()])[index[&r.hour]] += v;
    }
    json!({
        "hours": hours.iter().map(|h| h / 1000).collect::<Vec<_>>(),
        "series": series.into_iter().map(|((p, d), values)| json!({"product": p, "dimension": d, "values": values})).collect::<Vec<_>>(),
    })
}

/// Records and whole units by state; `pending` is sealed + in flight; `lost` is a part of `rejected`.
fn states(report: &Report) -> serde_json::Value {
    let mut records: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &report.rows {
        let state = match r.state.as_str() {
            "sealed" | "in_flight" => "pending",
            s => s,
        };
        *records.entry(state).or_default() += 1;
    }
    let t = &report.totals;
    json!({
        "records": {
            "accepted": records.get("accepted").copied().unwrap_or(0),
            "pending": records.get("pending").copied().unwrap_or(0),
            "rejected": records.get("rejected").copied().unwrap_or(0),
            "expired": records.get("expired").copied().unwrap_or(0),
            "lost": t.lost_records,
            "open": records.get("open").copied().unwrap_or(0),
        },
        "units": {
            "accepted": t.accepted, "pending": t.pending, "rejected": t.rejected, "expired": t.expired,
            "lost": t.lost_units.to_string(), "open": t.open, "carried": t.carried,
        },
    })
}

/// Revenue at risk: usage held for unmapped tenants (sealed or still open), pending records close to their
/// deadline, and rejected records — with the report's reason and the deadline. Most urgent first.
fn at_risk(report: &Report, now_ms: UnixMillis) -> serde_json::Value {
    let mut items: Vec<(i64, serde_json::Value)> = Vec::new();
    for r in &report.rows {
        let kind = if r.reason == AT_RISK {
            "held"
        } else if r.pending > 0 && r.deadline.is_some_and(|d| d - now_ms < DEADLINE_SOON_MS) {
            "deadline"
        } else if r.rejected > 0 {
            "rejected"
        } else {
            continue;
        };
        let units = match kind {
            "rejected" => r.rejected.to_string(),
            _ if r.state == "open" => r.recorded.clone(),
            _ => r.pending.to_string(),
        };
        // Open held usage has no deadline yet: it gets one when its hour seals (an hour plus the window).
        let order = if kind == "rejected" { i64::MAX } else { r.deadline.unwrap_or(i64::MAX - 1) };
        items.push((
            order,
            json!({
                "kind": kind,
                "hour": rfc3339(r.hour),
                "product": r.product,
                "customer": r.customer,
                "dimension": r.dimension,
                "state": r.state,
                "units": units,
                "reason": if r.reason.is_empty() { "deadline close".to_string() } else { r.reason.clone() },
                "deadline": r.deadline.map(rfc3339),
            }),
        ));
    }
    items.sort_by_key(|(o, _)| *o);
    let total = items.len();
    json!({
        "total": total,
        "rows": items.into_iter().take(AT_RISK_ROWS).map(|(_, v)| v).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Totals;

    fn row(hour: i64, product: &str, dimension: &str, state: &str, recorded: &str) -> Row {
        Row {
            hour,
            product: product.into(),
            customer: "aws:1/l".into(),
            dimension: dimension.into(),
            state: state.into(),
            recorded: recorded.into(),
            late: "0".into(),
            carried_in: "0".into(),
            carried_out: "0".into(),
            sealed: 0,
            accepted: 0,
            rejected: 0,
            expired: 0,
            pending: 0,
            reason: String::new(),
            metering_record_id: String::new(),
            deadline: None,
        }
    }

    #[test]
    fn the_chart_has_the_report_hours_of_the_window_summed_per_product_and_dimension() {
        let now = 1_794_268_800_000 + 30 * 24 * HOUR_MS;
        let h = hour_start(now);
        let mut held = row(h, "p", "d", "open", "2");
        held.customer = "tenant:t1".into();
        held.reason = AT_RISK.into();
        let report = Report {
            rows: vec![
                row(h - 8 * 24 * HOUR_MS, "p", "d", "accepted", "100"),
                row(h - 2 * HOUR_MS, "p", "d", "accepted", "1.5"),
                row(h - 2 * HOUR_MS, "p", "e", "accepted", "3"),
                row(h, "p", "d", "open", "0.25"),
                held,
            ],
            totals: Totals::default(),
        };
        let doc = document(&json!({}), &report, now);
        assert_eq!(doc["usage"]["hours"], json!([(h - 2 * HOUR_MS) / 1000, h / 1000]));
        assert_eq!(doc["usage"]["series"][0], json!({"product": "p", "dimension": "d", "values": [1.5, 2.25]}));
        assert_eq!(doc["usage"]["series"][1], json!({"product": "p", "dimension": "e", "values": [3.0, 0.0]}));
        assert_eq!(doc["at_risk"]["total"], 1);
        assert_eq!(doc["at_risk"]["rows"][0]["customer"], "tenant:t1");
        assert_eq!(doc["at_risk"]["rows"][0]["kind"], "held");
        assert_eq!(doc["states"]["records"]["accepted"], 3);
    }

    #[test]
    fn at_risk_lists_deadlines_close_and_rejections_most_urgent_first() {
        let now = 1_794_268_800_000;
        let mut soon = row(now - 20 * HOUR_MS, "p", "d", "sealed", "5");
        (soon.pending, soon.deadline) = (5, Some(now + HOUR_MS));
        let mut later = row(now - 2 * HOUR_MS, "p", "d", "sealed", "5");
        (later.pending, later.deadline) = (5, Some(now + 20 * HOUR_MS));
        let mut rejected = row(now - 3 * HOUR_MS, "p", "d", "rejected", "4");
        (rejected.rejected, rejected.reason) = (4, "CustomerNotSubscribed".into());
        let report = Report { rows: vec![rejected, later, soon], totals: Totals::default() };
        let doc = document(&json!({}), &report, now);
        let kinds: Vec<_> = doc["at_risk"]["rows"].as_array().unwrap().iter().map(|r| r["kind"].clone()).collect();
        assert_eq!(kinds, vec![json!("deadline"), json!("rejected")]);
        assert_eq!(doc["at_risk"]["rows"][1]["reason"], "CustomerNotSubscribed");
        assert_eq!(doc["states"]["records"]["pending"], 2);
    }
}
