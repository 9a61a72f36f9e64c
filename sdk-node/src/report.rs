//! `client.reportStream(...)`: the streamed report (`Admin.ReportStream`) as a native object whose `next()` resolves
//! to the next row, group or trailer (`index.js` wraps it as an async iterator). Only conversion: the stream is the
//! Rust client's `ReportStream`.

use std::collections::HashMap;

use meterd_proto::sdk::{self, ReportItem, ReportQuery};
use meterd_proto::v1;
use napi_derive::napi;

use crate::admin::{NativeReportRow, NativeReportTotals, NativeUsageDrop, counts, drops, ms, row, totals};
use crate::error::to_js;

/// Filters as `index.js` passes them (times in epoch milliseconds).
#[napi(object)]
pub struct NativeReportQuery {
    pub rows: bool,
    pub since_ms: Option<f64>,
    pub until_ms: Option<f64>,
    pub customer: Option<String>,
    pub dimension: Option<String>,
    pub state: Option<String>,
    pub product: Option<String>,
}

pub(crate) fn query(q: NativeReportQuery) -> ReportQuery {
    let time =
        |ms: Option<f64>| ms.map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0.0) as u64));
    ReportQuery {
        rows: q.rows,
        since: time(q.since_ms),
        until: time(q.until_ms),
        customer: q.customer,
        dimension: q.dimension,
        state: q.state,
        product: q.product,
    }
}

#[napi(object)]
pub struct NativeReportGroup {
    pub hour_ms: Option<f64>,
    pub product: String,
    pub dimension: String,
    pub customers: i64,
    pub rows: i64,
    pub recorded: String,
    pub late: String,
    pub open: String,
    pub sealed: i64,
    pub accepted: i64,
    pub rejected: i64,
    pub expired: i64,
    pub pending: i64,
    pub states: HashMap<String, i64>,
}

#[napi(object)]
pub struct NativeReportTrailer {
    pub totals: NativeReportTotals,
    pub selected: NativeReportGroup,
    pub rows_sent: i64,
    pub groups_sent: i64,
    pub consistent: bool,
    pub restarts: u32,
    pub usage_drops: Vec<NativeUsageDrop>,
}

/// Exactly one of the three is set.
#[napi(object)]
pub struct NativeReportItem {
    pub row: Option<NativeReportRow>,
    pub group: Option<NativeReportGroup>,
    pub trailer: Option<NativeReportTrailer>,
}

fn group(g: v1::ReportGroup) -> NativeReportGroup {
    NativeReportGroup {
        hour_ms: ms(g.hour),
        product: g.product,
        dimension: g.dimension,
        customers: g.customers as i64,
        rows: g.rows as i64,
        recorded: g.recorded,
        late: g.late,
        open: g.open,
        sealed: g.sealed as i64,
        accepted: g.accepted as i64,
        rejected: g.rejected as i64,
        expired: g.expired as i64,
        pending: g.pending as i64,
        states: counts(g.states),
    }
}

#[napi]
pub struct NativeReportStream {
    inner: tokio::sync::Mutex<sdk::ReportStream>,
}

impl NativeReportStream {
    pub(crate) fn new(inner: sdk::ReportStream) -> Self {
        Self { inner: tokio::sync::Mutex::new(inner) }
    }
}

#[napi]
impl NativeReportStream {
    /// The next row or group, then the trailer, then null.
    #[napi]
    pub async fn next(&self) -> napi::Result<Option<NativeReportItem>> {
        let item = self.inner.lock().await.next().await.map_err(to_js)?;
        let none = NativeReportItem { row: None, group: None, trailer: None };
        Ok(item.map(|item| match item {
            ReportItem::Row(r) => NativeReportItem { row: Some(row(r)), ..none },
            ReportItem::Group(g) => NativeReportItem { group: Some(group(g)), ..none },
            ReportItem::Trailer(t) => NativeReportItem {
                trailer: Some(NativeReportTrailer {
                    totals: totals(t.totals.unwrap_or_default()),
                    selected: group(t.selected.unwrap_or_default()),
                    rows_sent: t.rows_sent as i64,
                    groups_sent: t.groups_sent as i64,
                    consistent: t.consistent,
                    restarts: t.restarts,
                    usage_drops: drops(t.usage_drops),
                }),
                ..none
            },
        }))
    }
}
