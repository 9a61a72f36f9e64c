//! The meterd client SDK: the one implementation of connection reuse, timeouts, retries that reuse the
//! idempotency key, key generation and batching. The Python and Node packages wrap it and only convert.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meterd_proto::sdk::Error> {
//! use meterd_proto::sdk::{Client, ClientOptions, Usage};
//! let client = Client::new("127.0.0.1:7171", ClientOptions::default())?;
//! let receipt = client.record_usage(Usage::new("tenant-42", "api_calls", 1u32)).await?;
//! println!("stored under {}", receipt.idempotency_key);
//! # Ok(()) }
//! ```

mod customers;
mod error;
mod report;
mod retry;
mod shared_batch;
mod usage;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use customers::{CustomerInfo, EventOutcome, Reinstated, StatusChange};
pub use error::Error;
pub use report::{ReportItem, ReportQuery, ReportStream};
pub use retry::RetryPolicy;
pub use usage::{Customer, Quantity, Receipt, Usage, from_timestamp, new_idempotency_key, to_timestamp};

use crate::v1;

/// How a [`Client`] behaves. `Default` suits a product calling a local agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// The whole budget of one call, retries included: no call blocks its caller longer than this.
    pub timeout: Duration,
    /// Time allowed to open a connection (each attempt).
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// Product for events that name none (the agent's `default_product` applies after this).
    pub default_product: Option<String>,
    /// `record_usage_batch` sends at most this many events per request (the agent's `ingest.max_batch_events`
    /// defaults to 10,000); a larger batch is split and the results are joined in order.
    pub max_batch_events: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            default_product: None,
            max_batch_events: 10_000,
        }
    }
}

/// A client of one meterd agent. Cheap to clone; clones share one HTTP/2 connection, which is opened on the
/// first call and reopened after it breaks. Safe to use from many tasks at once.
#[derive(Clone, Debug)]
pub struct Client {
    conn: crate::client::Client,
    target: String,
    options: ClientOptions,
}

impl Client {
    /// A client for `target` (`host:port`, `http://host:port` or `unix:/path/to/meterd.sock`). Does no I/O: an
    /// agent that is not running yet fails calls (after retries), not construction. Must be called inside a tokio
    /// runtime.
    pub fn new(target: &str, options: ClientOptions) -> Result<Self, Error> {
        let conn = crate::client::Client::connect_lazy(target, options.connect_timeout)
            .map_err(|e| Error::InvalidTarget { message: e.to_string() })?;
        Ok(Self { conn, target: target.to_string(), options })
    }

    /// Like [`Client::new`], then checks that the agent answers (`Admin.Status`, with retries).
    pub async fn connect(target: &str, options: ClientOptions) -> Result<Self, Error> {
        let client = Self::new(target, options)?;
        client.status().await?;
        Ok(client)
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Records one event; returns once the agent has it on disk. Without an idempotency key one is generated
    /// here, once, and every retry of this call reuses it.
    pub async fn record_usage(&self, usage: Usage) -> Result<Receipt, Error> {
        self.record_event(usage.to_wire(self.options.default_product.as_deref())).await
    }

    /// Records one already-built wire event (with its key), retrying like [`Client::record_usage`].
    pub async fn record_event(&self, event: v1::UsageEvent) -> Result<Receipt, Error> {
        let request = v1::RecordUsageRequest { event: Some(event) };
        let response = self
            .call(|| {
                let mut m = self.conn.metering();
                let req = tonic::Request::new(request.clone());
                async move { m.record_usage(req).await }
            })
            .await?;
        let receipt = response.receipt.ok_or_else(|| Error::Agent {
            grpc_code: tonic::Code::Internal as i32,
            message: "the agent replied without a receipt".into(),
        })?;
        Ok(Receipt::from_wire(receipt))
    }

    /// Records many events with one durable write per request. Returns one result per event, in order: a
    /// [`Receipt`], or the [`Error`] that refused that event (the others are stored regardless). Fails as a whole
    /// only when the batch cannot be delivered (agent unavailable, timeout) or is unusable (empty).
    pub async fn record_usage_batch(&self, usages: &[Usage]) -> Result<Vec<Result<Receipt, Error>>, Error> {
        let default_product = self.options.default_product.as_deref();
        let mut keys =
            usage::new_idempotency_keys(usages.iter().filter(|u| u.idempotency_key.is_none()).count()).into_iter();
        let events: Vec<v1::UsageEvent> = usages
            .iter()
            .map(|u| u.to_wire_with_key(default_product, || keys.next().unwrap_or_else(new_idempotency_key)))
            .collect();
        self.record_events(events).await
    }

    /// [`Client::record_usage_batch`] for already-built wire events.
    pub async fn record_events(&self, events: Vec<v1::UsageEvent>) -> Result<Vec<Result<Receipt, Error>>, Error> {
        if events.is_empty() {
            return Err(Error::InvalidUsage {
                field: "events".into(),
                message: "events: at least one event is required".into(),
            });
        }
        let mut results = Vec::with_capacity(events.len());
        let chunk = self.options.max_batch_events.max(1);
        let mut events = events;
        while !events.is_empty() {
            let rest = events.split_off(chunk.min(events.len()));
            let expected = events.len();
            let request = Arc::new(v1::RecordUsageBatchRequest { events });
            let response = self.call(|| shared_batch::record_usage_batch(self.conn.channel(), request.clone())).await?;
            if response.results.len() != expected {
                return Err(Error::Agent {
                    grpc_code: tonic::Code::Internal as i32,
                    message: format!("the agent returned {} results for {expected} events", response.results.len()),
                });
            }
            results.extend(response.results.into_iter().map(|r| match r.outcome {
                Some(v1::event_result::Outcome::Receipt(r)) => Ok(Receipt::from_wire(r)),
                Some(v1::event_result::Outcome::Error(e)) => Err(Error::from_event_error(e)),
                None => Err(Error::Agent {
                    grpc_code: tonic::Code::Internal as i32,
                    message: "the agent returned an empty result".into(),
                }),
            }));
            events = rest;
        }
        Ok(results)
    }

    /// A snapshot of the agent (`Admin.Status`).
    pub async fn status(&self) -> Result<v1::StatusResponse, Error> {
        self.call(|| {
            let mut a = self.conn.admin();
            let req = tonic::Request::new(v1::StatusRequest {});
            async move { a.status(req).await }
        })
        .await
    }

    /// Seals every ended hour now and wakes the submitters (`Admin.Flush`).
    pub async fn flush(&self) -> Result<v1::FlushResponse, Error> {
        self.call(|| {
            let mut a = self.conn.admin();
            let req = tonic::Request::new(v1::FlushRequest {});
            async move { a.flush(req).await }
        })
        .await
    }

    /// Where every recorded unit went, per hour x customer x dimension (`Admin.Report`), in one reply: for small
    /// ledgers. Past what one reply can carry the agent refuses (RESOURCE_EXHAUSTED); use
    /// [`Client::report_stream`].
    pub async fn report(&self) -> Result<v1::ReportResponse, Error> {
        self.call(|| {
            let mut a = self.conn.admin();
            let req = tonic::Request::new(v1::ReportRequest {});
            async move { a.report(req).await }
        })
        .await
    }

    /// Creates or replaces `tenant_id`'s mapping to `customer` ([`Customer::Aws`] or [`Customer::Legacy`]; a
    /// tenant id is refused with [`Error::InvalidUsage`]). Open usage held under the tenant id moves to the
    /// identity ([`CustomerInfo::buckets_moved`]). `product` defaults to the client's default product, then the
    /// agent's.
    pub async fn put_customer(
        &self,
        tenant_id: &str,
        customer: Customer,
        product: Option<&str>,
        agreement_id: Option<&str>,
    ) -> Result<CustomerInfo, Error> {
        let request = v1::PutCustomerRequest {
            tenant_id: tenant_id.to_string(),
            product: self.product_or_default(product),
            identity: Some(customers::put_identity(customer)?),
            agreement_id: agreement_id.unwrap_or_default().to_string(),
        };
        let info = self
            .call(|| {
                let mut c = self.conn.customers();
                let req = tonic::Request::new(request.clone());
                async move { c.put(req).await }
            })
            .await?;
        Ok(CustomerInfo::from_wire(info))
    }

    /// `tenant_id`'s mapping and lifecycle; [`Error::NotFound`] when the tenant has none.
    pub async fn get_customer(&self, tenant_id: &str) -> Result<CustomerInfo, Error> {
        let request = v1::GetCustomerRequest { tenant_id: tenant_id.to_string() };
        let info = self
            .call(|| {
                let mut c = self.conn.customers();
                let req = tonic::Request::new(request.clone());
                async move { c.get(req).await }
            })
            .await?;
        Ok(CustomerInfo::from_wire(info))
    }

    /// Every tenant mapping.
    pub async fn list_customers(&self) -> Result<Vec<CustomerInfo>, Error> {
        let response = self
            .call(|| {
                let mut c = self.conn.customers();
                let req = tonic::Request::new(v1::ListCustomersRequest {});
                async move { c.list(req).await }
            })
            .await?;
        Ok(response.customers.into_iter().map(CustomerInfo::from_wire).collect())
    }

    /// Removes `tenant_id`'s mapping (the identity's history is kept); false when there was none. Later usage by
    /// the tenant id is held again.
    pub async fn remove_customer(&self, tenant_id: &str) -> Result<bool, Error> {
        let request = v1::RemoveCustomerRequest { tenant_id: tenant_id.to_string() };
        let response = self
            .call(|| {
                let mut c = self.conn.customers();
                let req = tonic::Request::new(request.clone());
                async move { c.remove(req).await }
            })
            .await?;
        Ok(response.removed)
    }

    /// Resolves a registration token (the `x-amzn-marketplace-token` the buyer's browser posts) with AWS
    /// ResolveCustomer and stores the mapping for `tenant_id`. An invalid token is [`Error::InvalidUsage`], an
    /// expired one a FAILED_PRECONDITION refusal ([`Error::UsageRefused`]: the buyer must start again).
    pub async fn resolve_customer(
        &self,
        registration_token: &str,
        tenant_id: &str,
        product: Option<&str>,
    ) -> Result<CustomerInfo, Error> {
        let request = v1::ResolveCustomerRequest {
            registration_token: registration_token.to_string(),
            tenant_id: tenant_id.to_string(),
            product: self.product_or_default(product),
        };
        let info = self
            .call(|| {
                let mut c = self.conn.customers();
                let req = tonic::Request::new(request.clone());
                async move { c.resolve(req).await }
            })
            .await?;
        Ok(CustomerInfo::from_wire(info))
    }

    /// Applies one lifecycle event given as its JSON document (EventBridge `aws.agreement-marketplace` event, SNS
    /// envelope or SNS message). Idempotent: a duplicate returns `applied == false`.
    pub async fn apply_event(&self, event_json: &str) -> Result<EventOutcome, Error> {
        let request = v1::ApplyEventRequest { event_json: event_json.to_string() };
        let response = self
            .call(|| {
                let mut c = self.conn.customers();
                let req = tonic::Request::new(request.clone());
                async move { c.apply_event(req).await }
            })
            .await?;
        Ok(EventOutcome::from_wire(response))
    }

    /// Moves a customer (tenant id, license ARN or legacy customer identifier) back to active, audited with
    /// `operator` and `reason`. Usage sent while it was not active was refused; resend it if it should be billed.
    pub async fn reinstate_customer(&self, customer: &str, operator: &str, reason: &str) -> Result<Reinstated, Error> {
        let request = v1::ReinstateCustomerRequest {
            customer: customer.to_string(),
            operator: operator.to_string(),
            reason: reason.to_string(),
        };
        let response = self
            .call(|| {
                let mut c = self.conn.customers();
                let req = tonic::Request::new(request.clone());
                async move { c.reinstate(req).await }
            })
            .await?;
        Ok(Reinstated::from_wire(response))
    }

    fn product_or_default(&self, product: Option<&str>) -> String {
        product.or(self.options.default_product.as_deref()).unwrap_or_default().to_string()
    }

    /// Runs one attempt after another until one succeeds, fails for good, the attempts run out, or the next pause
    /// would end past the call's timeout (which bounds every attempt too: the client stops waiting, the agent does
    /// not need to know).
    async fn call<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = self.options.timeout;
        let deadline = Instant::now() + timeout;
        let policy = &self.options.retry;
        let mut n = 0u32;
        loop {
            n += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(left, attempt()).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if error::is_retryable_status(&status) => Error::from_status(&status, &self.target),
                Ok(Err(status)) => return Err(Error::from_status(&status, &self.target)),
                Err(_) => Error::Timeout {
                    message: format!("no reply from meterd at {} within {timeout:?} ({n} attempt(s))", self.target),
                },
            };
            let pause = policy.backoff(n);
            if n >= policy.max_attempts.max(1) || Instant::now() + pause >= deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
        }
    }
}
