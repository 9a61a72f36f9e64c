//! JS usage objects (already normalised by `index.js`) ⇄ `meterd_proto::sdk::{Usage, Receipt}`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meterd_proto::sdk::{self, Customer};
use napi_derive::napi;

use crate::error::NativeError;

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

pub fn from_js(u: NativeUsage) -> sdk::Usage {
    let customer = match (u.tenant_id, u.aws_account_id, u.customer_identifier) {
        _ if u.deployment == Some(true) => Customer::Deployment,
        (Some(t), _, _) => Customer::Tenant(t),
        (None, Some(account_id), _) => Customer::Aws { account_id, license_arn: u.license_arn.unwrap_or_default() },
        (None, None, Some(customer_identifier)) => {
            Customer::Legacy { customer_identifier, product_code: u.product_code }
        }
        // index.js always sets one; an empty tenant id is refused by the agent with the field named.
        (None, None, None) => Customer::Tenant(String::new()),
    };
    let mut usage = sdk::Usage::new(customer, u.dimension, u.quantity);
    usage.timestamp = u.timestamp_ms.map(from_ms);
    usage.tags = u.tags.unwrap_or_default().into_iter().collect();
    usage.product = u.product;
    usage.idempotency_key = u.idempotency_key;
    usage
}

/// A JS time value (whole epoch milliseconds, as `Date.getTime()` gives) as a `SystemTime`, exactly.
fn from_ms(ms: f64) -> SystemTime {
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

/// One batch result: exactly one of the two is set.
#[napi(object)]
pub struct NativeResult {
    pub receipt: Option<NativeReceipt>,
    pub error: Option<NativeError>,
}

impl From<Result<sdk::Receipt, sdk::Error>> for NativeResult {
    fn from(r: Result<sdk::Receipt, sdk::Error>) -> Self {
        match r {
            Ok(r) => NativeResult { receipt: Some(r.into()), error: None },
            Err(e) => NativeResult { receipt: None, error: Some(e.into()) },
        }
    }
}
