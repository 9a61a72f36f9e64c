//! The v1 API end to end against the real binary: receipts, idempotency, one refusal per validation rule
//! (and proof that nothing of a refused event is stored), batches, health, reflection, Unix socket,
//! graceful shutdown, and the CLI's check-config and --help.

use std::process::Command;
use std::time::Duration;

use meterd_proto::v1;
use meterd_tests::{Agent, basic_config, meterd_bin};
use tonic::Code;

const ARN: &str = "arn:aws:license-manager::111122223333:license:l-0123456789abcdef";

fn event(key: &str, qty: &str) -> v1::UsageEvent {
    v1::UsageEvent {
        idempotency_key: key.into(),
        customer: Some(v1::Customer {
            identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                customer_aws_account_id: "123456789012".into(),
                license_arn: ARN.into(),
            })),
        }),
        dimension: "api_calls".into(),
        quantity: qty.into(),
        timestamp: None,
        tags: [("team".to_string(), "blue".to_string())].into(),
        product: String::new(),
    }
}

async fn events_stored(client: &meterd_proto::client::Client) -> u64 {
    client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner().events_stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_replay_conflict_and_every_refusal() {
    let data = tempfile::tempdir().unwrap();
    let sock = data.path().join("meterd.sock");
    let extra = "[ingest]\nmax_batch_events = 50\n".to_string();
    let config = basic_config(&data.path().join("data"), &extra)
        .replace("[server]\n", &format!("[server]\nunix_socket = \"{}\"\n", sock.display()));
    let mut agent = Agent::start(&config).unwrap();
    let client = agent.client().await.unwrap();
    let mut m = client.metering();

    // Stored, then replayed with the original receipt.
    let r1 = m.record_usage(v1::RecordUsageRequest { event: Some(event("e1", "2.5")) }).await.unwrap().into_inner();
    let r1 = r1.receipt.unwrap();
    assert!(!r1.replayed);
    assert_eq!(r1.product, "app");
    assert_eq!(r1.usage_hour.as_ref().unwrap().seconds % 3600, 0);
    let r2 = m.record_usage(v1::RecordUsageRequest { event: Some(event("e1", "2.500")) }).await.unwrap().into_inner();
    let r2 = r2.receipt.unwrap();
    assert!(r2.replayed, "same quantity written differently is the same content");
    assert_eq!(r2.recorded_at, r1.recorded_at);

    // Conflict: same key, different content.
    let err = m.record_usage(v1::RecordUsageRequest { event: Some(event("e1", "3")) }).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("\"e1\" was already used for a different event"), "{}", err.message());
    assert_eq!(events_stored(&client).await, 1);

    // Every rule refuses with INVALID_ARGUMENT naming the field; nothing is stored.
    let future = meterd_proto::Timestamp { seconds: 4_102_444_800, nanos: 0 };
    let cases: Vec<(v1::UsageEvent, &str)> = vec![
        (v1::UsageEvent { idempotency_key: String::new(), ..event("x", "1") }, "event.idempotency_key:"),
        (v1::UsageEvent { customer: None, ..event("x", "1") }, "event.customer:"),
        (v1::UsageEvent { dimension: "API_CALLS".into(), ..event("x", "1") }, "event.dimension:"),
        (event("x", "-1"), "event.quantity: must not be negative"),
        (event("x", "1.5e3"), "event.quantity:"),
        (event("x", "0.0000001"), "event.quantity:"),
        (v1::UsageEvent { timestamp: Some(future), ..event("x", "1") }, "event.timestamp:"),
        (v1::UsageEvent { product: "other".into(), ..event("x", "1") }, "event.product:"),
        (
            v1::UsageEvent { tags: [("bad|key".to_string(), "v".to_string())].into(), ..event("x", "1") },
            "event.tags[\"bad|key\"]:",
        ),
        (
            v1::UsageEvent {
                customer: Some(v1::Customer {
                    identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                        customer_aws_account_id: "123456789012".into(),
                        license_arn: ARN[4..].into(),
                    })),
                }),
                ..event("x", "1")
            },
            "event.customer.aws_account.license_arn:",
        ),
        (
            v1::UsageEvent {
                customer: Some(v1::Customer {
                    identity: Some(v1::customer::Identity::Legacy(v1::LegacyCustomer {
                        customer_identifier: "c".into(),
                        product_code: String::new(),
                    })),
                }),
                ..event("x", "1")
            },
            "event.customer.legacy:",
        ),
    ];
    for (ev, prefix) in cases {
        let err = m.record_usage(v1::RecordUsageRequest { event: Some(ev) }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{prefix}: {}", err.message());
        assert!(err.message().starts_with(prefix), "expected {prefix:?}, got {:?}", err.message());
    }
    let err = m.record_usage(v1::RecordUsageRequest { event: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let status = client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((status.events_stored, status.open_buckets), (1, 1), "a refused event left something behind");

    // A batch: per-event results in order; only valid events are stored.
    let batch =
        vec![event("b1", "1"), event("b2", "-4"), event("e1", "9"), event("b3", "0.000001"), event("e1", "2.5")];
    let res = m.record_usage_batch(v1::RecordUsageBatchRequest { events: batch }).await.unwrap().into_inner().results;
    use v1::event_result::Outcome;
    assert!(matches!(&res[0].outcome, Some(Outcome::Receipt(r)) if !r.replayed));
    assert!(
        matches!(&res[1].outcome, Some(Outcome::Error(e)) if e.code == Code::InvalidArgument as i32 && e.field == "events[1].quantity")
    );
    assert!(matches!(&res[2].outcome, Some(Outcome::Error(e)) if e.code == Code::AlreadyExists as i32));
    assert!(matches!(&res[3].outcome, Some(Outcome::Receipt(_))));
    assert!(matches!(&res[4].outcome, Some(Outcome::Receipt(r)) if r.replayed));
    assert_eq!(events_stored(&client).await, 3);

    // Batch limits are whole-call errors.
    let err = m.record_usage_batch(v1::RecordUsageBatchRequest { events: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let too_many = (0..51).map(|i| event(&format!("m{i}"), "1")).collect();
    let err = m.record_usage_batch(v1::RecordUsageBatchRequest { events: too_many }).await.unwrap_err();
    assert!(err.message().contains("max_batch_events"), "{}", err.message());

    // The Unix socket serves the same API.
    let unix = meterd_proto::client::Client::connect(&format!("unix:{}", sock.display()), Duration::from_secs(5))
        .await
        .unwrap();
    let r = unix.metering().record_usage(v1::RecordUsageRequest { event: Some(event("u1", "1")) }).await.unwrap();
    assert!(!r.into_inner().receipt.unwrap().replayed);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o660);
    assert_eq!(std::fs::metadata(data.path().join("data")).unwrap().permissions().mode() & 0o777, 0o700);

    // Health and reflection, so generic tools work.
    let mut health = tonic_health::pb::health_client::HealthClient::new(client.channel());
    for service in ["", "meterd.v1.Metering"] {
        let h = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(h.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(client.channel());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["meterd.v1.Metering", "meterd.v1.Admin", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }

    // Graceful shutdown: exit 0 and the socket file is removed.
    assert_eq!(agent.terminate().unwrap(), Some(0));
    assert!(!sock.exists());
}

#[test]
fn check_config_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, basic_config(&dir.path().join("d"), "")).unwrap();
    let out = Command::new(meterd_bin()).args(["check-config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("product app: identity=license"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, basic_config(&dir.path().join("d"), "").replace("\"gb_hours\"", "\"api_calls\"")).unwrap();
    let out = Command::new(meterd_bin()).args(["check-config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("products.app.dimensions[1]: \"api_calls\" is listed twice"), "{err}");

    // Environment overrides are validated like the file.
    let out = Command::new(meterd_bin())
        .args(["check-config"])
        .arg(&good)
        .env("METERD_LISTEN", "0.0.0.0:7171")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen:"));

    for sub in [&[][..], &["run"], &["check-config"], &["status"]] {
        let out = Command::new(meterd_bin()).args(sub).arg("--help").output().unwrap();
        assert!(out.status.success(), "{sub:?} --help failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"), "{sub:?}");
    }
}

#[test]
fn status_command_reports_a_running_agent() {
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::start(&basic_config(data.path(), "")).unwrap();
    let out = Command::new(meterd_bin()).args(["status", "--json", "--target", &agent.target()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], meterd::store::SCHEMA_VERSION);
    assert_eq!(v["products"][0]["name"], "app");
}
