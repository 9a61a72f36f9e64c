//! `put_customer()`, `get_customer()`, `list_customers()`, `resolve_customer()` and `apply_event()` results:
//! read-only copies of `meterd_proto::sdk::{CustomerInfo, StatusChange, EventOutcome}`.

use chrono::{DateTime, Utc};
use meterd_proto::sdk;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::usage::{self, AwsCustomer, LegacyCustomer};

/// The identity a `put_customer` call maps the tenant to: a `meterd.AwsCustomer` or a `meterd.LegacyCustomer`.
pub fn identity(obj: &Bound<'_, PyAny>) -> PyResult<sdk::Customer> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "customer must be meterd.AwsCustomer or meterd.LegacyCustomer (the identity the tenant id maps to), not str",
        ));
    }
    usage::to_customer(obj)
}

/// One lifecycle event in a customer's history.
#[pyclass(frozen, get_all, module = "meterd")]
#[derive(Clone)]
pub struct StatusChange {
    pub at: DateTime<Utc>,
    /// "active", "deprovisioning" or "ended".
    pub status: String,
    pub source: String,
    pub event_id: Option<String>,
    /// False when the event changed nothing (a duplicate, or older than the current status).
    pub applied: bool,
}

#[pymethods]
impl StatusChange {
    fn __repr__(&self) -> String {
        format!(
            "StatusChange(at={:?}, status={:?}, source={:?}, applied={})",
            self.at.to_rfc3339(),
            self.status,
            self.source,
            if self.applied { "True" } else { "False" }
        )
    }
}

/// A tenant's mapping to the marketplace identity AWS bills, and that identity's lifecycle.
#[pyclass(frozen, module = "meterd")]
pub struct CustomerInfo {
    #[pyo3(get)]
    pub tenant_id: String,
    #[pyo3(get)]
    pub product: String,
    #[pyo3(get)]
    pub agreement_id: Option<String>,
    /// "active", "deprovisioning" or "ended".
    #[pyo3(get)]
    pub status: String,
    #[pyo3(get)]
    pub history: Vec<StatusChange>,
    #[pyo3(get)]
    pub not_subscribed_at: Option<DateTime<Utc>>,
    #[pyo3(get)]
    pub buckets_moved: u64,
    identity: Option<sdk::Customer>,
}

#[pymethods]
impl CustomerInfo {
    /// The identity: a `meterd.AwsCustomer` or `meterd.LegacyCustomer` (None only if the agent sent none).
    #[getter]
    fn customer(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(match &self.identity {
            Some(sdk::Customer::Aws { account_id, license_arn }) => Some(
                Py::new(py, AwsCustomer { account_id: account_id.clone(), license_arn: license_arn.clone() })?
                    .into_any(),
            ),
            Some(sdk::Customer::Legacy { customer_identifier, product_code }) => Some(
                Py::new(
                    py,
                    LegacyCustomer {
                        customer_identifier: customer_identifier.clone(),
                        product_code: product_code.clone(),
                    },
                )?
                .into_any(),
            ),
            Some(sdk::Customer::Tenant(_) | sdk::Customer::Deployment) | None => None,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "CustomerInfo(tenant_id={:?}, product={:?}, status={:?}, customer={:?})",
            self.tenant_id, self.product, self.status, self.identity
        )
    }
}

impl From<sdk::CustomerInfo> for CustomerInfo {
    fn from(c: sdk::CustomerInfo) -> Self {
        CustomerInfo {
            tenant_id: c.tenant_id,
            product: c.product,
            agreement_id: c.agreement_id,
            status: c.status,
            history: c
                .history
                .into_iter()
                .map(|h| StatusChange {
                    at: h.at.into(),
                    status: h.status,
                    source: h.source,
                    event_id: h.event_id,
                    applied: h.applied,
                })
                .collect(),
            not_subscribed_at: c.not_subscribed_at.map(Into::into),
            buckets_moved: c.buckets_moved,
            identity: c.customer,
        }
    }
}

pub fn info_to_py(py: Python<'_>, c: sdk::CustomerInfo) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, CustomerInfo::from(c))?.into_any())
}

pub fn list_to_py(py: Python<'_>, all: Vec<sdk::CustomerInfo>) -> PyResult<Py<PyAny>> {
    let items = all.into_iter().map(|c| Py::new(py, CustomerInfo::from(c))).collect::<PyResult<Vec<_>>>()?;
    Ok(pyo3::types::PyList::new(py, items)?.into_any().unbind())
}

pub fn bool_to_py(py: Python<'_>, b: bool) -> PyResult<Py<PyAny>> {
    Ok(pyo3::types::PyBool::new(py, b).to_owned().into_any().unbind())
}

/// What `apply_event()` did.
#[pyclass(frozen, get_all, module = "meterd")]
pub struct EventOutcome {
    /// False for duplicates, events older than the current status, and agreements meterd has never seen.
    pub applied: bool,
    /// The customer's status afterwards ("" when the agreement is unknown).
    pub status: String,
    /// Records sealed at once for the customer's final reporting hour.
    pub records_sealed: u64,
    pub summary: String,
}

#[pymethods]
impl EventOutcome {
    fn __repr__(&self) -> String {
        format!(
            "EventOutcome(applied={}, status={:?}, records_sealed={}, summary={:?})",
            if self.applied { "True" } else { "False" },
            self.status,
            self.records_sealed,
            self.summary
        )
    }
}

pub fn outcome_to_py(py: Python<'_>, o: sdk::EventOutcome) -> PyResult<Py<PyAny>> {
    let o = EventOutcome { applied: o.applied, status: o.status, records_sealed: o.records_sealed, summary: o.summary };
    Ok(Py::new(py, o)?.into_any())
}
