//! JS usage objects (already normalised by `index.js`) ⇄ `meterd_proto::sdk::{Usage, Receipt}`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meterd_proto::sdk::{self, Customer};
use napi_derive::napi;

/// One event, as `index.js` hands it over: exactly one customer shape, the quantity as text, times in ms.
#[napi(object)]
pub struct NativeUsage {
    pub tenant_id: Option<String>,
    pub aws_account_id: Option<String>,
    pub license_arn: Option<String>,
    pub customer_identifier: Option<String>,
    pub product_code: Option<String>,
    pub dimension: String,
    pub quantity: String,
    pub timestamp_ms: Option<f64>,
    pub tags: Option<HashMap<String, String>>,
    pub product: Option<String>,
    pub idempotency_key: Option<String>,
    /// No customer (`identity = "deployment"` products): `customer: null` in JS.
    pub deployment: Option<bool>,
}

/// The customer of an event from the fields `index.js` set (one shape; `deployment` wins).
pub fn customer(
    deployment: bool,
    tenant_id: Option<String>,
    aws_account_id: Option<String>,
    license_arn: Option<String>,
    customer_identifier: Option<String>,
    product_code: Option<String>,
) -> Customer {
    match (tenant_id, aws_account_id, customer_identifier) {
        _ if deployment => Customer::Deployment,
        (Some(t), _, _) => Customer::Tenant(t),
        (None, Some(account_id), _) => Customer::Aws { account_id, license_arn: license_arn.unwrap_or_default() },
        (None, None, Some(customer_identifier)) => Customer::Legacy { customer_identifier, product_code },
        // index.js always sets one; an empty tenant id is refused by the agent with the field named.
        (None, None, None) => Customer::Tenant(String::new()),
    }
}

pub fn from_js(u: NativeUsage) -> sdk::Usage {
    let customer = customer(
        u.deployment == Some(true),
        u.tenant_id,
        u.aws_account_id,
        u.license_arn,
        u.customer_identifier,
        u.product_code,
    );
    let mut usage = sdk::Usage::new(customer, u.dimension, u.quantity);
    usage.timestamp = u.timestamp_ms.map(from_ms);
    usage.tags = u.tags.unwrap_or_default().into_iter().collect();
    usage.product = u.product;
    usage.idempotency_key = u.idempotency_key;
    usage
}

/// A JS time value (whole epoch milliseconds, as `Date.getTime()` gives) as a `SystemTime`, exactly.
pub fn from_ms(ms: f64) -> SystemTime {
    let d = Duration::from_millis(ms.abs().trunc() as u64);
    if ms >= 0.0 { UNIX_EPOCH + d } else { UNIX_EPOCH - d }
}

/// Whole epoch milliseconds (a JS `Date`'s precision), rounded towards the past.
pub fn to_ms(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as f64,
        Err(e) => -(e.duration().as_nanos().div_ceil(1_000_000) as f64),
    }
}

#[napi(object)]
pub struct NativeReceipt {
    pub idempotency_key: String,
    pub replayed: bool,
    pub product: String,
    pub event_time_ms: f64,
    pub usage_hour_ms: f64,
    pub recorded_at_ms: f64,
}

impl From<sdk::Receipt> for NativeReceipt {
    fn from(r: sdk::Receipt) -> Self {
        NativeReceipt {
            idempotency_key: r.idempotency_key,
            replayed: r.replayed,
            product: r.product,
            event_time_ms: to_ms(r.event_time),
            usage_hour_ms: to_ms(r.usage_hour),
            recorded_at_ms: to_ms(r.recorded_at),
        }
    }
}
