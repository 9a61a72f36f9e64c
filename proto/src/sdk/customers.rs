//! The customer registry and subscription lifecycle (`meterd.v1.Customers`): what the caller passes and what the
//! agent returns ([`CustomerInfo`], [`StatusChange`], [`EventOutcome`]).

use std::time::SystemTime;

use super::{Customer, Error, from_timestamp};
use crate::v1;

/// A tenant's mapping to the marketplace identity AWS bills, and that identity's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerInfo {
    pub tenant_id: String,
    pub product: String,
    /// [`Customer::Aws`] or [`Customer::Legacy`] (never [`Customer::Tenant`]); `None` only if the agent sent none.
    pub customer: Option<Customer>,
    pub agreement_id: Option<String>,
    /// `active`, `deprovisioning` or `ended`.
    pub status: String,
    /// Every lifecycle event seen for the identity, oldest first.
    pub history: Vec<StatusChange>,
    /// Last time AWS answered CustomerNotSubscribed for this customer's usage.
    pub not_subscribed_at: Option<SystemTime>,
    /// Open hourly buckets moved from the tenant id to the identity by this call (`put_customer`,
    /// `resolve_customer`); 0 otherwise.
    pub buckets_moved: u64,
}

/// One lifecycle event in a customer's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub at: SystemTime,
    /// `active`, `deprovisioning` or `ended`.
    pub status: String,
    pub source: String,
    pub event_id: Option<String>,
    /// False when the event changed nothing (a duplicate, or older than the current status).
    pub applied: bool,
}

/// What [`super::Client::apply_event`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOutcome {
    /// False for duplicates, events older than the current status, and agreements meterd has never seen.
    pub applied: bool,
    /// The customer's status afterwards (empty when the agreement is unknown).
    pub status: String,
    /// Records sealed at once for the customer's final reporting hour.
    pub records_sealed: u64,
    pub summary: String,
}

/// What [`super::Client::reinstate_customer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reinstated {
    /// `deprovisioning` or `ended`.
    pub previous_status: String,
    /// Since when usage for this customer was refused; that usage is not in meterd.
    pub refused_since: Option<SystemTime>,
    pub summary: String,
    pub history: Vec<StatusChange>,
}

impl Reinstated {
    pub(crate) fn from_wire(r: v1::ReinstateCustomerResponse) -> Self {
        Reinstated {
            previous_status: r.previous_status,
            refused_since: r.refused_since.map(|t| from_timestamp(Some(t))),
            summary: r.summary,
            history: r.history.into_iter().map(StatusChange::from_wire).collect(),
        }
    }
}

impl StatusChange {
    fn from_wire(h: v1::StatusChange) -> Self {
        StatusChange {
            at: from_timestamp(h.at),
            status: h.status,
            source: h.source,
            event_id: non_empty(h.event_id),
            applied: h.applied,
        }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The identity of a `put_customer` call; a tenant id is refused here (it is what is being mapped).
pub(crate) fn put_identity(customer: Customer) -> Result<v1::put_customer_request::Identity, Error> {
    use v1::put_customer_request::Identity;
    match customer {
        Customer::Aws { account_id, license_arn } => {
            Ok(Identity::AwsAccount(v1::AwsCustomer { customer_aws_account_id: account_id, license_arn }))
        }
        Customer::Legacy { customer_identifier, product_code } => Ok(Identity::Legacy(v1::LegacyCustomer {
            customer_identifier,
            product_code: product_code.unwrap_or_default(),
        })),
        Customer::Tenant(_) | Customer::Deployment => Err(Error::InvalidUsage {
            field: "customer".into(),
            message: "customer: must be an AWS identity (account id + license ARN) or a legacy customer identifier, \
                      not a tenant id"
                .into(),
        }),
    }
}

impl CustomerInfo {
    pub(crate) fn from_wire(c: v1::CustomerInfo) -> Self {
        use v1::customer_info::Identity;
        let customer = c.identity.map(|i| match i {
            Identity::AwsAccount(a) => {
                Customer::Aws { account_id: a.customer_aws_account_id, license_arn: a.license_arn }
            }
            Identity::Legacy(l) => {
                Customer::Legacy { customer_identifier: l.customer_identifier, product_code: non_empty(l.product_code) }
            }
        });
        CustomerInfo {
            tenant_id: c.tenant_id,
            product: c.product,
            customer,
            agreement_id: non_empty(c.agreement_id),
            status: c.status,
            history: c.history.into_iter().map(StatusChange::from_wire).collect(),
            not_subscribed_at: c.not_subscribed_at.map(|t| from_timestamp(Some(t))),
            buckets_moved: c.buckets_moved,
        }
    }
}

impl EventOutcome {
    pub(crate) fn from_wire(r: v1::ApplyEventResponse) -> Self {
        EventOutcome { applied: r.applied, status: r.status, records_sealed: r.records_sealed, summary: r.summary }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_customer_info() {
        let wire = v1::CustomerInfo {
            tenant_id: "t".into(),
            product: "demo".into(),
            identity: Some(v1::customer_info::Identity::Legacy(v1::LegacyCustomer {
                customer_identifier: "c".into(),
                product_code: String::new(),
            })),
            status: "active".into(),
            history: vec![v1::StatusChange { status: "active".into(), applied: true, ..Default::default() }],
            ..Default::default()
        };
        let info = CustomerInfo::from_wire(wire);
        assert_eq!(info.customer, Some(Customer::legacy("c")));
        assert_eq!((info.agreement_id, info.not_subscribed_at), (None, None));
        assert_eq!(info.history[0].event_id, None);
        assert_eq!(put_identity(Customer::tenant("t")).unwrap_err().code(), "INVALID_USAGE");
    }
}
