//! What standard gRPC tooling and first-time users meet, against the real binary: server reflection in both
//! versions (v1 and v1alpha), the health service as its spec describes it (Watch on an unknown service streams
//! SERVICE_UNKNOWN and stays open; shutdown ends open watches), and `run --simulate` cleaning up after itself.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use meterd_tests::{Agent, basic_config, meterd_bin};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SERVICES: [&str; 4] = ["meterd.v1.Metering", "meterd.v1.Admin", "meterd.v1.Customers", "grpc.health.v1.Health"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_every_service() {
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::start(&basic_config(&data.path().join("data"), "")).unwrap();
    let channel = agent.client().await.unwrap().channel();

    use tonic_reflection::pb::v1;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let list = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([list])).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1: no service list")
    };
    let names: Vec<_> = l.service.into_iter().map(|s| s.name).collect();
    for want in SERVICES {
        assert!(names.iter().any(|n| n == want), "v1: {want} missing from {names:?}");
    }

    use tonic_reflection::pb::v1alpha;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let symbol = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "meterd.v1.Metering".into(),
        )),
    };
    let stream = client.server_reflection_info(tokio_stream::iter([list, symbol])).await;
    let mut stream = stream.expect("v1alpha reflection is served").into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha: no service list")
    };
    let names: Vec<_> = l.service.into_iter().map(|s| s.name).collect();
    for want in SERVICES {
        assert!(names.iter().any(|n| n == want), "v1alpha: {want} missing from {names:?}");
    }
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(f)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha: no descriptor for meterd.v1.Metering")
    };
    assert!(!f.file_descriptor_proto.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_every_service_and_watch_follows_the_spec() {
    let data = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&basic_config(&data.path().join("data"), "")).unwrap();
    let mut health = HealthClient::new(agent.client().await.unwrap().channel());
    let serving = ServingStatus::Serving as i32;
    for service in ["", "meterd.v1.Metering", "meterd.v1.Admin", "meterd.v1.Customers"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, serving, "{service:?}");
    }
    let err = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Watch on an unknown service: SERVICE_UNKNOWN, and the call stays open (a later registration would be
    // sent on it). Nothing else is ever sent before shutdown, so a wait that ends without a message or the
    // stream's end cannot be a false alarm, however slow the machine.
    let mut unknown =
        health.watch(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap().into_inner();
    let first = unknown.message().await.unwrap().expect("a first message");
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    let mut known =
        health.watch(HealthCheckRequest { service: "meterd.v1.Customers".into() }).await.unwrap().into_inner();
    assert_eq!(known.message().await.unwrap().expect("a first message").status, serving);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), unknown.message()).await.is_err(),
        "the Watch on an unknown service ended or sent a second message"
    );

    // Shutdown: the known service's watch reports NOT_SERVING and both end, so they never hold the agent up.
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let last = known.message().await.unwrap().expect("NOT_SERVING before the end");
    assert_eq!(last.status, ServingStatus::NotServing as i32);
    assert!(matches!(known.message().await, Ok(None)), "the known watch did not end at shutdown");
    assert!(matches!(unknown.message().await, Ok(None)), "the unknown watch did not end at shutdown");
    let code = tokio::task::spawn_blocking(move || agent.terminate().unwrap()).await.unwrap();
    assert_eq!(code, Some(0));
}

/// Runs `meterd run --simulate` with `env`, returns its ready line after SIGTERM and a clean exit.
fn simulate_until_sigterm(tmp: &std::path::Path, env: &[(&str, &std::path::Path)]) -> String {
    let mut cmd = Command::new(meterd_bin());
    cmd.args(["run", "--simulate"])
        .env("TMPDIR", tmp)
        .env("METERD_LISTEN", "127.0.0.1:0")
        .env("METERD_LOG", "off")
        .env_remove("METERD_DATA_DIR")
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let child = &mut child.0;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("a ready line").unwrap();
    // Keep draining (the demo narrates every few seconds) so the agent never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let dir = data_dir_of(&ready);
    assert!(dir.join("CURRENT").exists() || dir.is_dir(), "{ready}: no data dir at {}", dir.display());
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0), "{ready}");
    ready
}

/// A failed assertion must not leave the agent running (it would hold the test's output pipe open).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn data_dir_of(ready: &str) -> PathBuf {
    let w = ready.split_whitespace().find_map(|w| w.strip_prefix("data_dir="));
    PathBuf::from(w.unwrap_or_else(|| panic!("no data_dir= on the ready line: {ready}")))
}

#[test]
fn simulate_removes_its_throwaway_data_dir_and_keeps_a_chosen_one() {
    let tmp = tempfile::tempdir().unwrap();
    let ready = simulate_until_sigterm(tmp.path(), &[]);
    assert!(ready.starts_with("meterd ready ") && ready.contains("removed on exit"), "{ready}");
    let dir = data_dir_of(&ready);
    assert!(dir.starts_with(tmp.path()), "{ready}");
    assert!(!dir.exists(), "{} left behind", dir.display());

    // A data dir the user chose (METERD_DATA_DIR) is theirs: kept.
    let chosen = tmp.path().join("keep-me");
    let ready = simulate_until_sigterm(tmp.path(), &[("METERD_DATA_DIR", &chosen)]);
    assert!(!ready.contains("removed on exit"), "{ready}");
    assert!(chosen.is_dir(), "{} was removed", chosen.display());
}

/// `run --simulate --speed 1 --clock-offset-ms X` runs the agent (and its emulator) X ms from the wall clock —
/// what fleet-bench relies on to end an hour for several agents at once — and refuses the offset with a scaled
/// clock, where processes could not agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_clock_offset_shifts_the_agents_hour_and_needs_speed_one() {
    use meterd::clock::{HOUR_MS, hour_start, system_now_ms};
    let data = tempfile::tempdir().unwrap();
    let offset = -3 * HOUR_MS;
    let agent = Agent::start_with_args(
        &basic_config(&data.path().join("data"), ""),
        &["--simulate", "--speed", "1", "--clock-offset-ms", &offset.to_string()],
    )
    .unwrap();
    assert!(agent.emulator.is_some(), "no emulator= on the ready line");
    let before = system_now_ms();
    let ev = meterd_proto::v1::UsageEvent {
        idempotency_key: "offset-1".into(),
        customer: Some(meterd_proto::v1::Customer {
            identity: Some(meterd_proto::v1::customer::Identity::AwsAccount(meterd_proto::v1::AwsCustomer {
                customer_aws_account_id: "111122223333".into(),
                license_arn: "arn:aws:license-manager::111122223333:license:l-offset".into(),
            })),
        }),
        dimension: "api_calls".into(),
        quantity: "1".into(),
        ..Default::default()
    };
    let receipt = agent
        .client()
        .await
        .unwrap()
        .metering()
        .record_usage(meterd_proto::v1::RecordUsageRequest { event: Some(ev) })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    let after = system_now_ms();
    let hour_ms = receipt.usage_hour.unwrap().seconds * 1000;
    // The hour may turn between the two readings: either side is the shifted clock's.
    assert!(
        [hour_start(before + offset), hour_start(after + offset)].contains(&hour_ms),
        "usage hour {hour_ms}, expected the hour of {} (3 h ago)",
        before + offset
    );

    // Its own data dir: the first agent holds the other's lock. Killed if it starts (the refusal is missing).
    let other = basic_config(&data.path().join("other"), "");
    let config = data.path().join("other.toml");
    std::fs::write(&config, other).unwrap();
    let child = Command::new(meterd_bin())
        .args(["run", "--simulate", "--speed", "120", "--clock-offset-ms", "1000", "--config"])
        .arg(&config)
        .env("METERD_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        let _ = tx.send(s);
    });
    // The refusal comes at once; a wait this long only bounds a test that would otherwise hang.
    let err = rx.recv_timeout(Duration::from_secs(60)).expect("meterd ran with --clock-offset-ms at --speed 120");
    assert!(!child.0.wait().unwrap().success());
    assert!(err.contains("--clock-offset-ms needs --speed 1"), "{err}");
}
