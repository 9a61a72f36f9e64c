//! Customer registry results: plain objects copied from `meterd_proto::sdk::{CustomerInfo, StatusChange,
//! EventOutcome}`. Times are epoch milliseconds (`index.js` turns them into `Date`s); the identity is flattened
//! into optional fields (`index.js` rebuilds `{accountId, licenseArn}` / `{customerIdentifier}`).

use meterd_proto::sdk::{self, Customer};
use napi_derive::napi;

use crate::usage::to_ms;

/// The identity a tenant maps to, as `index.js` hands it over: account id + license ARN, or a customer identifier.
#[napi(object)]
pub struct NativeIdentity {
    pub aws_account_id: Option<String>,
    pub license_arn: Option<String>,
    pub customer_identifier: Option<String>,
    pub product_code: Option<String>,
}

impl NativeIdentity {
    fn from_customer(c: Option<Customer>) -> Self {
        match c {
            Some(Customer::Aws { account_id, license_arn }) => NativeIdentity {
                aws_account_id: Some(account_id),
                license_arn: Some(license_arn),
                customer_identifier: None,
                product_code: None,
            },
            Some(Customer::Legacy { customer_identifier, product_code }) => NativeIdentity {
                aws_account_id: None,
                license_arn: None,
                customer_identifier: Some(customer_identifier),
                product_code,
            },
            Some(Customer::Tenant(_) | Customer::Deployment) | None => NativeIdentity {
                aws_account_id: None,
                license_arn: None,
                customer_identifier: None,
                product_code: None,
            },
        }
    }
}

pub fn identity_from_js(i: NativeIdentity) -> Customer {
    match (i.aws_account_id, i.customer_identifier) {
        (Some(account_id), _) => Customer::Aws { account_id, license_arn: i.license_arn.unwrap_or_default() },
        (None, Some(customer_identifier)) => Customer::Legacy { customer_identifier, product_code: i.product_code },
        // index.js always sets one; the Rust client refuses anything else with INVALID_USAGE.
        (None, None) => Customer::Tenant(String::new()),
    }
}

#[napi(object)]
pub struct NativeStatusChange {
    pub at_ms: f64,
    pub status: String,
    pub source: String,
    pub event_id: Option<String>,
    pub applied: bool,
}

#[napi(object)]
pub struct NativeCustomerInfo {
    pub tenant_id: String,
    pub product: String,
    pub identity: NativeIdentity,
    pub agreement_id: Option<String>,
    pub status: String,
    pub history: Vec<NativeStatusChange>,
    pub not_subscribed_at_ms: Option<f64>,
    pub buckets_moved: i64,
}

impl From<sdk::CustomerInfo> for NativeCustomerInfo {
    fn from(c: sdk::CustomerInfo) -> Self {
        NativeCustomerInfo {
            tenant_id: c.tenant_id,
            product: c.product,
            identity: NativeIdentity::from_customer(c.customer),
            agreement_id: c.agreement_id,
            status: c.status,
            history: c
                .history
                .into_iter()
                .map(|h| NativeStatusChange {
                    at_ms: to_ms(h.at),
                    status: h.status,
                    source: h.source,
                    event_id: h.event_id,
                    applied: h.applied,
                })
                .collect(),
            not_subscribed_at_ms: c.not_subscribed_at.map(to_ms),
            buckets_moved: c.buckets_moved as i64,
        }
    }
}

#[napi(object)]
pub struct NativeEventOutcome {
    pub applied: bool,
    pub status: String,
    pub records_sealed: i64,
    pub summary: String,
}

impl From<sdk::EventOutcome> for NativeEventOutcome {
    fn from(o: sdk::EventOutcome) -> Self {
        NativeEventOutcome {
            applied: o.applied,
            status: o.status,
            records_sealed: o.records_sealed as i64,
            summary: o.summary,
        }
    }
}
