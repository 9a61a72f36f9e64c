//! The customer registry as the agent uses it: mapping tenants, resolving registration tokens with AWS, and
//! applying lifecycle events. Transport-free; `server/customers.rs` only converts.

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::{Config, IdentityMode};
use crate::domain::customer::{CustomerStatus, StatusChange, TenantMapping};
use crate::domain::echo::echo;
use crate::domain::event::Identity;
use crate::domain::lifecycle;
use crate::domain::validate::{is_license_arn, valid_id};
use crate::pipeline::Pipeline;
use crate::store::{Ledger, LifecycleOutcome, StoreError};
use crate::submit::registration::{Agreement, RegistrationClients, ResolveError};

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
    store: Arc<dyn Ledger>,
    clock: SharedClock,
    pipeline: Pipeline,
    /// ResolveCustomer (with the account that published the product) and DescribeAgreement (to confirm
    /// end-of-subscription events), per account.
    aws: Arc<RegistrationClients>,
    /// End-of-subscription events AWS did not confirm (not applied), by reason.
    unconfirmed: Arc<Unconfirmed>,
}

/// Lifecycle events AWS did not confirm, by reason: the registry's own metric.
#[derive(Default)]
pub struct Unconfirmed(crate::metrics::CounterVec<String>);

impl crate::metrics::Collect for Unconfirmed {
    fn collect(&self, out: &mut crate::metrics::Encoder) -> Result<(), String> {
        let name = "meterd_lifecycle_events_unconfirmed_total";
        out.family(name, "counter", "End-of-subscription events AWS did not confirm, so not applied, by reason.");
        for (reason, n) in self.0.snapshot() {
            out.sample(name, &[("reason", &reason)], n);
        }
        Ok(())
    }
}

/// What applying a lifecycle event did; `unconfirmed` says why it was not applied when AWS did not confirm it.
#[derive(Debug)]
pub struct EventResult {
    pub event: lifecycle::LifecycleEvent,
    pub outcome: LifecycleOutcome,
    pub unconfirmed: Option<String>,
}

/// What reinstating a customer did.
#[derive(Debug)]
pub struct Reinstated {
    pub previous: CustomerStatus,
    pub lifecycle: crate::domain::customer::CustomerLifecycle,
    /// Since when usage for this customer was refused (the previous status's start).
    pub refused_since_ms: Option<i64>,
}

impl Customers {
    pub async fn new(
        config: Arc<Config>,
        store: Arc<dyn Ledger>,
        clock: SharedClock,
        pipeline: Pipeline,
        registry: &crate::metrics::Registry,
    ) -> anyhow::Result<Self> {
        let aws = Arc::new(RegistrationClients::for_accounts(&config, clock.clone()).await?);
        Ok(Self {
            config,
            store,
            clock,
            pipeline,
            aws,
            unconfirmed: {
                let u = Arc::new(Unconfirmed::default());
                registry.register(u.clone());
                u
            },
        })
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
        let out = self.aws.resolve_customer(account, token).await.map_err(|e| match e {
            ResolveError::InvalidToken(message) => invalid("registration_token", format!("AWS: {message}")),
            ResolveError::Expired(message) => CustomerError::TokenExpired(format!(
                "registration_token: AWS says it expired ({message}); the buyer must start the sign-up again"
            )),
            ResolveError::Unavailable(message) => CustomerError::Unavailable(message),
        })?;
        if let (Some(code), Some(expected)) = (&out.product_code, &p.product_code)
            && code != expected
        {
            return Err(invalid(
                "registration_token",
                format!("the token is for product code {code:?}, but product {name:?} is {expected:?}"),
            ));
        }
        let identity = match (
            out.customer_aws_account_id.as_deref(),
            out.license_arn.as_deref(),
            out.customer_identifier.as_deref(),
        ) {
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
        Ok((name.to_string(), identity, out.agreement_id))
    }

    /// Applies a lifecycle event document; a leaving customer's final hour is sealed and sent first. An event
    /// that would stop usage and names an agreement is first confirmed with AWS (DescribeAgreement): if AWS does
    /// not confirm it, it is recorded in the customer's history, counted, and not applied.
    pub async fn apply_event(&self, json: &str) -> Result<EventResult, CustomerError> {
        let ev = lifecycle::parse(json).map_err(|e| invalid(&format!("event_json.{}", e.field), e.message))?;
        if ev.kind != lifecycle::LifecycleKind::Active
            && let Some((reason, message)) = self.confirm_end(&ev).await?
        {
            self.unconfirmed.0.add(reason.to_string(), 1);
            tracing::warn!(kind = ?ev.kind, subject = ?ev.subject, event_id = ?ev.event_id, reason, %message,
                "lifecycle event not confirmed by AWS; not applied");
            let status = match ev.kind {
                lifecycle::LifecycleKind::Deprovisioning => {
                    CustomerStatus::Deprovisioning { since_ms: self.clock.now_ms() }
                }
                _ => CustomerStatus::Ended { since_ms: self.clock.now_ms(), reason: ev.source_type.clone() },
            };
            // No event id on the entry: a redelivery after AWS has caught up must not look like a duplicate.
            let entry = StatusChange {
                at_ms: self.clock.now_ms(),
                status,
                source: format!(
                    "{} (event {}): not applied, not confirmed by AWS: {message}",
                    ev.source_type,
                    ev.event_id.as_deref().unwrap_or("without id")
                ),
                event_id: None,
                applied: false,
            };
            let amended = self.store.amend_lifecycle(ev.subject.clone(), entry, false).await?;
            let outcome = LifecycleOutcome {
                applied: false,
                status: amended.as_ref().map(|a| a.lifecycle.status.clone()),
                records_sealed: 0,
                unknown_agreement: amended.is_none() && matches!(ev.subject, lifecycle::Subject::Agreement { .. }),
            };
            return Ok(EventResult { event: ev, outcome, unconfirmed: Some(message) });
        }
        let params = self.pipeline.final_hour_params();
        let outcome = self.store.apply_lifecycle(ev.clone(), params).await?;
        if outcome.records_sealed > 0 {
            self.pipeline.nudge();
        }
        tracing::info!(kind = ?ev.kind, subject = ?ev.subject, applied = outcome.applied,
            records_sealed = outcome.records_sealed, "lifecycle event");
        Ok(EventResult { event: ev, outcome, unconfirmed: None })
    }

    /// Asks AWS whether the agreement of an end-of-subscription event really is no longer active. None: confirmed,
    /// or nothing to ask (legacy SNS messages and license events without an agreement id have no API: their
    /// signature is the guard). Some((metric reason, message)): AWS did not confirm it. Transient failures are
    /// errors (UNAVAILABLE / 503), so the sender retries.
    async fn confirm_end(
        &self,
        ev: &lifecycle::LifecycleEvent,
    ) -> Result<Option<(&'static str, String)>, CustomerError> {
        let Some(agreement) = ev.agreement_id.as_deref() else { return Ok(None) };
        let account = ev
            .product_code
            .as_deref()
            .and_then(|code| self.config.products.iter().find(|(_, p)| p.product_code.as_deref() == Some(code)))
            .and_then(|(name, _)| self.config.account_of(name))
            .or_else(|| self.config.accounts.keys().next().map(String::as_str));
        let Some(answer) = account.and_then(|a| self.aws.has_account(a).then_some(a)) else {
            return Ok(Some(("no_account", "no [accounts] entry to call DescribeAgreement with".into())));
        };
        let answer = self.aws.describe_agreement(answer, agreement).await.unwrap_or_else(|| Err("no client".into()));
        match answer {
            Ok(Agreement::Status(status)) => {
                if status == "ACTIVE" || status.is_empty() {
                    Ok(Some((
                        "agreement_active",
                        format!(
                            "DescribeAgreement says agreement {agreement} is {}",
                            if status.is_empty() { "without status" } else { "ACTIVE" }
                        ),
                    )))
                } else {
                    tracing::info!(agreement, status = %status, "AWS confirms the agreement is no longer active");
                    Ok(None)
                }
            }
            Ok(Agreement::NotFound(message)) => Ok(Some((
                "agreement_not_found",
                format!("DescribeAgreement does not know agreement {agreement}: {message}"),
            ))),
            Ok(Agreement::AccessDenied(message)) => Ok(Some((
                "access_denied",
                format!("DescribeAgreement refused ({message}): grant aws-marketplace:DescribeAgreement"),
            ))),
            Ok(Agreement::Invalid(message)) => Ok(Some((
                "agreement_invalid",
                format!("DescribeAgreement refused agreement id {agreement:?}: {message}"),
            ))),
            Err(e) => {
                Err(CustomerError::Unavailable(format!("cannot confirm the event with AWS (DescribeAgreement): {e}")))
            }
        }
    }

    /// Moves a customer named by tenant id, license ARN or legacy customer identifier back to Active after an
    /// end-of-subscription that should not have happened; the history records who, when and why.
    pub async fn reinstate(&self, customer: &str, operator: &str, reason: &str) -> Result<Reinstated, CustomerError> {
        let customer = customer.trim();
        if customer.is_empty() {
            return Err(invalid("customer", "is required (tenant id, license ARN or customer identifier)"));
        }
        for (field, v, max) in [("operator", operator, 128), ("reason", reason, 500)] {
            if v.trim().is_empty() {
                return Err(invalid(field, "is required"));
            }
            if v.chars().count() > max || v.chars().any(char::is_control) {
                return Err(invalid(field, format!("must be at most {max} characters without control characters")));
            }
        }
        let subject = if let Some(arn) = lifecycle::normalize_license_arn(customer) {
            lifecycle::Subject::License { license_arn: arn, account_id: None }
        } else if let Some(m) = self.store.mapping(customer)? {
            match m.identity {
                Identity::Aws { license_arn, .. } => lifecycle::Subject::License { license_arn, account_id: None },
                Identity::Legacy { customer_identifier } => {
                    lifecycle::Subject::Legacy { customer_identifier, product_code: String::new() }
                }
                Identity::Tenant(_) | Identity::Deployment => {
                    return Err(CustomerError::NotFound(format!("{customer:?} has no marketplace identity")));
                }
            }
        } else {
            lifecycle::Subject::Legacy { customer_identifier: customer.to_string(), product_code: String::new() }
        };
        let entry = StatusChange {
            at_ms: self.clock.now_ms(),
            status: CustomerStatus::Active,
            source: format!("reinstated by {}: {}", operator.trim(), reason.trim()),
            event_id: None,
            applied: true,
        };
        let out = self.store.amend_lifecycle(subject, entry, true).await?.ok_or_else(|| {
            CustomerError::NotFound(format!(
                "customer: {customer:?} is not a known tenant, license ARN or customer identifier with a lifecycle"
            ))
        })?;
        if !out.changed {
            return Err(invalid("customer", format!("{customer:?} is already active; nothing to reinstate")));
        }
        let refused_since_ms = match &out.previous {
            CustomerStatus::Active => None,
            CustomerStatus::Deprovisioning { since_ms } | CustomerStatus::Ended { since_ms, .. } => Some(*since_ms),
        };
        tracing::warn!(customer, operator, reason, previous = out.previous.name(), "customer reinstated");
        Ok(Reinstated { previous: out.previous, lifecycle: out.lifecycle, refused_since_ms })
    }

    pub fn store(&self) -> &dyn Ledger {
        self.store.as_ref()
    }
}
