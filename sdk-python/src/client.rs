//! `meterd.Client` (blocking; releases the GIL while it waits) and `meterd.AsyncClient` (asyncio). Both wrap
//! one `meterd_proto::sdk::Client` and differ only in how they wait.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use meterd_proto::sdk::{self, ClientOptions, RetryPolicy};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::{admin, aio, customers, error, report, runtime, usage};

/// The connection of one client object, rebuilt in a forked child (see `runtime.rs`).
struct Shared {
    target: String,
    options: ClientOptions,
    conn: Mutex<Option<(u32, sdk::Client)>>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        target: String,
        timeout: f64,
        connect_timeout: f64,
        max_attempts: u32,
        product: Option<String>,
        max_batch_events: usize,
    ) -> PyResult<Self> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(PyValueError::new_err(format!("{name} must be a positive number of seconds, not {v}")))
            }
        };
        if max_attempts == 0 || max_batch_events == 0 {
            return Err(PyValueError::new_err("max_attempts and max_batch_events must be at least 1"));
        }
        let options = ClientOptions {
            timeout: secs("timeout", timeout)?,
            connect_timeout: secs("connect_timeout", connect_timeout)?,
            retry: RetryPolicy { max_attempts, ..RetryPolicy::default() },
            default_product: product,
            max_batch_events,
        };
        let shared = Shared { target, options, conn: Mutex::new(None) };
        shared.client(py)?; // a malformed target fails here, not on the first call
        Ok(shared)
    }

    /// This process's connection: opened lazily, opened anew after `fork()` or `close()`.
    fn client(&self, py: Python<'_>) -> PyResult<sdk::Client> {
        let pid = std::process::id();
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((owner, client)) = slot.as_ref() {
            if *owner == pid {
                return Ok(client.clone());
            }
            // The parent's connection: its tasks lived on threads that do not exist in this process.
            std::mem::forget(slot.take());
        }
        let rt = runtime::get();
        let _enter = rt.enter();
        let client = sdk::Client::new(&self.target, self.options.clone()).map_err(|e| error::to_py(py, &e))?;
        *slot = Some((pid, client.clone()));
        Ok(client)
    }

    fn close(&self) {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((owner, client)) = slot.take() {
            if owner == std::process::id() {
                drop(client);
            } else {
                std::mem::forget(client);
            }
        }
    }

    fn repr(&self, class: &str) -> String {
        format!("{class}({:?}, timeout={})", self.target, self.options.timeout.as_secs_f64())
    }
}

fn batch_items(py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<Vec<sdk::Usage>> {
    events.try_iter()?.map(|item| usage::from_item(py, &item?)).collect()
}

/// Runs `fut` on the shared runtime with the GIL released.
fn block<T: Send>(py: Python<'_>, fut: impl Future<Output = Result<T, sdk::Error>> + Send) -> PyResult<T> {
    let rt = runtime::get();
    py.detach(|| rt.block_on(fut)).map_err(|e| error::to_py(py, &e))
}

/// A blocking client of a meterd agent. Calls release the GIL while they wait, so other threads run.
#[pyclass(frozen, module = "meterd")]
pub struct Client {
    shared: Shared,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (target="127.0.0.1:7171".to_string(), *, timeout=10.0, connect_timeout=2.0, max_attempts=10, product=None, max_batch_events=10_000))]
    fn new(
        py: Python<'_>,
        target: String,
        timeout: f64,
        connect_timeout: f64,
        max_attempts: u32,
        product: Option<String>,
        max_batch_events: usize,
    ) -> PyResult<Self> {
        Ok(Self { shared: Shared::new(py, target, timeout, connect_timeout, max_attempts, product, max_batch_events)? })
    }

    #[pyo3(signature = (*, customer, dimension, quantity, timestamp=None, tags=None, idempotency_key=None, product=None))]
    #[allow(clippy::too_many_arguments)]
    fn record_usage(
        &self,
        py: Python<'_>,
        customer: &Bound<'_, PyAny>,
        dimension: String,
        quantity: &Bound<'_, PyAny>,
        timestamp: Option<&Bound<'_, PyAny>>,
        tags: Option<BTreeMap<String, String>>,
        idempotency_key: Option<String>,
        product: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let usage = usage::build(py, customer, dimension, quantity, timestamp, tags, idempotency_key, product)?;
        let client = self.shared.client(py)?;
        let receipt = block(py, async move { client.record_usage(usage).await })?;
        usage::receipt_to_py(py, receipt)
    }

    fn record_usage_batch(&self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let usages = batch_items(py, events)?;
        let client = self.shared.client(py)?;
        let results = block(py, async move { client.record_usage_batch(&usages).await })?;
        usage::batch_to_py(py, results)
    }

    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let client = self.shared.client(py)?;
        admin::status_to_py(py, block(py, async move { client.status().await })?)
    }

    fn flush(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let client = self.shared.client(py)?;
        admin::flush_to_py(py, block(py, async move { client.flush().await })?)
    }

    fn report(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let client = self.shared.client(py)?;
        admin::report_to_py(py, block(py, async move { client.report().await })?)
    }

    /// The report streamed: an iterator of `ReportGroup`s (the summary) or, with `rows=True`, `ReportRow`s; the
    /// totals are `stream.trailer` once it is read to the end.
    #[pyo3(signature = (*, rows=false, since=None, until=None, customer=None, dimension=None, state=None, product=None))]
    #[allow(clippy::too_many_arguments)]
    fn report_stream(
        &self,
        py: Python<'_>,
        rows: bool,
        since: Option<&Bound<'_, PyAny>>,
        until: Option<&Bound<'_, PyAny>>,
        customer: Option<String>,
        dimension: Option<String>,
        state: Option<String>,
        product: Option<String>,
    ) -> PyResult<report::ReportStream> {
        let time = |t: Option<&Bound<'_, PyAny>>| t.filter(|t| !t.is_none()).map(|t| usage::to_time(py, t)).transpose();
        let query =
            sdk::ReportQuery { rows, since: time(since)?, until: time(until)?, customer, dimension, state, product };
        let client = self.shared.client(py)?;
        let stream = block(py, async move { client.report_stream(query).await })?;
        Ok(report::ReportStream::new(stream))
    }

    #[pyo3(signature = (tenant_id, customer, product=None, agreement_id=None))]
    fn put_customer(
        &self,
        py: Python<'_>,
        tenant_id: String,
        customer: &Bound<'_, PyAny>,
        product: Option<String>,
        agreement_id: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let customer = customers::identity(customer)?;
        let client = self.shared.client(py)?;
        let info = block(py, async move {
            client.put_customer(&tenant_id, customer, product.as_deref(), agreement_id.as_deref()).await
        })?;
        customers::info_to_py(py, info)
    }

    fn get_customer(&self, py: Python<'_>, tenant_id: String) -> PyResult<Py<PyAny>> {
        let client = self.shared.client(py)?;
        customers::info_to_py(py, block(py, async move { client.get_customer(&tenant_id).await })?)
    }

    fn list_customers(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let client = self.shared.client(py)?;
        customers::list_to_py(py, block(py, async move { client.list_customers().await })?)
    }

    fn remove_customer(&self, py: Python<'_>, tenant_id: String) -> PyResult<bool> {
        let client = self.shared.client(py)?;
        block(py, async move { client.remove_customer(&tenant_id).await })
    }

    #[pyo3(signature = (registration_token, tenant_id, product=None))]
    fn resolve_customer(
        &self,
        py: Python<'_>,
        registration_token: String,
        tenant_id: String,
        product: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let client = self.shared.client(py)?;
        let info =
            block(
                py,
                async move { client.resolve_customer(&registration_token, &tenant_id, product.as_deref()).await },
            )?;
        customers::info_to_py(py, info)
    }

    fn apply_event(&self, py: Python<'_>, event_json: String) -> PyResult<Py<PyAny>> {
        let client = self.shared.client(py)?;
        customers::outcome_to_py(py, block(py, async move { client.apply_event(&event_json).await })?)
    }

    /// Releases the connection (a later call opens a new one).
    fn close(&self) {
        self.shared.close();
    }

    #[getter]
    fn target(&self) -> &str {
        &self.shared.target
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> bool {
        self.shared.close();
        false
    }

    fn __repr__(&self) -> String {
        self.shared.repr("Client")
    }
}

/// An asyncio client of a meterd agent: every call returns an awaitable; the I/O runs off the event loop.
#[pyclass(frozen, module = "meterd")]
pub struct AsyncClient {
    shared: Shared,
}

#[pymethods]
impl AsyncClient {
    #[new]
    #[pyo3(signature = (target="127.0.0.1:7171".to_string(), *, timeout=10.0, connect_timeout=2.0, max_attempts=10, product=None, max_batch_events=10_000))]
    fn new(
        py: Python<'_>,
        target: String,
        timeout: f64,
        connect_timeout: f64,
        max_attempts: u32,
        product: Option<String>,
        max_batch_events: usize,
    ) -> PyResult<Self> {
        Ok(Self { shared: Shared::new(py, target, timeout, connect_timeout, max_attempts, product, max_batch_events)? })
    }

    #[pyo3(signature = (*, customer, dimension, quantity, timestamp=None, tags=None, idempotency_key=None, product=None))]
    #[allow(clippy::too_many_arguments)]
    fn record_usage<'py>(
        &self,
        py: Python<'py>,
        customer: &Bound<'_, PyAny>,
        dimension: String,
        quantity: &Bound<'_, PyAny>,
        timestamp: Option<&Bound<'_, PyAny>>,
        tags: Option<BTreeMap<String, String>>,
        idempotency_key: Option<String>,
        product: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let usage = usage::build(py, customer, dimension, quantity, timestamp, tags, idempotency_key, product)?;
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.record_usage(usage).await }, usage::receipt_to_py)
    }

    /// The report streamed, for `async for`: `ReportGroup`s (the summary) or, with `rows=True`, `ReportRow`s;
    /// the totals are `stream.trailer` once it ends.
    #[pyo3(signature = (*, rows=false, since=None, until=None, customer=None, dimension=None, state=None, product=None))]
    #[allow(clippy::too_many_arguments)]
    fn report_stream<'py>(
        &self,
        py: Python<'py>,
        rows: bool,
        since: Option<&Bound<'_, PyAny>>,
        until: Option<&Bound<'_, PyAny>>,
        customer: Option<String>,
        dimension: Option<String>,
        state: Option<String>,
        product: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let time = |t: Option<&Bound<'_, PyAny>>| t.filter(|t| !t.is_none()).map(|t| usage::to_time(py, t)).transpose();
        let query =
            sdk::ReportQuery { rows, since: time(since)?, until: time(until)?, customer, dimension, state, product };
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.report_stream(query).await }, |py, s| {
            Ok(Py::new(py, report::AsyncReportStream::new(s))?.into_any())
        })
    }

    fn record_usage_batch<'py>(&self, py: Python<'py>, events: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let usages = batch_items(py, events)?;
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.record_usage_batch(&usages).await }, usage::batch_to_py)
    }

    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.status().await }, admin::status_to_py)
    }

    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.flush().await }, admin::flush_to_py)
    }

    fn report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.report().await }, admin::report_to_py)
    }

    #[pyo3(signature = (tenant_id, customer, product=None, agreement_id=None))]
    fn put_customer<'py>(
        &self,
        py: Python<'py>,
        tenant_id: String,
        customer: &Bound<'_, PyAny>,
        product: Option<String>,
        agreement_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let customer = customers::identity(customer)?;
        let client = self.shared.client(py)?;
        aio::spawn(
            py,
            async move { client.put_customer(&tenant_id, customer, product.as_deref(), agreement_id.as_deref()).await },
            customers::info_to_py,
        )
    }

    fn get_customer<'py>(&self, py: Python<'py>, tenant_id: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.get_customer(&tenant_id).await }, customers::info_to_py)
    }

    fn list_customers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.list_customers().await }, customers::list_to_py)
    }

    fn remove_customer<'py>(&self, py: Python<'py>, tenant_id: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.remove_customer(&tenant_id).await }, customers::bool_to_py)
    }

    #[pyo3(signature = (registration_token, tenant_id, product=None))]
    fn resolve_customer<'py>(
        &self,
        py: Python<'py>,
        registration_token: String,
        tenant_id: String,
        product: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.shared.client(py)?;
        aio::spawn(
            py,
            async move { client.resolve_customer(&registration_token, &tenant_id, product.as_deref()).await },
            customers::info_to_py,
        )
    }

    fn apply_event<'py>(&self, py: Python<'py>, event_json: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.shared.client(py)?;
        aio::spawn(py, async move { client.apply_event(&event_json).await }, customers::outcome_to_py)
    }

    /// Releases the connection (a later call opens a new one). Awaitable.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.shared.close();
        aio::ready(py, py.None())
    }

    #[getter]
    fn target(&self) -> &str {
        &self.shared.target
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        aio::ready(py, slf.into_any().unbind())
    }

    #[pyo3(signature = (*_args))]
    fn __aexit__<'py>(&self, py: Python<'py>, _args: &Bound<'_, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
        self.shared.close();
        aio::ready(py, false.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn __repr__(&self) -> String {
        self.shared.repr("AsyncClient")
    }
}
