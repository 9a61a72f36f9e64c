//! The TCP listener with TLS and a bearer token: wrong or missing tokens refused (and counted), the right one
//! accepted, plain text refused, health open for probes; the token never appears in logs or command output.

use std::process::{Command, Stdio};
use std::time::Duration;

use meterd_proto::v1;
use meterd_tests::meterd_bin;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const TOKEN: &str = "tok-7f3a9c2e51d84b6f0a1c";

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls")
}

fn event(key: &str) -> v1::RecordUsageRequest {
    v1::RecordUsageRequest {
        event: Some(v1::UsageEvent {
            idempotency_key: key.into(),
            customer: Some(v1::Customer { identity: Some(v1::customer::Identity::TenantId("t".into())) }),
            dimension: "api_calls".into(),
            quantity: "1".into(),
            timestamp: None,
            tags: Default::default(),
            product: String::new(),
        }),
    }
}

async fn call(channel: tonic::transport::Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    let token = token.map(|t| format!("Bearer {t}"));
    let mut m = v1::metering_client::MeteringClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(t) = &token {
            req.metadata_mut().insert("authorization", t.parse().unwrap());
        }
        Ok(req)
    });
    m.record_usage(event(&format!("k-{}", rand_key()))).await.map(|_| ())
}

fn rand_key() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_bearer_token_guard_the_tcp_listener() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let f = fixtures();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
unix_socket = "{sock}"
token_file = "{token}"
[server.tls]
cert_file = "{cert}"
key_file = "{key}"
[admin]
listen = "127.0.0.1:0"
[storage]
data_dir = "{data}"
[products.app]
identity = "license"
dimensions = ["api_calls"]
"#,
        sock = dir.path().join("m.sock").display(),
        token = token_file.display(),
        cert = f.join("server.pem").display(),
        key = f.join("server.key").display(),
        data = dir.path().join("data").display(),
    );
    let config_path = dir.path().join("meterd.toml");
    std::fs::write(&config_path, &config).unwrap();

    // check-config names the token file but never prints the token.
    let out = Command::new(meterd_bin()).arg("check-config").arg(&config_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains(TOKEN));
    assert!(shown.contains("token        from") && shown.contains("tls "), "{shown}");

    let log = dir.path().join("meterd.log");
    let mut child = Command::new(meterd_bin())
        .args(["run", "--config"])
        .arg(&config_path)
        .env("METERD_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let field = |name: &str| {
        line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).map(str::to_string).expect(name)
    };
    let (tcp, admin) = (field("tcp"), field("admin"));

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(f.join("ca.pem")).unwrap()))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{tcp}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();

    assert_eq!(call(channel.clone(), None).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        call(channel.clone(), Some("tok-7f3a9c2e51d84b6f0a1d")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(call(channel.clone(), Some("short")).await.unwrap_err().code(), Code::Unauthenticated);
    call(channel.clone(), Some(TOKEN)).await.expect("the right token is accepted");

    // Probes need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();

    // Plain text to a TLS listener gets nowhere.
    let plain = Endpoint::from_shared(format!("http://{tcp}")).unwrap().connect_timeout(Duration::from_secs(2));
    match plain.connect().await {
        Err(_) => {}
        Ok(ch) => assert!(call(ch, Some(TOKEN)).await.is_err(), "plain text must not be served"),
    }

    // The Unix socket is guarded by its file permissions instead.
    let unix = meterd_proto::client::Client::connect(
        &format!("unix:{}", dir.path().join("m.sock").display()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    call(unix.channel(), None).await.expect("unix socket needs no token");

    // Refusals are counted.
    let addr: std::net::SocketAddr = admin.parse().unwrap();
    let (_, metrics) = meterd_tests::stack::http_get(addr, "/metrics").await;
    let refused = metrics.lines().find_map(|l| l.strip_prefix("meterd_auth_refused_total ")).unwrap();
    assert!(refused.parse::<u64>().unwrap() >= 3, "{refused}");

    // status over the socket, and every log line: no token anywhere.
    let out = Command::new(meterd_bin())
        .args(["status", "--json", "--target"])
        .arg(format!("unix:{}", dir.path().join("m.sock").display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("call refused: missing or wrong bearer token"), "refusals are logged");
    assert!(!logs.contains(TOKEN), "the token leaked into the logs");
}

#[test]
fn non_loopback_listeners_need_tls_and_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"0.0.0.0:7171\"\n[storage]\ndata_dir = \"{}\"\n[products.app]\nidentity = \"license\"\ndimensions = [\"a\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(meterd_bin()).arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.listen:") && err.contains("server.token_file"), "{err}");
}
