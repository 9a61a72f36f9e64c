//! Hostile input over gRPC against the real binary: caller values of 20,000 characters in every field are
//! refused INVALID_ARGUMENT with a bounded message (never a header too large for the client), and request
//! bodies tonic cannot decode are INVALID_ARGUMENT, oversized ones RESOURCE_EXHAUSTED naming the limit.

use meterd_proto::v1;
use meterd_tests::{Agent, basic_config};
use tonic::Code;
use tonic::codegen::{Bytes, Service, http};

const ARN: &str = "arn:aws:license-manager::111122223333:license:l-0123456789abcdef";
/// A bounded message: the echoed value is cut at 64 characters, the rest is our own text.
const MAX_MESSAGE: usize = 1024;

fn event(key: &str) -> v1::UsageEvent {
    v1::UsageEvent {
        idempotency_key: key.into(),
        customer: Some(v1::Customer {
            identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                customer_aws_account_id: "123456789012".into(),
                license_arn: ARN.into(),
            })),
        }),
        dimension: "api_calls".into(),
        quantity: "1".into(),
        timestamp: None,
        tags: Default::default(),
        product: String::new(),
    }
}

fn customer(identity: v1::customer::Identity) -> Option<v1::Customer> {
    Some(v1::Customer { identity: Some(identity) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_values_are_refused_with_bounded_messages() {
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::start(&basic_config(&data.path().join("data"), "")).unwrap();
    let client = agent.client().await.unwrap();
    let mut m = client.metering();
    let huge = "x".repeat(20_000);
    let tenant = |t: &str| customer(v1::customer::Identity::TenantId(t.into()));
    let cases: Vec<(&str, v1::UsageEvent)> = vec![
        ("dimension", v1::UsageEvent { dimension: huge.clone(), ..event("k") }),
        ("customer.tenant_id", v1::UsageEvent { customer: tenant(&huge), ..event("k") }),
        ("idempotency_key", event(&huge)),
        ("tags[", v1::UsageEvent { tags: [(huge.clone(), "v".into())].into(), ..event("k") }),
        ("tags[\"k\"]", v1::UsageEvent { tags: [("k".into(), huge.clone())].into(), ..event("k") }),
        ("tags[", v1::UsageEvent { tags: [(format!("{huge}|"), "v".into())].into(), ..event("k") }),
        ("product", v1::UsageEvent { product: huge.clone(), ..event("k") }),
        ("quantity", v1::UsageEvent { quantity: huge.clone(), ..event("k") }),
        ("quantity", v1::UsageEvent { quantity: "9".repeat(20_000), ..event("k") }),
        (
            "customer.aws_account.license_arn",
            v1::UsageEvent {
                customer: customer(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                    customer_aws_account_id: "123456789012".into(),
                    license_arn: huge.clone(),
                })),
                ..event("k")
            },
        ),
        (
            "customer.aws_account.customer_aws_account_id",
            v1::UsageEvent {
                customer: customer(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                    customer_aws_account_id: huge.clone(),
                    license_arn: ARN.into(),
                })),
                ..event("k")
            },
        ),
    ];
    for (field, ev) in &cases {
        let err = m.record_usage(v1::RecordUsageRequest { event: Some(ev.clone()) }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {}", &err.message()[..err.message().len().min(300)]);
        assert!(err.message().starts_with(&format!("event.{field}")), "{field}: {}", err.message());
        assert!(err.message().len() < MAX_MESSAGE, "{field}: {} bytes", err.message().len());
    }
    // The same events in one batch: each refused with a bounded field and message.
    let events: Vec<_> = cases.iter().map(|(_, ev)| ev.clone()).collect();
    let results = m.record_usage_batch(v1::RecordUsageBatchRequest { events }).await.unwrap().into_inner().results;
    for (i, ((field, _), r)) in cases.iter().zip(&results).enumerate() {
        let Some(v1::event_result::Outcome::Error(e)) = &r.outcome else { panic!("{field}: not refused") };
        assert_eq!(e.code, Code::InvalidArgument as i32, "{field}");
        assert!(e.field.starts_with(&format!("events[{i}].{field}")), "{field}: {}", e.field);
        assert!(e.field.len() < 200 && e.message.len() < MAX_MESSAGE, "{field}: {} / {}", e.field, e.message.len());
    }
    // An idempotency-key conflict quotes the key: bounded too (128 characters is the longest valid key).
    let long_key = "k".repeat(128);
    m.record_usage(v1::RecordUsageRequest { event: Some(event(&long_key)) }).await.unwrap();
    let err = m
        .record_usage(v1::RecordUsageRequest {
            event: Some(v1::UsageEvent { quantity: "2".into(), ..event(&long_key) }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("…(128 bytes)"), "{}", err.message());

    // Customers and lifecycle calls.
    let mut c = client.customers();
    let put = |tenant_id: &str, arn: &str| v1::PutCustomerRequest {
        tenant_id: tenant_id.into(),
        product: String::new(),
        identity: Some(v1::put_customer_request::Identity::AwsAccount(v1::AwsCustomer {
            customer_aws_account_id: "123456789012".into(),
            license_arn: arn.into(),
        })),
        agreement_id: String::new(),
    };
    let bounded = |what: &str, err: tonic::Status, code: Code| {
        assert_eq!(err.code(), code, "{what}: {}", &err.message()[..err.message().len().min(300)]);
        assert!(err.message().len() < MAX_MESSAGE, "{what}: {} bytes", err.message().len());
    };
    bounded("put tenant_id", c.put(put(&huge, ARN)).await.unwrap_err(), Code::InvalidArgument);
    bounded("put license_arn", c.put(put("t1", &huge)).await.unwrap_err(), Code::InvalidArgument);
    bounded(
        "put product",
        c.put(v1::PutCustomerRequest { product: huge.clone(), ..put("t1", ARN) }).await.unwrap_err(),
        Code::InvalidArgument,
    );
    let get = c.get(v1::GetCustomerRequest { tenant_id: huge.clone() }).await.unwrap_err();
    bounded("get tenant_id", get, Code::NotFound);
    for (what, json) in [
        ("source", serde_json::json!({"source": huge, "detail-type": "License Updated", "detail": {}})),
        ("detail-type", serde_json::json!({"source": "aws.agreement-marketplace", "detail-type": huge, "detail": {}})),
        ("action", serde_json::json!({"action": huge})),
        (
            "product-code",
            serde_json::json!({"action": "subscribe-success", "customer-identifier": "c", "product-code": huge}),
        ),
    ] {
        let err = c.apply_event(v1::ApplyEventRequest { event_json: json.to_string() }).await.unwrap_err();
        bounded(what, err, Code::InvalidArgument);
    }
}

/// POSTs one gRPC request whose body is exactly `body` (frame headers included) and returns the status.
async fn raw_call(channel: &tonic::transport::Channel, path: &str, body: Vec<u8>) -> tonic::Status {
    use http_body_util::{BodyExt, Full};
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .unwrap();
    let mut ch = channel.clone();
    std::future::poll_fn(|cx| ch.poll_ready(cx)).await.unwrap();
    let response = ch.call(req).await.unwrap();
    // Errors before any message are "trailers-only": the status is in the headers.
    if let Some(s) = tonic::Status::from_header_map(response.headers()) {
        return s;
    }
    let trailers = response.into_body().collect().await.unwrap().trailers().cloned().expect("trailers");
    tonic::Status::from_header_map(&trailers).expect("grpc-status")
}

/// One gRPC message frame: uncompressed, length as declared (which may lie), then the payload.
fn frame(declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&declared_len.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn whole(payload: &[u8]) -> Vec<u8> {
    frame(payload.len() as u32, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversized_requests_get_the_callers_status_codes() {
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::start(&basic_config(&data.path().join("data"), "")).unwrap();
    let client = agent.client().await.unwrap();
    let ch = client.channel();
    let record = "/meterd.v1.Metering/RecordUsage";
    // RecordUsageRequest.event (field 1) holding UsageEvent.idempotency_key (field 1) = bytes FF FE.
    let bad_utf8 = [0x0a, 4, 0x0a, 2, 0xff, 0xfe];
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("garbage bytes", record, whole(&[0xff; 16])),
        ("a protobuf field cut short", record, whole(&[0x0a, 100, 1, 2, 3])),
        ("invalid UTF-8 in a string", record, whole(&bad_utf8)),
        ("a frame cut short", record, frame(100, &[0x0a, 0])),
        ("garbage to Customers", "/meterd.v1.Customers/Put", whole(&[0xff; 16])),
        ("garbage to Admin", "/meterd.v1.Admin/Status", whole(&[0xff; 16])),
    ];
    for (what, path, body) in cases {
        let s = raw_call(&ch, path, body).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {}", s.message());
        assert!(s.message().starts_with("request: "), "{what}: {}", s.message());
    }
    // The decoder's own message survives, so the caller learns which field was wrong.
    let s = raw_call(&ch, record, whole(&bad_utf8)).await;
    assert!(s.message().contains("idempotency_key"), "{}", s.message());

    // Over the limit (declared; the decoder refuses before reading the body): RESOURCE_EXHAUSTED with the limit.
    for (path, limit) in [(record, 64 * 1024 * 1024u32), ("/meterd.v1.Customers/Put", 4 * 1024 * 1024)] {
        let s = raw_call(&ch, path, frame(limit + 1, &[0x0a, 0])).await;
        assert_eq!(s.code(), Code::ResourceExhausted, "{path}: {}", s.message());
        assert!(s.message().contains(&format!("the limit is: {limit} bytes")), "{path}: {}", s.message());
    }
    // A real call still works on the same connection, and the services' own codes are untouched.
    let ok = client.metering().record_usage(v1::RecordUsageRequest { event: Some(event("fine")) }).await;
    assert!(ok.is_ok(), "{ok:?}");
}
