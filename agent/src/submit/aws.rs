//! The AWS side of submission: building the real `aws-sdk-marketplacemetering` client for an account,
//! turning sealed records into `UsageRecord`s, and classifying what a call returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use aws_config::{AppName, BehaviorVersion, Region};
use aws_sdk_marketplacemetering::Client;
use aws_sdk_marketplacemetering::config::retry::RetryConfig;
use aws_sdk_marketplacemetering::config::timeout::TimeoutConfig;
use aws_sdk_marketplacemetering::config::{Credentials, Intercept, RuntimeComponents};
use aws_sdk_marketplacemetering::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_marketplacemetering::operation::RequestId;
use aws_sdk_marketplacemetering::operation::batch_meter_usage::BatchMeterUsageError;
use aws_sdk_marketplacemetering::operation::meter_usage::MeterUsageError;
use aws_sdk_marketplacemetering::types::{Tag, UsageAllocation, UsageRecord, UsageRecordResultStatus};
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, InterceptorContext,
};
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};
use aws_smithy_types::DateTime;
use aws_smithy_types::config_bag::ConfigBag;

use crate::clock::SharedClock;
use crate::config::AccountConfig;
use crate::domain::event::Identity;
use crate::domain::record::SealedRecord;

/// Request-level exceptions that concern some record of the batch: bisect to find it.
const RECORD_EXCEPTIONS: &[&str] = &[
    "InvalidUsageDimensionException",
    "InvalidTagException",
    "InvalidUsageAllocationsException",
    "InvalidLicenseException",
    "TimestampOutOfBoundsException",
    "InvalidCustomerIdentifierException",
];

/// How far AWS's clock (its `Date` header) is ahead of ours, from the last response.
#[derive(Debug, Default)]
pub struct Skew {
    pub millis: AtomicI64,
    pub observed: std::sync::atomic::AtomicBool,
}

struct SkewInterceptor {
    skew: Arc<Skew>,
    clock: SharedClock,
}

impl std::fmt::Debug for SkewInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkewInterceptor").field("skew", &self.skew).finish()
    }
}

impl Intercept for SkewInterceptor {
    fn name(&self) -> &'static str {
        "meterd-clock-skew"
    }

    fn read_before_deserialization(
        &self,
        ctx: &BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if let Some(date) = ctx.response().headers().get("date")
            && let Ok(t) = chrono::DateTime::parse_from_rfc2822(date)
        {
            // The header has whole seconds: a skew under a second is noise.
            let skew = t.timestamp_millis() - self.clock.now_ms();
            self.skew.millis.store(skew, Ordering::Relaxed);
            self.skew.observed.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Forbids the SDK's own retry of a `ThrottlingException`: the submitter's adaptive pacer must see every
/// throttle (to lower its rate) and space every attempt, which a retry inside the SDK would hide and bypass.
/// Other retryable failures (5xx, transport) keep the SDK's quick retry.
#[derive(Debug)]
struct ThrottlingIsPacedByMeterd;

impl ClassifyRetry for ThrottlingIsPacedByMeterd {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let throttled = ctx
            .output_or_error()
            .and_then(Result::err)
            .and_then(|e| e.as_operation_error())
            .and_then(|e| {
                e.downcast_ref::<BatchMeterUsageError>()
                    .map(|e| e.code())
                    .or_else(|| e.downcast_ref::<MeterUsageError>().map(|e| e.code()))
            })
            .is_some_and(|code| code == Some("ThrottlingException"));
        if throttled { RetryAction::RetryForbidden } else { RetryAction::NoActionIndicated }
    }

    fn name(&self) -> &'static str {
        "meterd-throttling-is-paced-by-meterd"
    }
}

/// The metering client of one account, with meterd's settings: few SDK retries (meterd retries durably on
/// top), explicit timeouts, the app id in the user agent, the skew probe, and the wire-shape fix
/// (`wire_shape.rs`: no `"CustomerIdentifier": ""` on license records).
pub async fn client(account: &AccountConfig, clock: SharedClock, skew: Arc<Skew>) -> anyhow::Result<Client> {
    let sdk = sdk_config(account).await?;
    let mut conf = aws_sdk_marketplacemetering::config::Builder::from(&sdk)
        .retry_config(RetryConfig::standard().with_max_attempts(2).with_initial_backoff(Duration::from_millis(200)))
        .timeout_config(timeouts(account))
        .interceptor(SkewInterceptor { skew, clock })
        .interceptor(super::wire_shape::WireShapeInterceptor)
        .retry_classifier(ThrottlingIsPacedByMeterd);
    if let Some(role) = &account.role_arn {
        let provider =
            aws_config::sts::AssumeRoleProvider::builder(role).session_name("meterd").configure(&sdk).build().await;
        conf = conf.credentials_provider(provider);
    }
    Ok(Client::from_conf(conf.build()))
}

/// The Marketplace Agreement API client of one account (DescribeAgreement confirms that an agreement ended).
pub async fn agreement_client(account: &AccountConfig) -> anyhow::Result<aws_sdk_marketplaceagreement::Client> {
    let sdk = sdk_config(account).await?;
    let mut conf = aws_sdk_marketplaceagreement::config::Builder::from(&sdk)
        .retry_config(RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(200)))
        .timeout_config(timeouts(account));
    if let Some(role) = &account.role_arn {
        let provider =
            aws_config::sts::AssumeRoleProvider::builder(role).session_name("meterd").configure(&sdk).build().await;
        conf = conf.credentials_provider(provider);
    }
    Ok(aws_sdk_marketplaceagreement::Client::from_conf(conf.build()))
}

fn timeouts(account: &AccountConfig) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3).min(account.call_timeout))
        .operation_attempt_timeout(account.call_timeout)
        .operation_timeout(account.call_timeout * 2)
        .build()
}

async fn sdk_config(account: &AccountConfig) -> anyhow::Result<aws_types::SdkConfig> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).app_name(AppName::new(account.app_id.clone())?);
    // Unset: the standard Region chain (AWS_REGION, the profile, then the instance's IMDS) decides.
    if let Some(region) = &account.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &account.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if account.test_credentials {
        loader = loader.credentials_provider(Credentials::new(
            "AKIDMETERDTEST",
            "meterd-test-secret",
            None,
            None,
            "meterd-test",
        ));
    } else if let Some(profile) = &account.profile {
        loader = loader.profile_name(profile);
    }
    let sdk = loader.load().await;
    anyhow::ensure!(
        sdk.region().is_some(),
        "no AWS Region: set region in [accounts.NAME], or AWS_REGION, or a profile's region, or run on an instance \
         whose metadata service (IMDS) answers"
    );
    Ok(sdk)
}

/// The wire form of a sealed record. Deterministic: a resend carries exactly the same fields.
/// `identity` is the record's marketplace identity (a held tenant record's mapping).
pub fn usage_record(r: &SealedRecord, identity: &Identity) -> anyhow::Result<UsageRecord> {
    let mut b = UsageRecord::builder()
        .timestamp(DateTime::from_secs(r.key.hour_ms.div_euclid(1000)))
        .dimension(&r.key.dimension)
        .quantity(r.quantity as i32);
    match identity {
        Identity::Aws { account_id, license_arn } => b = b.customer_aws_account_id(account_id).license_arn(license_arn),
        Identity::Legacy { customer_identifier } => b = b.customer_identifier(customer_identifier),
        Identity::Tenant(t) => anyhow::bail!("tenant {t:?} has no marketplace identity yet"),
        Identity::Deployment => anyhow::bail!("a deployment record is sent with MeterUsage, not BatchMeterUsage"),
    }
    for a in &r.allocations {
        let mut ab = UsageAllocation::builder().allocated_usage_quantity(a.quantity as i32);
        for (k, v) in &a.tags {
            ab = ab.tags(Tag::builder().key(k).value(v).build()?);
        }
        b = b.usage_allocations(ab.build()?);
    }
    Ok(b.build()?)
}

/// How AWS identifies a record in a result: customer, dimension, hour.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WireKey {
    pub customer: String,
    pub dimension: String,
    pub timestamp_secs: i64,
}

pub fn wire_key_of_record(r: &SealedRecord, identity: &Identity) -> WireKey {
    let customer = match identity {
        Identity::Aws { account_id, license_arn } => format!("{account_id}|{license_arn}"),
        Identity::Legacy { customer_identifier } => customer_identifier.clone(),
        Identity::Tenant(t) => format!("tenant|{t}"),
        Identity::Deployment => "deployment".into(),
    };
    WireKey { customer, dimension: r.key.dimension.clone(), timestamp_secs: r.key.hour_ms.div_euclid(1000) }
}

pub fn wire_key_of_echo(u: &UsageRecord) -> WireKey {
    let customer = match (u.customer_aws_account_id(), u.license_arn()) {
        (Some(a), Some(l)) => format!("{a}|{l}"),
        _ => u.customer_identifier().to_string(),
    };
    WireKey { customer, dimension: u.dimension().to_string(), timestamp_secs: u.timestamp().secs() }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordResult {
    Success { metering_record_id: Option<String> },
    CustomerNotSubscribed,
    DuplicateRecord,
    Unknown(String),
}

/// What one BatchMeterUsage call came to.
#[derive(Debug)]
pub enum CallOutcome {
    Answered {
        results: Vec<(WireKey, RecordResult)>,
        unprocessed: Vec<WireKey>,
        request_id: Option<String>,
    },
    /// Throttling, 5xx, timeouts, dropped connections: retry the same records later.
    Retryable {
        throttled: bool,
        reason: String,
    },
    /// A request-level exception about a record of the batch: bisect.
    RecordException {
        exception: String,
        message: String,
        request_id: Option<String>,
    },
    /// Anything else (credentials, Region, product code): nothing a record did; retry later and alert.
    AccountProblem {
        reason: String,
    },
}

pub async fn send(client: &Client, product_code: Option<&str>, records: Vec<UsageRecord>) -> CallOutcome {
    let mut call = client.batch_meter_usage().set_usage_records(Some(records));
    if let Some(code) = product_code {
        call = call.product_code(code);
    }
    match call.send().await {
        Ok(out) => {
            let request_id = out.request_id().map(str::to_string);
            let results = out
                .results()
                .iter()
                .filter_map(|r| {
                    let key = wire_key_of_echo(r.usage_record()?);
                    let res = match r.status() {
                        Some(UsageRecordResultStatus::Success) => {
                            RecordResult::Success { metering_record_id: r.metering_record_id().map(str::to_string) }
                        }
                        Some(UsageRecordResultStatus::CustomerNotSubscribed) => RecordResult::CustomerNotSubscribed,
                        Some(UsageRecordResultStatus::DuplicateRecord) => RecordResult::DuplicateRecord,
                        other => RecordResult::Unknown(format!("{other:?}")),
                    };
                    Some((key, res))
                })
                .collect();
            let unprocessed = out.unprocessed_records().iter().map(wire_key_of_echo).collect();
            CallOutcome::Answered { results, unprocessed, request_id }
        }
        Err(e) => classify(e),
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> CallOutcome {
    match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = err.message().unwrap_or("").to_string();
            if code == "ThrottlingException" {
                return CallOutcome::Retryable { throttled: true, reason: format!("{code}: {message}") };
            }
            if code == "InternalServiceErrorException" || code.contains("ServiceUnavailable") {
                return CallOutcome::Retryable { throttled: false, reason: format!("{code}: {message}") };
            }
            if RECORD_EXCEPTIONS.contains(&code.as_str()) {
                return CallOutcome::RecordException {
                    exception: code,
                    message,
                    request_id: err.meta().request_id().map(str::to_string),
                };
            }
            CallOutcome::AccountProblem { reason: format!("{code}: {message}") }
        }
        // Timeouts, dispatch (connection) failures and unparseable responses are transport trouble.
        _ => CallOutcome::Retryable {
            throttled: false,
            reason: format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&e)),
        },
    }
}

/// Rough size of a record on the wire, to keep calls under AWS's 1 MB (the real JSON is smaller).
pub fn estimated_wire_bytes(r: &SealedRecord) -> usize {
    let identity = match &r.key.identity {
        Identity::Aws { account_id, license_arn } => account_id.len() + license_arn.len() + 60,
        Identity::Legacy { customer_identifier } => customer_identifier.len() + 30,
        Identity::Tenant(t) => t.len() + 30,
        Identity::Deployment => 0,
    };
    let allocations: usize =
        r.allocations.iter().map(|a| 40 + a.tags.iter().map(|(k, v)| k.len() + v.len() + 30).sum::<usize>()).sum();
    120 + identity + r.key.dimension.len() + allocations
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn emulator(faults: meterd_emulator::Faults) -> (meterd_emulator::Emulator, meterd_emulator::EmulatorHandle) {
        let mut cfg = meterd_emulator::EmulatorConfig::demo();
        cfg.rate_limit_per_sec = 0.0;
        cfg.faults = faults;
        let emu = meterd_emulator::Emulator::new(cfg, Arc::new(meterd_emulator::SystemClock));
        let handle = emu.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
        (emu, handle)
    }

    async fn test_client(endpoint: String) -> Client {
        let account = AccountConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some(endpoint),
            profile: None,
            role_arn: None,
            test_credentials: true,
            app_id: "meterd-test".into(),
            calls_per_second: 10.0,
            call_timeout: Duration::from_secs(5),
        };
        let clock: SharedClock = Arc::new(crate::clock::SystemClock);
        client(&account, clock, Arc::new(Skew::default())).await.unwrap()
    }

    #[tokio::test]
    async fn throttling_is_not_retried_inside_the_sdk_but_5xx_are() {
        let (emu, handle) = emulator(meterd_emulator::Faults { throttle_probability: 1.0, ..Default::default() }).await;
        let c = test_client(handle.endpoint_url()).await;
        let outcome = send(&c, None, Vec::new()).await;
        assert!(matches!(outcome, CallOutcome::Retryable { throttled: true, .. }), "{outcome:?}");
        // One attempt: the submitter's pacer saw this throttle and will space the retry itself.
        assert_eq!(emu.counters().calls_to("BatchMeterUsage"), 1);

        let (emu, handle) =
            emulator(meterd_emulator::Faults { internal_error_probability: 1.0, ..Default::default() }).await;
        let c = test_client(handle.endpoint_url()).await;
        let outcome = send(&c, None, Vec::new()).await;
        assert!(matches!(outcome, CallOutcome::Retryable { throttled: false, .. }), "{outcome:?}");
        assert_eq!(emu.counters().calls_to("BatchMeterUsage"), 2, "the SDK's own retry of a 500 stays");
    }
}
