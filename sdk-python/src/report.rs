//! `client.report_stream(...)`: the streamed report (`Admin.ReportStream`) as a Python iterator of `ReportGroup`s
//! (the default summary) or `ReportRow`s (`rows=True`); the totals arrive last, as `stream.trailer`. Only
//! conversion: the stream itself is the Rust client's `ReportStream`. `AsyncClient.report_stream` gives the same
//! stream for `async for`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use meterd_proto::sdk::{self, ReportItem};
use meterd_proto::v1;
use pyo3::prelude::*;

use crate::admin::{ReportTotals, UsageDrop, drops, row, time, totals};
use crate::{error, runtime};

/// The summary of one hour x product x dimension (or, as `ReportTrailer.selected`, of everything streamed).
/// Decimal amounts are exact decimal strings; whole units are ints.
#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct ReportGroup {
    pub hour: Option<DateTime<Utc>>,
    pub product: String,
    pub dimension: String,
    pub customers: u64,
    pub rows: u64,
    pub recorded: String,
    pub late: String,
    pub open: String,
    pub sealed: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub expired: u64,
    pub pending: u64,
    pub states: HashMap<String, u64>,
}

#[pymethods]
impl ReportGroup {
    fn __repr__(&self) -> String {
        format!(
            "ReportGroup(hour={:?}, product={:?}, dimension={:?}, customers={}, recorded={:?})",
            self.hour.map(|h| h.to_rfc3339()).unwrap_or_default(),
            self.product,
            self.dimension,
            self.customers,
            self.recorded
        )
    }
}

/// The last item of a report stream: the whole ledger's totals, the sum of what was streamed (`selected`), and
/// whether the rows were read without a seal moving usage meanwhile (`consistent`; read again when False).
#[pyclass(frozen, get_all, module = "meterd")]
pub struct ReportTrailer {
    pub totals: ReportTotals,
    pub selected: ReportGroup,
    pub rows_sent: u64,
    pub groups_sent: u64,
    pub consistent: bool,
    pub restarts: u32,
    pub usage_drops: Vec<UsageDrop>,
}

fn group(g: v1::ReportGroup) -> ReportGroup {
    ReportGroup {
        hour: time(g.hour),
        product: g.product,
        dimension: g.dimension,
        customers: g.customers,
        rows: g.rows,
        recorded: g.recorded,
        late: g.late,
        open: g.open,
        sealed: g.sealed,
        accepted: g.accepted,
        rejected: g.rejected,
        expired: g.expired,
        pending: g.pending,
        states: g.states,
    }
}

fn trailer(t: v1::ReportTrailer) -> ReportTrailer {
    ReportTrailer {
        totals: totals(t.totals.unwrap_or_default()),
        selected: group(t.selected.unwrap_or_default()),
        rows_sent: t.rows_sent,
        groups_sent: t.groups_sent,
        consistent: t.consistent,
        restarts: t.restarts,
        usage_drops: drops(t.usage_drops),
    }
}

/// An open report stream: iterate it for groups or rows; `trailer` is set once the iteration ends.
#[pyclass(frozen, module = "meterd")]
pub struct ReportStream {
    inner: Mutex<sdk::ReportStream>,
    trailer: Mutex<Option<Py<ReportTrailer>>>,
}

impl ReportStream {
    pub fn new(inner: sdk::ReportStream) -> Self {
        Self { inner: Mutex::new(inner), trailer: Mutex::new(None) }
    }
}

#[pymethods]
impl ReportStream {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// The next group or row (waiting without the GIL); StopIteration after the trailer.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let rt = runtime::get();
        let item = py
            .detach(|| {
                // Held while this thread blocks on the next chunk: another thread's `next` waits its turn.
                let mut stream = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                rt.block_on(stream.next())
            })
            .map_err(|e| error::to_py(py, &e))?;
        Ok(match item {
            Some(ReportItem::Row(r)) => Some(Py::new(py, row(r))?.into_any()),
            Some(ReportItem::Group(g)) => Some(Py::new(py, group(g))?.into_any()),
            Some(ReportItem::Trailer(t)) => {
                *self.trailer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Py::new(py, trailer(*t))?);
                None
            }
            None => None,
        })
    }

    /// The totals, once the stream has been read to its end (None before).
    #[getter]
    fn trailer(&self, py: Python<'_>) -> Option<Py<ReportTrailer>> {
        self.trailer.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|t| t.clone_ref(py))
    }
}

/// `AsyncClient.report_stream(...)`: the same stream for `async for`; `trailer` is set once it ends.
#[pyclass(frozen, module = "meterd")]
pub struct AsyncReportStream {
    inner: Arc<tokio::sync::Mutex<sdk::ReportStream>>,
    trailer: Arc<Mutex<Option<Py<ReportTrailer>>>>,
}

impl AsyncReportStream {
    pub fn new(inner: sdk::ReportStream) -> Self {
        Self { inner: Arc::new(tokio::sync::Mutex::new(inner)), trailer: Arc::new(Mutex::new(None)) }
    }
}

type Slot = Arc<Mutex<Option<Py<ReportTrailer>>>>;

/// The awaited item as Python: a group or row; the trailer goes to its slot and ends the iteration.
fn async_item(py: Python<'_>, (item, slot): (Option<ReportItem>, Slot)) -> PyResult<Py<PyAny>> {
    match item {
        Some(ReportItem::Row(r)) => Ok(Py::new(py, row(r))?.into_any()),
        Some(ReportItem::Group(g)) => Ok(Py::new(py, group(g))?.into_any()),
        Some(ReportItem::Trailer(t)) => {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Py::new(py, trailer(*t))?);
            Err(pyo3::exceptions::PyStopAsyncIteration::new_err(()))
        }
        None => Err(pyo3::exceptions::PyStopAsyncIteration::new_err(())),
    }
}

#[pymethods]
impl AsyncReportStream {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (inner, slot) = (self.inner.clone(), self.trailer.clone());
        crate::aio::spawn(py, async move { Ok((inner.lock().await.next().await?, slot)) }, async_item)
    }

    /// The totals, once the stream has been read to its end (None before).
    #[getter]
    fn trailer(&self, py: Python<'_>) -> Option<Py<ReportTrailer>> {
        self.trailer.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|t| t.clone_ref(py))
    }
}
