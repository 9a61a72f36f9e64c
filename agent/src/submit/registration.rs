//! The AWS calls the customer registry makes — ResolveCustomer (a buyer's registration token → its identity) and
//! DescribeAgreement (is an agreement really no longer active?) — so that, like every other AWS call, they live
//! under `submit/`. They answer in plain types; `customers.rs` decides what each answer means for a caller.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_marketplacemetering::error::ProvideErrorMetadata;

use crate::clock::SharedClock;
use crate::config::Config;

/// What ResolveCustomer answered (every field as AWS sent it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub product_code: Option<String>,
    pub customer_aws_account_id: Option<String>,
    pub license_arn: Option<String>,
    pub customer_identifier: Option<String>,
    pub agreement_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// InvalidTokenException: AWS's message.
    InvalidToken(String),
    /// ExpiredTokenException (or a token already used): AWS's message.
    Expired(String),
    /// Still failing after the retries.
    Unavailable(String),
}

/// What DescribeAgreement answered about one agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agreement {
    /// The agreement's status ("ACTIVE", "TERMINATED", …; empty when AWS sent none).
    Status(String),
    NotFound(String),
    AccessDenied(String),
    Invalid(String),
}

/// One ResolveCustomer client and one DescribeAgreement client per configured account.
pub struct RegistrationClients {
    resolve: BTreeMap<String, aws_sdk_marketplacemetering::Client>,
    agreements: BTreeMap<String, aws_sdk_marketplaceagreement::Client>,
}

impl RegistrationClients {
    pub async fn for_accounts(config: &Config, clock: SharedClock) -> anyhow::Result<Self> {
        let mut resolve = BTreeMap::new();
        let mut agreements = BTreeMap::new();
        for (name, acct) in &config.accounts {
            resolve.insert(name.clone(), super::aws::client(acct, clock.clone(), Default::default()).await?);
            agreements.insert(name.clone(), super::aws::agreement_client(acct).await?);
        }
        Ok(Self { resolve, agreements })
    }

    pub fn has_account(&self, account: &str) -> bool {
        self.resolve.contains_key(account)
    }

    /// ResolveCustomer with `account`'s client, retried (4 times, backing off) while the failure is transient.
    pub async fn resolve_customer(&self, account: &str, token: &str) -> Result<Resolved, ResolveError> {
        let Some(client) = self.resolve.get(account) else {
            return Err(ResolveError::Unavailable(format!("no client for account {account:?}")));
        };
        let mut attempt = 0u32;
        loop {
            match client.resolve_customer().registration_token(token).send().await {
                Ok(out) => {
                    return Ok(Resolved {
                        product_code: out.product_code().map(str::to_string),
                        customer_aws_account_id: out.customer_aws_account_id().map(str::to_string),
                        license_arn: out.license_arn().map(str::to_string),
                        customer_identifier: out.customer_identifier().map(str::to_string),
                        agreement_id: out.metadata().and_then(|m| m.agreement_id()).map(str::to_string),
                    });
                }
                Err(e) => {
                    let message = e.message().unwrap_or("").to_string();
                    match e.code().unwrap_or("") {
                        "InvalidTokenException" => return Err(ResolveError::InvalidToken(message)),
                        "ExpiredTokenException" => return Err(ResolveError::Expired(message)),
                        _ if attempt < 4 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                        _ => {
                            return Err(ResolveError::Unavailable(format!(
                                "ResolveCustomer failed after {attempt} retries: {}",
                                aws_smithy_types::error::display::DisplayErrorContext(&e)
                            )));
                        }
                    }
                }
            }
        }
    }

    /// DescribeAgreement with `account`'s client. None: no such account. Err: a transient failure (the caller
    /// answers UNAVAILABLE so the sender retries).
    pub async fn describe_agreement(&self, account: &str, agreement_id: &str) -> Option<Result<Agreement, String>> {
        let client = self.agreements.get(account)?;
        Some(match client.describe_agreement().agreement_id(agreement_id).send().await {
            Ok(out) => Ok(Agreement::Status(out.status().map(|s| s.as_str().to_string()).unwrap_or_default())),
            Err(e) => {
                let message = e.message().unwrap_or("").to_string();
                match e.code().unwrap_or("") {
                    "ResourceNotFoundException" => Ok(Agreement::NotFound(message)),
                    "AccessDeniedException" => Ok(Agreement::AccessDenied(message)),
                    "ValidationException" => Ok(Agreement::Invalid(message)),
                    _ => Err(aws_smithy_types::error::display::DisplayErrorContext(&e).to_string()),
                }
            }
        })
    }
}
