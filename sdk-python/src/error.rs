//! The one place SDK errors become Python exceptions (classes defined in `meterd/errors.py`).

use meterd_proto::sdk::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn class_name(e: &Error) -> &'static str {
    match e {
        Error::InvalidUsage { .. } => "InvalidUsage",
        Error::Conflict { .. } => "Conflict",
        Error::CustomerNotActive { .. } => "CustomerNotActive",
        Error::LateUsageRejected { .. } => "LateUsageRejected",
        Error::UsageRefused { .. } => "UsageRefused",
        Error::NotFound { .. } => "NotFound",
        Error::AgentUnavailable { .. } => "AgentUnavailable",
        Error::Timeout { .. } => "Timeout",
        Error::InvalidTarget { .. } => "InvalidTarget",
        _ => "AgentError",
    }
}

/// The exception instance for `e` (also used as a per-event result of a batch).
pub fn instance<'py>(py: Python<'py>, e: &Error) -> PyResult<Bound<'py, PyAny>> {
    let cls = py.import("meterd.errors")?.getattr(class_name(e))?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("field", e.field())?;
    kwargs.set_item("grpc_code", e.grpc_code())?;
    cls.call((e.message(),), Some(&kwargs))
}

pub fn to_py(py: Python<'_>, e: &Error) -> PyErr {
    match instance(py, e) {
        Ok(exc) => PyErr::from_value(exc),
        Err(import_failed) => PyRuntimeError::new_err(format!("{e} (and meterd.errors failed: {import_failed})")),
    }
}

/// A client-side refusal of an argument, raised as `meterd.InvalidUsage` like the agent's own refusals.
pub fn invalid(py: Python<'_>, field: &str, message: String) -> PyErr {
    to_py(py, &Error::InvalidUsage { field: field.to_string(), message })
}
