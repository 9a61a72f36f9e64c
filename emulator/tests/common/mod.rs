//! Shared test harness: an emulator on 127.0.0.1 with a manual clock, the real AWS Rust SDK pointed at it, and a
//! tiny raw HTTP client for what the SDK cannot send (malformed bodies, unknown targets, the inspection API).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_marketplacemetering::Client;
use aws_sdk_marketplacemetering::config::http::HttpRequest;
use aws_sdk_marketplacemetering::config::retry::RetryConfig;
use aws_sdk_marketplacemetering::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_marketplacemetering::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_marketplacemetering::operation::batch_meter_usage::{BatchMeterUsageError, BatchMeterUsageOutput};
use aws_sdk_marketplacemetering::types::{Tag, UsageAllocation, UsageRecord, UsageRecordResultStatus};
use aws_smithy_types::DateTime;
use meterd_emulator::{EmuCustomer, EmuProduct, EmuToken, Emulator, EmulatorConfig, EmulatorHandle, ManualClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PRODUCT: &str = "prod-emu1";
pub const OTHER_PRODUCT: &str = "prod-emu2";
pub const LEGACY_PRODUCT: &str = "legacyprod1";
pub const ACCOUNT: &str = "123456789012";
pub const LICENSE: &str = "arn:aws:license-manager::123456789012:license:l-0123456789abcdef0";
/// Subscribed to OTHER_PRODUCT.
pub const OTHER_ACCOUNT: &str = "210987654321";
pub const OTHER_LICENSE: &str = "arn:aws:license-manager::210987654321:license:l-fedcba98765432100";
/// Known (a registration token resolves to it) but not subscribed.
pub const PENDING_ACCOUNT: &str = "555566667777";
pub const PENDING_LICENSE: &str = "arn:aws:license-manager::555566667777:license:l-5555666677770000";
pub const LEGACY_CUSTOMER: &str = "cust-legacy-1";

/// 2026-11-27T12:00:00Z
pub const HOUR: i64 = 1_795_780_800;
/// The service clock starts half past that hour.
pub const NOW: i64 = HOUR + 1800;

pub fn config() -> EmulatorConfig {
    EmulatorConfig {
        seed: 42,
        // Off unless a test is about it, so unrelated tests never see throttling.
        rate_limit_per_sec: 0.0,
        products: vec![
            EmuProduct { product_code: PRODUCT.into(), dimensions: vec!["requests".into(), "gb_stored".into()] },
            EmuProduct { product_code: OTHER_PRODUCT.into(), dimensions: vec!["seats".into()] },
            EmuProduct { product_code: LEGACY_PRODUCT.into(), dimensions: vec!["users".into()] },
        ],
        customers: vec![
            EmuCustomer::licensed(PRODUCT, ACCOUNT, LICENSE),
            EmuCustomer::licensed(OTHER_PRODUCT, OTHER_ACCOUNT, OTHER_LICENSE),
            EmuCustomer::legacy(LEGACY_PRODUCT, LEGACY_CUSTOMER),
        ],
        registration_tokens: vec![
            EmuToken {
                token: "tok-ok".into(),
                product_code: PRODUCT.into(),
                aws_account_id: Some(ACCOUNT.into()),
                license_arn: Some(LICENSE.into()),
                agreement_id: Some("agmt-0123456789".into()),
                ..EmuToken::default()
            },
            EmuToken {
                token: "tok-pending".into(),
                product_code: PRODUCT.into(),
                aws_account_id: Some(PENDING_ACCOUNT.into()),
                license_arn: Some(PENDING_LICENSE.into()),
                subscribed: false,
                ..EmuToken::default()
            },
            EmuToken {
                token: "tok-legacy".into(),
                product_code: LEGACY_PRODUCT.into(),
                customer_identifier: Some(LEGACY_CUSTOMER.into()),
                ..EmuToken::default()
            },
            EmuToken {
                token: "tok-expired".into(),
                product_code: PRODUCT.into(),
                aws_account_id: Some(ACCOUNT.into()),
                license_arn: Some(LICENSE.into()),
                expired: true,
                ..EmuToken::default()
            },
        ],
        ..EmulatorConfig::default()
    }
}

pub struct Env {
    pub emu: Emulator,
    pub clock: Arc<ManualClock>,
    pub handle: EmulatorHandle,
    pub client: Client,
}

impl Env {
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }

    pub fn set_now(&self, epoch_secs: i64) {
        self.clock.set(std::time::UNIX_EPOCH + Duration::from_secs(epoch_secs as u64));
    }
}

pub async fn start() -> Env {
    start_with(config()).await
}

pub async fn start_with(cfg: EmulatorConfig) -> Env {
    cfg.validate().expect("test config is valid");
    let clock = Arc::new(ManualClock::at_epoch_secs(NOW as u64));
    let emu = Emulator::new(cfg, clock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = emu.start(listener).await.unwrap();
    let client = client(&handle.endpoint_url(), RetryConfig::disabled());
    Env { emu, clock, handle, client }
}

/// The unmodified SDK, configured the way a seller would for a local endpoint.
pub fn client(endpoint: &str, retry: RetryConfig) -> Client {
    let creds =
        Credentials::new("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None, None, "test");
    let conf = aws_sdk_marketplacemetering::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .retry_config(retry)
        .build();
    Client::from_conf(conf)
}

/// A Concurrent Agreements record for the subscribed customer.
pub fn rec(dimension: &str, quantity: i32, ts: i64) -> UsageRecord {
    rec_for(ACCOUNT, LICENSE, dimension, quantity, ts)
}

pub fn rec_for(account: &str, license: &str, dimension: &str, quantity: i32, ts: i64) -> UsageRecord {
    record_builder(dimension, ts)
        .customer_aws_account_id(account)
        .license_arn(license)
        .quantity(quantity)
        .build()
        .unwrap()
}

pub fn record_builder(dimension: &str, ts: i64) -> aws_sdk_marketplacemetering::types::builders::UsageRecordBuilder {
    UsageRecord::builder().timestamp(DateTime::from_secs(ts)).dimension(dimension)
}

pub fn legacy_rec(customer: &str, dimension: &str, quantity: i32, ts: i64) -> UsageRecord {
    record_builder(dimension, ts).customer_identifier(customer).quantity(quantity).build().unwrap()
}

pub fn alloc(quantity: i32, tags: &[(&str, &str)]) -> UsageAllocation {
    let mut b = UsageAllocation::builder().allocated_usage_quantity(quantity);
    for (k, v) in tags {
        b = b.tags(Tag::builder().key(*k).value(*v).build().unwrap());
    }
    b.build().unwrap()
}

pub async fn bmu(
    c: &Client,
    records: Vec<UsageRecord>,
) -> Result<BatchMeterUsageOutput, SdkError<BatchMeterUsageError>> {
    c.batch_meter_usage().set_usage_records(Some(records)).send().await
}

pub async fn bmu_legacy(
    c: &Client,
    product: &str,
    records: Vec<UsageRecord>,
) -> Result<BatchMeterUsageOutput, SdkError<BatchMeterUsageError>> {
    c.batch_meter_usage().product_code(product).set_usage_records(Some(records)).send().await
}

/// The `__type` of a service error; panics on success or a transport failure.
#[track_caller]
pub fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(r: Result<T, SdkError<E>>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => match e.code() {
            Some(c) => c.to_string(),
            None => panic!("expected a service error, got {e:?}"),
        },
    }
}

/// The message of a service error.
pub fn message<E: ProvideErrorMetadata>(e: &SdkError<E>) -> String {
    e.message().unwrap_or_default().to_string()
}

pub fn statuses(out: &BatchMeterUsageOutput) -> Vec<UsageRecordResultStatus> {
    out.results().iter().filter_map(|r| r.status().cloned()).collect()
}

/// Asserts a request-level refusal billed nothing.
#[track_caller]
pub fn assert_nothing_billed(env: &Env) {
    assert!(env.emu.ledger().is_empty(), "ledger: {:?}", env.emu.ledger());
}

pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 exchange on a fresh connection.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> RawResponse {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // The server may answer and close before reading the whole body (oversized requests), so the body is written
    // alongside the read and a write failure after the answer has started is not the test's business.
    let (mut rd, mut wr) = s.into_split();
    let mut wire = req.into_bytes();
    wire.extend_from_slice(body);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&wire).await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A reset after the answer arrived (the server closed with our body unread) still leaves the answer.
            Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the response: {e}"),
        }
    }
    drop(writer.await);
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    RawResponse { status, headers, body: buf[split + 4..].to_vec() }
}

/// An AWS call with a hand-made body.
pub async fn aws_raw(addr: SocketAddr, operation: &str, body: &str) -> RawResponse {
    let target = format!("AWSMPMeteringService.{operation}");
    http(
        addr,
        "POST",
        "/",
        &[("content-type", "application/x-amz-json-1.1"), ("x-amz-target", &target)],
        body.as_bytes(),
    )
    .await
}

pub async fn inspect_get(addr: SocketAddr, path: &str) -> serde_json::Value {
    let r = http(addr, "GET", path, &[], b"").await;
    assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

pub async fn inspect_send(addr: SocketAddr, method: &str, path: &str, body: serde_json::Value) -> RawResponse {
    http(addr, method, path, &[("content-type", "application/json")], body.to_string().as_bytes()).await
}

/// A `mutate_request` hook that edits the JSON body the SDK built, for members the Rust SDK does not have yet
/// (`QuantityAsDecimal`, ...) or values it cannot express. The request still goes out through the SDK's signer
/// and HTTP client, and the SDK parses the answer.
pub fn edit_body<F>(edit: F) -> impl Fn(&mut HttpRequest) + Send + Sync + 'static
where
    F: Fn(&mut serde_json::Value) + Send + Sync + 'static,
{
    move |r: &mut HttpRequest| {
        let bytes = r.body().bytes().unwrap_or_default().to_vec();
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::json!({}));
        edit(&mut v);
        let s = v.to_string();
        r.headers_mut().insert("content-length", s.len().to_string());
        *r.body_mut() = s.into();
    }
}

/// Replaces record `i`'s `Quantity` with `QuantityAsDecimal`.
pub fn as_decimal(v: &mut serde_json::Value, i: usize, q: &str) {
    let r = &mut v["UsageRecords"][i];
    if let Some(o) = r.as_object_mut() {
        o.remove("Quantity");
    }
    r["QuantityAsDecimal"] = serde_json::json!(q);
}
