//! The customer registry as the agent uses it: mapping tenants, resolving registration tokens with AWS, and
//! applying lifecycle events. Transport-free; `server/customers.rs` only converts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_marketplacemetering::Client;
use aws_sdk_marketplacemetering::error::ProvideErrorMetadata;

use crate::clock::SharedClock;
use crate::config::{Config, IdentityMode};
use crate::domain::customer::TenantMapping;
use crate::domain::echo::echo;
use crate::domain::event::Identity;
use crate::domain::lifecycle;
use crate::domain::validate::{is_license_arn, valid_id};
use crate::pipeline::Pipeline;
use crate::store::{LifecycleOutcome, SealParams, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CustomerError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The registration token expired (or was already used): the buyer must start the sign-up again.
    #[error("{0}")]
    TokenExpired(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &str, message: impl Into<String>) -> CustomerError {
    CustomerError::Invalid { field: field.to_string(), message: message.into() }
}

#[derive(Clone)]
pub struct Customers {
    config: Arc<Config>,
    store: Store,
    clock: SharedClock,
    pipeline: Pipeline,
    /// One ResolveCustomer client per account (it must be the account that published the product).
    clients: Arc<BTreeMap<String, Client>>,
}

impl Customers {
    pub async fn new(
        config: Arc<Config>,
        store: Store,
        clock: SharedClock,
        pipeline: Pipeline,
    ) -> anyhow::Result<Self> {
        let mut clients = BTreeMap::new();
        for (name, acct) in &config.accounts {
            clients.insert(name.clone(), crate::submit::aws::client(acct, clock.clone(), Arc::default()).await?);
        }
        Ok(Self { config, store, clock, pipeline, clients: Arc::new(clients) })
    }

    fn product<'a>(&'a self, product: &'a str) -> Result<(&'a str, &'a crate::config::ProductConfig), CustomerError> {
        let name = if product.is_empty() {
            self.config
                .default_product()
                .ok_or_else(|| invalid("product", "is required: several products are configured"))?
        } else {
            product
        };
        let p = self
            .config
            .products
            .get(name)
            .ok_or_else(|| invalid("product", format!("{} is not a configured product", echo(name))))?;
        Ok((name, p))
    }

    /// Validates and stores a mapping; returns it with the number of open buckets moved to the identity.
    pub async fn put(
        &self,
        tenant_id: &str,
        product: &str,
        identity: Identity,
        agreement_id: Option<String>,
    ) -> Result<(TenantMapping, u64), CustomerError> {
        valid_id(tenant_id).map_err(|m| invalid("tenant_id", m))?;
        let (name, p) = self.product(product)?;
        match (&identity, p.identity) {
            (Identity::Aws { account_id, license_arn }, IdentityMode::License) => {
                if account_id.is_empty() || !account_id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid("aws_account.customer_aws_account_id", "must be digits (an AWS account id)"));
                }
                if !is_license_arn(license_arn) {
                    return Err(invalid(
                        "aws_account.license_arn",
                        format!("{} is not a license ARN", echo(license_arn)),
                    ));
                }
            }
            (Identity::Legacy { customer_identifier }, IdentityMode::Legacy) => {
                valid_id(customer_identifier).map_err(|m| invalid("legacy.customer_identifier", m))?;
            }
            (Identity::Tenant(_), _) => return Err(invalid("identity", "is required (aws_account or legacy)")),
            (_, mode) => {
                return Err(invalid("identity", format!("product {name:?} uses {} identity", mode.as_str())));
            }
        }
        let mapping = TenantMapping {
            tenant_id: tenant_id.to_string(),
            product: name.to_string(),
            identity,
            agreement_id: agreement_id.filter(|a| !a.is_empty()),
            updated_at_ms: self.clock.now_ms(),
        };
        let moved = self.store.put_mapping(mapping.clone(), self.clock.now_ms()).await?;
        tracing::info!(tenant = %tenant_id, identity = %mapping.identity.label(), moved, "tenant mapped");
        // Held records of this tenant can go out now.
        self.pipeline.nudge();
        Ok((mapping, moved))
    }

    /// Resolves a registration token with AWS and maps `tenant_id` to the answer.
    pub async fn resolve(
        &self,
        token: &str,
        tenant_id: &str,
        product: &str,
    ) -> Result<(TenantMapping, u64), CustomerError> {
        valid_id(tenant_id).map_err(|m| invalid("tenant_id", m))?;
        let (name, identity, agreement) = self.resolve_identity(token, product).await?;
        self.put(tenant_id, &name, identity, agreement).await
    }

    /// For the fulfillment page: resolves the token and maps it under a tenant id derived from the identity
    /// (`mp-` + 16 hex digits of its SHA-256), stable if the buyer lands twice.
    pub async fn resolve_new_tenant(&self, token: &str, product: &str) -> Result<(TenantMapping, u64), CustomerError> {
        use sha2::{Digest, Sha256};
        let (name, identity, agreement) = self.resolve_identity(token, product).await?;
        let digest = Sha256::digest(identity.label().as_bytes());
        let tenant_id = format!("mp-{}", digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>());
        self.put(&tenant_id, &name, identity, agreement).await
    }

    async fn resolve_identity(
        &self,
        token: &str,
        product: &str,
    ) -> Result<(String, Identity, Option<String>), CustomerError> {
        if token.is_empty() {
            return Err(invalid("registration_token", "is required"));
        }
        let (name, p) = self.product(product)?;
        let account = self
            .config
            .account_of(name)
            .ok_or_else(|| invalid("product", format!("product {name:?} has no [accounts] entry to call AWS with")))?;
        let client = &self.clients[account];
        let mut attempt = 0u32;
        let out = loop {
            match client.resolve_customer().registration_token(token).send().await {
                Ok(out) => break out,
                Err(e) => {
                    let code = e.code().unwrap_or("").to_string();
                    let message = e.message().unwrap_or("").to_string();
                    match code.as_str() {
                        "InvalidTokenException" => {
                            return Err(invalid("registration_token", format!("AWS: {message}")));
                        }
                        "ExpiredTokenException" => {
                            return Err(CustomerError::TokenExpired(format!(
                                "registration_token: AWS says it expired ({message}); the buyer must start the sign-up again"
                            )));
                        }
                        _ if attempt < 4 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                        _ => {
                            return Err(CustomerError::Unavailable(format!(
                                "ResolveCustomer failed after {attempt} retries: {}",
                                aws_smithy_types::error::display::DisplayErrorContext(&e)
                            )));
                        }
                    }
                }
            }
        };
        if let (Some(code), Some(expected)) = (out.product_code(), &p.product_code)
            && code != expected
        {
            return Err(invalid(
                "registration_token",
                format!("the token is for product code {code:?}, but product {name:?} is {expected:?}"),
            ));
        }
        let identity = match (out.customer_aws_account_id(), out.license_arn(), out.customer_identifier()) {
            (Some(a), Some(l), _) if p.identity == IdentityMode::License => {
                Identity::Aws { account_id: a.to_string(), license_arn: l.to_string() }
            }
            (_, _, Some(c)) if p.identity == IdentityMode::Legacy && !c.is_empty() => {
                Identity::Legacy { customer_identifier: c.to_string() }
            }
            _ => {
                return Err(CustomerError::Unavailable(format!(
                    "ResolveCustomer answered without the identity product {name:?} ({} identity) needs",
                    p.identity.as_str()
                )));
            }
        };
        let agreement = out.metadata().and_then(|m| m.agreement_id()).map(str::to_string);
        Ok((name.to_string(), identity, agreement))
    }

    /// Applies a lifecycle event document; a leaving customer's final hour is sealed and sent first.
    pub async fn apply_event(
        &self,
        json: &str,
    ) -> Result<(lifecycle::LifecycleEvent, LifecycleOutcome), CustomerError> {
        let ev = lifecycle::parse(json).map_err(|e| invalid(&format!("event_json.{}", e.field), e.message))?;
        let p = &self.config.pipeline;
        let params = SealParams {
            cutoff_hour_ms: 0,
            now_ms: self.clock.now_ms(),
            window_ms: p.submission_window.as_millis() as i64,
            margin_ms: p.safety_margin.as_millis() as i64,
            zero_records: p.zero_records,
        };
        let outcome = self.store.apply_lifecycle(ev.clone(), params).await?;
        if outcome.records_sealed > 0 {
            self.pipeline.nudge();
        }
        tracing::info!(kind = ?ev.kind, subject = ?ev.subject, applied = outcome.applied,
            records_sealed = outcome.records_sealed, "lifecycle event");
        Ok((ev, outcome))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}
