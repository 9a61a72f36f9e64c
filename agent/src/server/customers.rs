//! `meterd.v1.Customers` over gRPC: converts, and maps registry errors to status codes.

use meterd_proto::v1::{self, customers_server::Customers as CustomersApi};
use tonic::{Request, Response, Status};

use super::convert::{store_status, timestamp};
use crate::customers::{CustomerError, Customers};
use crate::domain::customer::TenantMapping;
use crate::domain::echo::echo;
use crate::domain::event::Identity;

pub struct CustomersService {
    pub customers: Customers,
}

fn status(e: CustomerError) -> Status {
    match e {
        CustomerError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        CustomerError::NotFound(m) => Status::not_found(m),
        CustomerError::TokenExpired(m) => Status::failed_precondition(m),
        CustomerError::Unavailable(m) => Status::unavailable(m),
        CustomerError::Store(s) => store_status(s),
    }
}

fn status_change(h: &crate::domain::customer::StatusChange) -> v1::StatusChange {
    v1::StatusChange {
        at: Some(timestamp(h.at_ms)),
        status: h.status.name().to_string(),
        source: h.source.clone(),
        event_id: h.event_id.clone().unwrap_or_default(),
        applied: h.applied,
    }
}

fn info(c: &Customers, m: &TenantMapping, moved: u64) -> Result<v1::CustomerInfo, Status> {
    let life = c.store().lifecycle(&m.identity).map_err(store_status)?;
    let identity = match &m.identity {
        Identity::Aws { account_id, license_arn } => Some(v1::customer_info::Identity::AwsAccount(v1::AwsCustomer {
            customer_aws_account_id: account_id.clone(),
            license_arn: license_arn.clone(),
        })),
        Identity::Legacy { customer_identifier } => Some(v1::customer_info::Identity::Legacy(v1::LegacyCustomer {
            customer_identifier: customer_identifier.clone(),
            product_code: String::new(),
        })),
        Identity::Tenant(_) | Identity::Deployment => None,
    };
    Ok(v1::CustomerInfo {
        tenant_id: m.tenant_id.clone(),
        product: m.product.clone(),
        identity,
        agreement_id: m.agreement_id.clone().unwrap_or_default(),
        status: life.as_ref().map_or("active", |l| l.status.name()).to_string(),
        not_subscribed_at: life.as_ref().and_then(|l| l.not_subscribed_at_ms).map(timestamp),
        history: life.map(|l| l.history.iter().map(status_change).collect()).unwrap_or_default(),
        buckets_moved: moved,
    })
}

#[tonic::async_trait]
impl CustomersApi for CustomersService {
    async fn put(&self, request: Request<v1::PutCustomerRequest>) -> Result<Response<v1::CustomerInfo>, Status> {
        let r = request.into_inner();
        let identity = match r.identity {
            Some(v1::put_customer_request::Identity::AwsAccount(a)) => {
                Identity::Aws { account_id: a.customer_aws_account_id, license_arn: a.license_arn }
            }
            Some(v1::put_customer_request::Identity::Legacy(l)) => {
                Identity::Legacy { customer_identifier: l.customer_identifier }
            }
            None => return Err(Status::invalid_argument("identity: is required (aws_account or legacy)")),
        };
        let (m, moved) =
            self.customers.put(&r.tenant_id, &r.product, identity, Some(r.agreement_id)).await.map_err(status)?;
        Ok(Response::new(info(&self.customers, &m, moved)?))
    }

    async fn get(&self, request: Request<v1::GetCustomerRequest>) -> Result<Response<v1::CustomerInfo>, Status> {
        let t = request.into_inner().tenant_id;
        let m = self
            .customers
            .store()
            .mapping(&t)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("tenant_id: {} has no mapping", echo(&t))))?;
        Ok(Response::new(info(&self.customers, &m, 0)?))
    }

    async fn list(&self, _: Request<v1::ListCustomersRequest>) -> Result<Response<v1::ListCustomersResponse>, Status> {
        let all = self.customers.store().mappings().map_err(store_status)?;
        let customers = all.iter().map(|m| info(&self.customers, m, 0)).collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ListCustomersResponse { customers }))
    }

    async fn remove(
        &self,
        request: Request<v1::RemoveCustomerRequest>,
    ) -> Result<Response<v1::RemoveCustomerResponse>, Status> {
        let t = request.into_inner().tenant_id;
        let removed = self.customers.store().remove_mapping(t.clone()).await.map_err(store_status)?;
        Ok(Response::new(v1::RemoveCustomerResponse { removed }))
    }

    async fn resolve(
        &self,
        request: Request<v1::ResolveCustomerRequest>,
    ) -> Result<Response<v1::CustomerInfo>, Status> {
        let r = request.into_inner();
        let (m, moved) =
            self.customers.resolve(&r.registration_token, &r.tenant_id, &r.product).await.map_err(status)?;
        Ok(Response::new(info(&self.customers, &m, moved)?))
    }

    async fn apply_event(
        &self,
        request: Request<v1::ApplyEventRequest>,
    ) -> Result<Response<v1::ApplyEventResponse>, Status> {
        let crate::customers::EventResult { event: ev, outcome: out, unconfirmed } =
            self.customers.apply_event(&request.into_inner().event_json).await.map_err(status)?;
        let summary = if let Some(why) = unconfirmed {
            format!("{}: not applied, AWS did not confirm it: {why}", ev.source_type)
        } else if out.unknown_agreement {
            format!("{}: agreement not known to meterd; nothing changed", ev.source_type)
        } else if out.applied {
            format!("{}: customer is now {}", ev.source_type, out.status.as_ref().map_or("?", |s| s.name()))
        } else {
            format!("{}: already applied or superseded; nothing changed", ev.source_type)
        };
        Ok(Response::new(v1::ApplyEventResponse {
            applied: out.applied,
            status: out.status.as_ref().map_or("", |s| s.name()).to_string(),
            records_sealed: out.records_sealed,
            summary,
        }))
    }

    async fn reinstate(
        &self,
        request: Request<v1::ReinstateCustomerRequest>,
    ) -> Result<Response<v1::ReinstateCustomerResponse>, Status> {
        let r = request.into_inner();
        let out = self.customers.reinstate(&r.customer, &r.operator, &r.reason).await.map_err(status)?;
        let since = out
            .refused_since_ms
            .map(|ms| chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339()));
        let summary = format!(
            "{} is active again (was {}). Usage sent for it since {} was refused (FAILED_PRECONDITION) and is not in \
             meterd: resend it with its original idempotency keys and timestamps if it should be billed (hours older \
             than the submission window can no longer be billed).",
            r.customer.trim(),
            out.previous.name(),
            since.as_deref().unwrap_or("then"),
        );
        Ok(Response::new(v1::ReinstateCustomerResponse {
            previous_status: out.previous.name().to_string(),
            refused_since: out.refused_since_ms.map(timestamp),
            summary,
            history: out.lifecycle.history.iter().map(status_change).collect(),
        }))
    }
}
