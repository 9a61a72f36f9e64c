//! `meterd._native`: the Python binding of the meterd Rust client SDK (`meterd_proto::sdk`). It only converts
//! arguments, results, errors and async; every behaviour (retries, keys, timeouts, batching) is the Rust client's.
//! The public package is `meterd` (python/meterd), which re-exports these classes.

mod admin;
mod aio;
mod client;
mod customers;
mod error;
mod report;
mod runtime;
mod usage;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<client::AsyncClient>()?;
    m.add_class::<usage::AwsCustomer>()?;
    m.add_class::<usage::LegacyCustomer>()?;
    m.add_class::<usage::Usage>()?;
    m.add_class::<usage::Receipt>()?;
    m.add_class::<admin::AgentStatus>()?;
    m.add_class::<admin::ProductStatus>()?;
    m.add_class::<admin::AccountStatus>()?;
    m.add_class::<admin::FlushResult>()?;
    m.add_class::<admin::FleetStatus>()?;
    m.add_class::<admin::FleetNode>()?;
    m.add_class::<admin::FleetSubmitter>()?;
    m.add_class::<admin::Report>()?;
    m.add_class::<admin::ReportRow>()?;
    m.add_class::<admin::ReportTotals>()?;
    m.add_class::<admin::UsageDrop>()?;
    m.add_class::<report::ReportGroup>()?;
    m.add_class::<report::ReportTrailer>()?;
    m.add_class::<report::ReportStream>()?;
    m.add_class::<report::AsyncReportStream>()?;
    m.add_class::<customers::CustomerInfo>()?;
    m.add_class::<customers::StatusChange>()?;
    m.add_class::<customers::EventOutcome>()?;
    m.add_function(wrap_pyfunction!(aio::_resolve_future, m)?)?;
    let quiesce = wrap_pyfunction!(aio::_quiesce_at_exit, m)?;
    m.py().import("atexit")?.call_method1("register", (&quiesce,))?;
    m.add_function(quiesce)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
