//! The dashboard on the admin listener: `GET /` (a page and its assets, embedded in the binary) and
//! `GET /api/dashboard`, the one JSON document the page polls. The JSON is built from `Admin.Status`
//! ([`Source::status`]) and the reconciliation report read in pages ([`crate::report_stream::RowReader`]) — the
//! same code `meterd status` and `meterd report` use — regrouped for charts and panels as the rows go by (memory:
//! the chart's hours and the at-risk rows shown, never the ledger), never recomputed.

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
    let now = s.clock.now_ms();
    // In fleet mode the shared ledger's pages, as `meterd report` reads them.
    let pages = s.pipeline.report_pages(&s.store);
    let (panels, totals) = match read_panels(pages.as_ref(), now).await {
        Ok(p) => p,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("report: {e}\n")).into_response(),
    };
    let body = panels.render(&super::status::to_json(&status), &totals);
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The panels from the report read in pages ([`crate::report_stream::RowReader`]): memory bounded by the chart's
/// hours and the at-risk rows shown, never by the ledger. Read again when a seal moved usage between two pages
/// (as the summary does), so the panels and the totals agree.
async fn read_panels(
    ledger: &dyn crate::store::pages::PageSource,
    now_ms: UnixMillis,
) -> Result<(Panels, crate::report::Totals), crate::store::StoreError> {
    for _ in 0..crate::report_stream::MAX_ATTEMPTS {
        let mut reader = crate::report_stream::RowReader::new(ledger, crate::report_stream::PAGE_SIZE);
        let mut panels = Panels::new(now_ms);
        while let Some(rows) = reader.next_rows().await? {
            if !reader.consistent() {
                break;
            }
            for r in &rows {
                panels.add(&r.row);
            }
        }
        if reader.consistent() {
            return Ok((panels, reader.finish()?));
        }
    }
    Err(crate::store::StoreError::Io("the ledger kept changing structure while the dashboard read it".into()))
}

/// The dashboard document from a status (as `meterd status --json` prints it) and a report.
pub fn document(status: &serde_json::Value, report: &Report, now_ms: UnixMillis) -> serde_json::Value {
    let mut panels = Panels::new(now_ms);
    for r in &report.rows {
        panels.add(r);
    }
    panels.render(status, &report.totals)
}

/// What the panels need, accumulated row by row.
struct Panels {
    now_ms: UnixMillis,
    /// Recorded usage per hour per product × dimension over the last [`CHART_DAYS`].
    usage: BTreeMap<UnixMillis, BTreeMap<(String, String), f64>>,
    /// Records by state; `pending` is sealed + in flight.
    records: BTreeMap<String, u64>,
    /// The most urgent at-risk rows (at most twice [`AT_RISK_ROWS`] between trims) and how many there are.
    at_risk: Vec<(i64, serde_json::Value)>,
    at_risk_total: usize,
}

impl Panels {
    fn new(now_ms: UnixMillis) -> Self {
        Panels { now_ms, usage: BTreeMap::new(), records: BTreeMap::new(), at_risk: Vec::new(), at_risk_total: 0 }
    }

    fn add(&mut self, r: &Row) {
        if r.hour >= hour_start(self.now_ms) - CHART_DAYS * 24 * HOUR_MS {
            // Display only: the exact decimal stays in the report; a chart needs a float.
            let v: f64 = r.recorded.parse().unwrap_or(0.0);
            *self.usage.entry(r.hour).or_default().entry((r.product.clone(), r.dimension.clone())).or_default() += v;
        }
        let state = match r.state.as_str() {
            "sealed" | "in_flight" => "pending",
            s => s,
        };
        *self.records.entry(state.to_string()).or_default() += 1;
        self.add_at_risk(r);
    }

    /// Revenue at risk: usage held for unmapped tenants (sealed or still open), pending records close to their
    /// deadline, and rejected records — with the report's reason and the deadline. Most urgent first.
    fn add_at_risk(&mut self, r: &Row) {
        let kind = if r.reason == AT_RISK {
            "held"
        } else if r.pending > 0 && r.deadline.is_some_and(|d| d - self.now_ms < DEADLINE_SOON_MS) {
            "deadline"
        } else if r.rejected > 0 {
            "rejected"
        } else {
            return;
        };
        let units = match kind {
            "rejected" => r.rejected.to_string(),
            _ if r.state == "open" => r.recorded.clone(),
            _ => r.pending.to_string(),
        };
        // Open held usage has no deadline yet: it gets one when its hour seals (an hour plus the window).
        let order = if kind == "rejected" { i64::MAX } else { r.deadline.unwrap_or(i64::MAX - 1) };
        self.at_risk_total += 1;
        self.at_risk.push((
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
        if self.at_risk.len() >= 2 * AT_RISK_ROWS {
            self.trim();
        }
    }

    /// Keeps the most urgent rows (a stable sort: among equals, the first seen).
    fn trim(&mut self) {
        self.at_risk.sort_by_key(|(o, _)| *o);
        self.at_risk.truncate(AT_RISK_ROWS);
    }

    fn render(mut self, status: &serde_json::Value, totals: &crate::report::Totals) -> serde_json::Value {
        self.trim();
        let hours: Vec<UnixMillis> = self.usage.keys().copied().collect();
        let mut series: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for (i, per_series) in self.usage.values().enumerate() {
            for (k, v) in per_series {
                series.entry(k.clone()).or_insert_with(|| vec![0.0; hours.len()])[i] += v;
            }
        }
        let count = |s: &str| self.records.get(s).copied().unwrap_or(0);
        let t = totals;
        json!({
            "generated_at": rfc3339(self.now_ms),
            "status": status,
            "usage": {
                "hours": hours.iter().map(|h| h / 1000).collect::<Vec<_>>(),
                "series": series.into_iter().map(|((p, d), values)| json!({"product": p, "dimension": d, "values": values})).collect::<Vec<_>>(),
            },
            "states": {
                "records": {
                    "accepted": count("accepted"),
                    "pending": count("pending"),
                    "rejected": count("rejected"),
                    "expired": count("expired"),
                    "lost": t.lost_records,
                    "open": count("open"),
                },
                "units": {
                    "accepted": t.accepted, "pending": t.pending, "rejected": t.rejected, "expired": t.expired,
                    "lost": t.lost_units.to_string(), "open": t.open, "carried": t.carried,
                },
            },
            "totals": t,
            "at_risk": {
                "total": self.at_risk_total,
                "rows": self.at_risk.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            },
            // Fleet mode: every node sharing the ledger (empty for a standalone agent: the page says so).
            "nodes": status["fleet"]["nodes"].as_array().map(|nodes| nodes.iter().map(|n| json!({
                "name": n["node_id"],
                "live": n["live"],
                "forward_lag_seconds": n["forward_lag_seconds"],
            })).collect::<Vec<_>>()).unwrap_or_default(),
        })
    }
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

    #[test]
    fn at_risk_keeps_the_most_urgent_rows_however_many_there_are() {
        let now = 1_794_268_800_000;
        // 1,000 rows close to their deadline, least urgent first: the panel must still show the 200 most urgent.
        let rows: Vec<Row> = (0..1000)
            .map(|i| {
                let mut r = row(now - 20 * HOUR_MS, "p", "d", "sealed", "1");
                r.customer = format!("aws:1/l-{i:04}");
                (r.pending, r.deadline) = (1, Some(now + HOUR_MS - i * 1000));
                r
            })
            .collect();
        let doc = document(&json!({}), &Report { rows, totals: Totals::default() }, now);
        assert_eq!(doc["at_risk"]["total"], 1000);
        let shown = doc["at_risk"]["rows"].as_array().unwrap();
        assert_eq!(shown.len(), AT_RISK_ROWS);
        assert_eq!(shown[0]["customer"], "aws:1/l-0999", "the most urgent first");
        assert_eq!(shown[AT_RISK_ROWS - 1]["customer"], "aws:1/l-0800");
    }
}
