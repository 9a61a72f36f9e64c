//! Python values ⇄ `meterd_proto::sdk::{Usage, Customer, Quantity, Receipt}`.
//!
//! Conversions are exact or refused: a quantity is an `int`, a `str` or a `decimal.Decimal` (a `float` raises
//! `TypeError`: it cannot hold most decimals exactly); a timestamp is a timezone-aware `datetime` (a naive one
//! raises `meterd.InvalidUsage`: it is the time-zone bug metering must not guess about).

use std::collections::BTreeMap;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use meterd_proto::sdk;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDateTime, PyDict, PyFloat, PyInt, PyString, PyType};

use crate::error;

/// A customer named by AWS account id and license ARN (Concurrent Agreements; `identity = "license"`).
#[pyclass(frozen, eq, hash, get_all, module = "meterd")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AwsCustomer {
    pub account_id: String,
    pub license_arn: String,
}

#[pymethods]
impl AwsCustomer {
    #[new]
    fn new(account_id: String, license_arn: String) -> Self {
        Self { account_id, license_arn }
    }

    fn __repr__(&self) -> String {
        format!("AwsCustomer(account_id={:?}, license_arn={:?})", self.account_id, self.license_arn)
    }
}

/// A customer named by the `CustomerIdentifier` of a legacy listing (`identity = "legacy"`).
#[pyclass(frozen, eq, hash, get_all, module = "meterd")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LegacyCustomer {
    pub customer_identifier: String,
    pub product_code: Option<String>,
}

#[pymethods]
impl LegacyCustomer {
    #[new]
    #[pyo3(signature = (customer_identifier, product_code=None))]
    fn new(customer_identifier: String, product_code: Option<String>) -> Self {
        Self { customer_identifier, product_code }
    }

    fn __repr__(&self) -> String {
        format!(
            "LegacyCustomer(customer_identifier={:?}, product_code={:?})",
            self.customer_identifier, self.product_code
        )
    }
}

/// One usage event for `record_usage_batch` (a dict with the same keys works too).
#[pyclass(frozen, module = "meterd")]
pub struct Usage {
    pub inner: sdk::Usage,
}

#[pymethods]
impl Usage {
    #[new]
    #[pyo3(signature = (*, customer, dimension, quantity, timestamp=None, tags=None, idempotency_key=None, product=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        customer: &Bound<'_, PyAny>,
        dimension: String,
        quantity: &Bound<'_, PyAny>,
        timestamp: Option<&Bound<'_, PyAny>>,
        tags: Option<BTreeMap<String, String>>,
        idempotency_key: Option<String>,
        product: Option<String>,
    ) -> PyResult<Self> {
        Ok(Self { inner: build(py, customer, dimension, quantity, timestamp, tags, idempotency_key, product)? })
    }

    fn __repr__(&self) -> String {
        let u = &self.inner;
        format!("Usage(customer={:?}, dimension={:?}, quantity={:?})", u.customer, u.dimension, u.quantity.as_str())
    }
}

#[allow(clippy::too_many_arguments)]
pub fn build(
    py: Python<'_>,
    customer: &Bound<'_, PyAny>,
    dimension: String,
    quantity: &Bound<'_, PyAny>,
    timestamp: Option<&Bound<'_, PyAny>>,
    tags: Option<BTreeMap<String, String>>,
    idempotency_key: Option<String>,
    product: Option<String>,
) -> PyResult<sdk::Usage> {
    let mut usage = sdk::Usage::new(to_customer(customer)?, dimension, to_quantity(py, quantity)?);
    if let Some(ts) = timestamp.filter(|t| !t.is_none()) {
        usage.timestamp = Some(to_time(py, ts)?);
    }
    usage.tags = tags.unwrap_or_default();
    usage.idempotency_key = idempotency_key;
    usage.product = product;
    Ok(usage)
}

/// A batch item: a `meterd.Usage` or a mapping with `record_usage`'s keyword names.
pub fn from_item(py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<sdk::Usage> {
    if let Ok(u) = item.cast::<Usage>() {
        return Ok(u.get().inner.clone());
    }
    let Ok(d) = item.cast::<PyDict>() else {
        return Err(PyTypeError::new_err(format!(
            "batch items must be meterd.Usage or dict, not {}",
            item.get_type().name()?
        )));
    };
    let required = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(k)?.ok_or_else(|| PyTypeError::new_err(format!("batch item is missing {k:?}")))
    };
    for key in d.keys() {
        let key: String = key.extract()?;
        if !matches!(
            key.as_str(),
            "customer" | "dimension" | "quantity" | "timestamp" | "tags" | "idempotency_key" | "product"
        ) {
            return Err(PyTypeError::new_err(format!("batch item has an unknown key {key:?}")));
        }
    }
    let opt = |k: &str| -> PyResult<Option<Bound<'_, PyAny>>> { Ok(d.get_item(k)?.filter(|v| !v.is_none())) };
    build(
        py,
        &required("customer")?,
        required("dimension")?.extract()?,
        &required("quantity")?,
        opt("timestamp")?.as_ref(),
        opt("tags")?.map(|t| t.extract()).transpose()?,
        opt("idempotency_key")?.map(|t| t.extract()).transpose()?,
        opt("product")?.map(|t| t.extract()).transpose()?,
    )
}

pub fn to_customer(obj: &Bound<'_, PyAny>) -> PyResult<sdk::Customer> {
    // None: no customer — products with identity = "deployment" (AMI and container products).
    if obj.is_none() {
        return Ok(sdk::Customer::Deployment);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(sdk::Customer::Tenant(s.to_cow()?.into_owned()));
    }
    if let Ok(c) = obj.cast::<AwsCustomer>() {
        let c = c.get();
        return Ok(sdk::Customer::aws(c.account_id.clone(), c.license_arn.clone()));
    }
    if let Ok(c) = obj.cast::<LegacyCustomer>() {
        let c = c.get();
        return Ok(sdk::Customer::Legacy {
            customer_identifier: c.customer_identifier.clone(),
            product_code: c.product_code.clone(),
        });
    }
    Err(PyTypeError::new_err(format!(
        "customer must be a tenant id (str), meterd.AwsCustomer, meterd.LegacyCustomer or None (identity = \"deployment\" products), not {}",
        obj.get_type().name()?
    )))
}

fn to_quantity(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<sdk::Quantity> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned().into());
    }
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err("quantity must be an int, str or decimal.Decimal, not bool"));
    }
    if obj.is_instance_of::<PyInt>() {
        return Ok(obj.str()?.to_cow()?.into_owned().into());
    }
    if obj.is_instance_of::<PyFloat>() {
        return Err(PyTypeError::new_err(format!(
            "quantity must be an int, str or decimal.Decimal, not float ({}): a float cannot hold most decimals \
             exactly; pass str or Decimal (e.g. Decimal(\"0.25\"))",
            obj.repr()?
        )));
    }
    static DECIMAL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    if obj.is_instance(DECIMAL.import(py, "decimal", "Decimal")?)? {
        // Positional notation ("100", not "1E+2"); NaN and infinities come out as words the agent refuses.
        return Ok(obj.call_method1("__format__", ("f",))?.extract::<String>()?.into());
    }
    Err(PyTypeError::new_err(format!(
        "quantity must be an int, str or decimal.Decimal, not {}",
        obj.get_type().name()?
    )))
}

pub(crate) fn to_time(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<SystemTime> {
    if !obj.is_instance_of::<PyDateTime>() {
        return Err(PyTypeError::new_err(format!(
            "timestamp must be a timezone-aware datetime.datetime, not {}",
            obj.get_type().name()?
        )));
    }
    if obj.call_method0("utcoffset")?.is_none() {
        return Err(error::invalid(
            py,
            "timestamp",
            format!(
                "timestamp: {} is a naive datetime; give it a time zone (e.g. datetime.now(timezone.utc)) — \
                 meterd never guesses the zone of a usage time",
                obj.repr()?
            ),
        ));
    }
    static UTC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let utc =
        UTC.get_or_try_init(py, || py.import("datetime")?.getattr("timezone")?.getattr("utc").map(Bound::unbind))?;
    let t: DateTime<Utc> = obj.call_method1("astimezone", (utc,))?.extract()?;
    Ok(t.into())
}

/// What the agent stored for an event.
#[pyclass(frozen, get_all, module = "meterd")]
pub struct Receipt {
    /// The event's key (yours, or the one the client generated).
    pub idempotency_key: String,
    /// True when the event was already stored under this key; it was counted once.
    pub replayed: bool,
    pub product: String,
    pub event_time: DateTime<Utc>,
    pub usage_hour: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

#[pymethods]
impl Receipt {
    fn __repr__(&self) -> String {
        format!(
            "Receipt(idempotency_key={:?}, replayed={}, product={:?}, usage_hour={:?})",
            self.idempotency_key,
            if self.replayed { "True" } else { "False" },
            self.product,
            self.usage_hour.to_rfc3339()
        )
    }
}

impl From<sdk::Receipt> for Receipt {
    fn from(r: sdk::Receipt) -> Self {
        Receipt {
            idempotency_key: r.idempotency_key,
            replayed: r.replayed,
            product: r.product,
            event_time: r.event_time.into(),
            usage_hour: r.usage_hour.into(),
            recorded_at: r.recorded_at.into(),
        }
    }
}

pub fn receipt_to_py(py: Python<'_>, r: sdk::Receipt) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, Receipt::from(r))?.into_any())
}

/// Per-event results of a batch: a `Receipt`, or the exception instance that refused the event.
pub fn batch_to_py(py: Python<'_>, results: Vec<Result<sdk::Receipt, sdk::Error>>) -> PyResult<Py<PyAny>> {
    let items = results
        .into_iter()
        .map(|r| match r {
            Ok(r) => receipt_to_py(py, r),
            Err(e) => Ok(error::instance(py, &e)?.unbind()),
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(pyo3::types::PyList::new(py, items)?.into_any().unbind())
}
