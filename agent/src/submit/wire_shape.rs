//! Makes meterd's `BatchMeterUsage` bodies the shape AWS's other SDKs send.
//!
//! The Rust SDK (aws-sdk-marketplacemetering 1.124) models `UsageRecord.CustomerIdentifier` as a plain `String`
//! with an empty default and always serializes it, so every license record would carry
//! `"CustomerIdentifier": ""` beside `CustomerAWSAccountId` and `LicenseArn`. boto3, the AWS CLI and the Java and
//! JavaScript SDKs leave the member out, and AWS documents the two identities as mutually exclusive. This
//! interceptor removes an *empty* `CustomerIdentifier` from each record before the request is signed, and changes
//! nothing else: every other member keeps its bytes and its place. A non-empty one (legacy products) is kept.
//!
//! `tests` in `submit/aws.rs` pin down the SDK's behaviour this works around, so a test says when it can go.

use aws_sdk_marketplacemetering::config::{Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

/// The `X-Amz-Target` of the one operation whose input has such a member (see "Wire shape" in
/// docs/ARCHITECTURE.md: MeterUsage and ResolveCustomer serialize only members that were set).
pub const BATCH_METER_USAGE_TARGET: &str = "AWSMPMeteringService.BatchMeterUsage";

/// Registered on the metering client; acts on `BatchMeterUsage` requests only.
#[derive(Debug, Default)]
pub struct WireShapeInterceptor;

impl Intercept for WireShapeInterceptor {
    fn name(&self) -> &'static str {
        "meterd-wire-shape"
    }

    /// Before signing, so SigV4 covers the body that is sent (a change after signing would be refused by AWS).
    fn modify_before_signing(
        &self,
        ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request_mut();
        let Some(body) = req.body().bytes() else { return Ok(()) };
        let new_body = match rewrite(req.headers().get("x-amz-target"), body) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()),
            // The SDK built this body; if it is not what we expect, send it untouched rather than fail the call
            // (the SDK model test in submit/aws.rs is where such a change shows up).
            Err(e) => {
                tracing::warn!(error = %e, "BatchMeterUsage body not in the expected shape; sent as the SDK built it");
                return Ok(());
            }
        };
        req.headers_mut().insert("content-length", new_body.len().to_string());
        *req.body_mut() = SdkBody::from(new_body);
        Ok(())
    }
}

/// What to send instead of `body` for an operation (`X-Amz-Target`): `None` to send it as built.
pub fn rewrite(target: Option<&str>, body: &[u8]) -> Result<Option<Vec<u8>>, serde_json::Error> {
    if target != Some(BATCH_METER_USAGE_TARGET) {
        return Ok(None);
    }
    without_empty_customer_identifier(body)
}

/// The body without any empty `UsageRecords[].CustomerIdentifier`; `None` when there is none to remove (the
/// body is then sent byte for byte as built).
pub fn without_empty_customer_identifier(body: &[u8]) -> Result<Option<Vec<u8>>, serde_json::Error> {
    let mut top: Members = serde_json::from_slice(body)?;
    let Some(records) = top.get_mut("UsageRecords") else { return Ok(None) };
    let mut list: Vec<Members> = serde_json::from_str(records.get())?;
    let mut removed = false;
    for record in &mut list {
        let empty = match record.get_mut("CustomerIdentifier") {
            Some(v) => serde_json::from_str::<Option<String>>(v.get())?.is_some_and(|s| s.is_empty()),
            None => false,
        };
        if empty {
            record.0.retain(|(k, _)| k != "CustomerIdentifier");
            removed = true;
        }
    }
    if !removed {
        return Ok(None);
    }
    *records = serde_json::value::to_raw_value(&list)?;
    Ok(Some(serde_json::to_vec(&top)?))
}

/// A JSON object as its members in wire order, each value kept as the exact bytes it arrived as. serde_json's own
/// `Map` sorts keys (without its `preserve_order` feature, which would change every map in the workspace).
struct Members(Vec<(String, Box<RawValue>)>);

impl Members {
    fn get_mut(&mut self, name: &str) -> Option<&mut Box<RawValue>> {
        self.0.iter_mut().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some((k, v)) = m.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for Members {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(body: &str) -> Option<String> {
        without_empty_customer_identifier(body.as_bytes()).unwrap().map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn removes_only_the_empty_member_and_keeps_order_and_bytes() {
        let body = r#"{"UsageRecords":[{"Timestamp":1790000123.450,"CustomerIdentifier":"","Dimension":"api","Quantity":42,"UsageAllocations":[{"AllocatedUsageQuantity":42,"Tags":[{"Key":"b","Value":"x"},{"Key":"a","Value":"y"}]}],"CustomerAWSAccountId":"123456789012","LicenseArn":"arn:aws:license-manager::1:license:l-1"},{"Timestamp":1790000000,"CustomerIdentifier":"legacy-1","Dimension":"api","Quantity":1}],"ProductCode":"p"}"#;
        let want = r#"{"UsageRecords":[{"Timestamp":1790000123.450,"Dimension":"api","Quantity":42,"UsageAllocations":[{"AllocatedUsageQuantity":42,"Tags":[{"Key":"b","Value":"x"},{"Key":"a","Value":"y"}]}],"CustomerAWSAccountId":"123456789012","LicenseArn":"arn:aws:license-manager::1:license:l-1"},{"Timestamp":1790000000,"CustomerIdentifier":"legacy-1","Dimension":"api","Quantity":1}],"ProductCode":"p"}"#;
        assert_eq!(strip(body).as_deref(), Some(want));
    }

    #[test]
    fn acts_on_batch_meter_usage_only() {
        let body = br#"{"UsageRecords":[{"CustomerIdentifier":"","Dimension":"d"}]}"#;
        assert_eq!(
            rewrite(Some(BATCH_METER_USAGE_TARGET), body).unwrap().unwrap(),
            br#"{"UsageRecords":[{"Dimension":"d"}]}"#
        );
        for other in [Some("AWSMPMeteringService.MeterUsage"), Some("AWSMPMeteringService.ResolveCustomer"), None] {
            assert_eq!(rewrite(other, body).unwrap(), None, "{other:?}");
        }
    }

    #[test]
    fn leaves_bodies_without_an_empty_member_untouched() {
        assert_eq!(strip(r#"{"UsageRecords":[{"CustomerIdentifier":"c","Dimension":"d"}]}"#), None);
        assert_eq!(strip(r#"{"UsageRecords":[{"CustomerIdentifier":null}]}"#), None);
        assert_eq!(strip(r#"{"ProductCode":"p"}"#), None);
        assert_eq!(strip("{}"), None);
    }

    #[test]
    fn unexpected_shapes_are_errors_not_panics() {
        for body in ["", "[]", "{", r#"{"UsageRecords":{}}"#, r#"{"UsageRecords":[1]}"#] {
            assert!(without_empty_customer_identifier(body.as_bytes()).is_err(), "{body}");
        }
        assert!(without_empty_customer_identifier(br#"{"UsageRecords":[{"CustomerIdentifier":5}]}"#).is_err());
    }
}

/// Through the real SDK: what it builds on its own (pinning the SDK behaviour the interceptor works around) and
/// what meterd's client sends (the interceptor applied, signed over the final body).
#[cfg(test)]
mod sdk_tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use aws_config::{BehaviorVersion, Region};
    use aws_sdk_marketplacemetering::Client;
    use aws_sdk_marketplacemetering::config::{Credentials, Intercept, RuntimeComponents};
    use aws_sdk_marketplacemetering::types::{Tag, UsageAllocation, UsageRecord};
    use aws_smithy_runtime_api::box_error::BoxError;
    use aws_smithy_runtime_api::client::identity::Identity;
    use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
    use aws_smithy_types::DateTime;
    use aws_smithy_types::config_bag::ConfigBag;
    use serde_json::Value;

    use crate::config::AccountConfig;
    use crate::submit::aws::{Skew, client};

    const GONE: &str = "the SDK no longer sends an empty CustomerIdentifier: the interceptor in submit/wire_shape.rs \
                        (registered in submit/aws.rs) can go, with strict_wire's reason to exist";

    /// The request as it would leave the process, after every interceptor and the signer.
    #[derive(Clone, Debug, Default)]
    struct Sent {
        method: String,
        uri: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Sent {
        fn header(&self, name: &str) -> &str {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).unwrap_or("")
        }
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// Records the request at the last hook before transmission, then aborts the call: nothing goes on the network.
    #[derive(Clone, Debug, Default)]
    struct Capture(Arc<Mutex<Option<Sent>>>);

    impl Intercept for Capture {
        fn name(&self) -> &'static str {
            "test-capture"
        }
        fn read_before_transmit(
            &self,
            ctx: &BeforeTransmitInterceptorContextRef<'_>,
            _rc: &RuntimeComponents,
            _cfg: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            let r = ctx.request();
            *self.0.lock().unwrap() = Some(Sent {
                method: r.method().to_string(),
                uri: r.uri().to_string(),
                headers: r.headers().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                body: r.body().bytes().expect("in-memory body").to_vec(),
            });
            Err("captured by the test; not sent".into())
        }
    }

    impl Capture {
        fn take(&self) -> Sent {
            self.0.lock().unwrap().take().expect("the request reached transmission")
        }
    }

    fn license_record() -> UsageRecord {
        UsageRecord::builder()
            .timestamp(DateTime::from_secs(1_790_000_000))
            .dimension("api_calls")
            .quantity(42)
            .customer_aws_account_id("123456789012")
            .license_arn("arn:aws:license-manager::123456789012:license:l-0123456789abcdef")
            .usage_allocations(
                UsageAllocation::builder()
                    .allocated_usage_quantity(42)
                    .tags(Tag::builder().key("team").value("a").build().unwrap())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn legacy_record() -> UsageRecord {
        UsageRecord::builder()
            .timestamp(DateTime::from_secs(1_790_000_000))
            .dimension("api_calls")
            .quantity(1)
            .customer_identifier("legacy-customer-1")
            .build()
            .unwrap()
    }

    /// The bare SDK client: no meterd interceptor.
    fn bare_client() -> Client {
        let conf = aws_sdk_marketplacemetering::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDMETERDTEST", "meterd-test-secret", None, None, "test"))
            .endpoint_url("http://127.0.0.1:1")
            .build();
        Client::from_conf(conf)
    }

    /// meterd's own client, as the submitter builds it.
    async fn meterd_client() -> Client {
        let account = AccountConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some("http://127.0.0.1:1".into()),
            profile: None,
            role_arn: None,
            test_credentials: true,
            app_id: "meterd-test".into(),
            calls_per_second: 1.0,
            call_timeout: Duration::from_secs(5),
        };
        client(&account, Arc::new(crate::clock::SystemClock), Arc::new(Skew::default())).await.unwrap()
    }

    async fn batch(client: &Client, records: Vec<UsageRecord>) -> Sent {
        let cap = Capture::default();
        let r = client
            .batch_meter_usage()
            .set_usage_records(Some(records))
            .customize()
            .interceptor(cap.clone())
            .send()
            .await;
        assert!(r.is_err(), "the capture aborts the call");
        cap.take()
    }

    /// Member names, sorted (serde_json's map).
    fn members(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    /// Member names of `UsageRecords[i]` in wire order.
    fn record_members_in_order(body: &[u8], i: usize) -> Vec<String> {
        let mut top: super::Members = serde_json::from_slice(body).unwrap();
        let records: Vec<super::Members> = serde_json::from_str(top.get_mut("UsageRecords").unwrap().get()).unwrap();
        records[i].0.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    }

    /// The SDK behaviour meterd works around. When this fails, the SDK model changed: follow the message.
    #[tokio::test]
    async fn the_bare_sdk_sends_an_empty_customer_identifier_on_license_records() {
        let sent = batch(&bare_client(), vec![license_record()]).await;
        let body = String::from_utf8(sent.body.clone()).unwrap();
        assert!(body.contains(r#""CustomerIdentifier":"""#), "{GONE}\nbody: {body}");
        assert_eq!(sent.json()["UsageRecords"][0]["CustomerIdentifier"], Value::String(String::new()), "{GONE}");

        let names: Vec<&str> = UsageRecord::SCHEMA.members().iter().filter_map(|m| m.member_name()).collect();
        assert_eq!(
            names,
            [
                "Timestamp",
                "CustomerIdentifier",
                "Dimension",
                "Quantity",
                "UsageAllocations",
                "CustomerAWSAccountId",
                "LicenseArn"
            ],
            "the SDK's UsageRecord model changed (e.g. it gained QuantityAsDecimal): revisit submit/wire_shape.rs and \
             the whole-unit carry of fractions (docs/ARCHITECTURE.md, \"Wire shape\")"
        );
    }

    /// MeterUsage and ResolveCustomer members are all optional in the SDK: it sends only what was set, so they need
    /// no fix. When this fails, the SDK started sending a default there: extend the interceptor.
    #[tokio::test]
    async fn the_bare_sdk_sends_only_set_members_for_meter_usage_and_resolve_customer() {
        let c = bare_client();
        let cap = Capture::default();
        let _ = c
            .meter_usage()
            .product_code("p")
            .timestamp(DateTime::from_secs(1_790_000_000))
            .usage_dimension("d")
            .customize()
            .interceptor(cap.clone())
            .send()
            .await;
        // ClientToken is the model's idempotency token: every SDK fills it in (botocore too).
        assert_eq!(members(&cap.take().json()), ["ClientToken", "ProductCode", "Timestamp", "UsageDimension"]);
        let _ = c.resolve_customer().registration_token("t").customize().interceptor(cap.clone()).send().await;
        assert_eq!(members(&cap.take().json()), ["RegistrationToken"]);
    }

    /// SigV4 signature of `sent` recomputed over `body`, from the scope and signed headers `sent` names.
    fn signature_over(sent: &Sent, body: &[u8]) -> String {
        let auth = sent.header("authorization");
        let field = |name: &str| {
            auth.split([' ', ',']).find_map(|p| p.strip_prefix(name)).unwrap_or_else(|| panic!("{name} in {auth}"))
        };
        let scope: Vec<&str> = field("Credential=").split('/').collect();
        let signed: Vec<&str> = field("SignedHeaders=").split(';').collect();
        let time =
            chrono::NaiveDateTime::parse_from_str(sent.header("x-amz-date"), "%Y%m%dT%H%M%SZ").unwrap().and_utc();
        let time = std::time::UNIX_EPOCH + Duration::from_secs(time.timestamp() as u64);
        // The signer adds host (from the URI) and x-amz-date (from `time`) itself.
        let headers = sent
            .headers
            .iter()
            .filter(|(k, _)| signed.contains(&k.as_str()) && k != "host" && k != "x-amz-date")
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let identity: Identity = Credentials::new("AKIDMETERDTEST", "meterd-test-secret", None, None, "t").into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(scope[2])
            .name(scope[3])
            .time(time)
            .settings(aws_sigv4::http_request::SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let req = aws_sigv4::http_request::SignableRequest::new(
            &sent.method,
            sent.uri.as_str(),
            headers,
            aws_sigv4::http_request::SignableBody::Bytes(body),
        )
        .unwrap();
        aws_sigv4::http_request::sign(req, &params).unwrap().into_parts().1
    }

    #[tokio::test]
    async fn meterd_sends_license_records_without_customer_identifier_signed_over_the_final_body() {
        let bare = batch(&bare_client(), vec![license_record(), legacy_record()]).await;
        let sent = batch(&meterd_client().await, vec![license_record(), legacy_record()]).await;

        // Exactly the SDK's body minus the empty member: every other member in place, byte for byte.
        let want = String::from_utf8(bare.body.clone()).unwrap().replacen(r#""CustomerIdentifier":"","#, "", 1);
        assert_eq!(String::from_utf8(sent.body.clone()).unwrap(), want);
        let json = sent.json();
        assert_eq!(
            record_members_in_order(&sent.body, 0),
            ["Timestamp", "Dimension", "Quantity", "UsageAllocations", "CustomerAWSAccountId", "LicenseArn"]
        );
        assert_eq!(json["UsageRecords"][1]["CustomerIdentifier"], "legacy-customer-1", "a legacy identity is kept");

        assert_eq!(sent.header("content-length"), sent.body.len().to_string());
        let claimed = sent.header("authorization").rsplit("Signature=").next().unwrap().to_string();
        assert_eq!(signature_over(&sent, &sent.body), claimed, "the signature covers the body sent");
        assert_ne!(signature_over(&sent, &bare.body), claimed, "(the check tells the bodies apart)");
    }

    #[tokio::test]
    async fn other_operations_pass_untouched() {
        let bare = bare_client();
        let ours = meterd_client().await;
        let mut bodies = Vec::new();
        for c in [&bare, &ours] {
            let cap = Capture::default();
            let _ = c.resolve_customer().registration_token("t").customize().interceptor(cap.clone()).send().await;
            bodies.push(cap.take().body);
        }
        assert_eq!(bodies[0], bodies[1]);
        let legacy_only = batch(&ours, vec![legacy_record()]).await;
        assert_eq!(legacy_only.body, batch(&bare, vec![legacy_record()]).await.body);
    }
}
