//! `identity = "deployment"` end to end (meterd on the buyer's host, AMI and container products): the agent
//! in-process on a manual clock, the real `aws-sdk-marketplacemetering` client speaking HTTP to the emulator's
//! `MeterUsage` and `RegisterUsage`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{TimeZone, Utc};
use meterd::clock::{ManualClock, SharedClock};
use meterd::config::Config;
use meterd::simulate::EmulatorClock;
use meterd_emulator::{EmuProduct, Emulator, EmulatorConfig, EmulatorHandle, Faults};
use meterd_proto::v1;
use tonic::Code;

const HOUR: i64 = 3_600_000;
const CODE: &str = "ami-prod-code";
const WAIT: Duration = Duration::from_secs(120);

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().timestamp_millis()
}

/// The emulator (product `ami-prod-code` with `dims`) and the agent (product `ami`, deployment identity).
struct Deploy {
    clock: Arc<ManualClock>,
    emulator: Emulator,
    handle: Option<EmulatorHandle>,
    client: meterd_proto::client::Client,
    admin: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data: tempfile::TempDir,
}

impl Deploy {
    async fn start(start_ms: i64, mut emu: EmulatorConfig, emulator_dims: &[&str], product_extra: &str) -> Self {
        let clock = ManualClock::new(start_ms);
        let shared: SharedClock = clock.clone();
        emu.products.push(EmuProduct {
            product_code: CODE.into(),
            dimensions: emulator_dims.iter().map(|d| d.to_string()).collect(),
        });
        emu.rate_limit_per_sec = 10.0;
        let emulator = Emulator::new(emu, Arc::new(EmulatorClock(shared.clone())));
        let handle = emulator.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
[pipeline]
seal_grace = "1m"
tick = "20ms"
[accounts.instance]
region = "us-east-1"
endpoint_url = "{}"
test_credentials = true
calls_per_second = 8
call_timeout = "2s"
[products.ami]
identity = "deployment"
product_code = "{CODE}"
dimensions = ["vcpu_hours", "gb_stored"]
{product_extra}
"#,
            data.path().join("data").display(),
            handle.endpoint_url()
        );
        let config = Config::from_toml_with_env(&text, std::path::Path::new("deployment.toml"), |_| None).unwrap();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(meterd::app::run(
            config,
            shared,
            None,
            move |r| {
                let _ = ready_tx.send((r.tcp.expect("tcp"), r.admin.expect("admin")));
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let (addr, admin) = tokio::time::timeout(Duration::from_secs(20), ready_rx).await.unwrap().unwrap();
        let client = meterd_proto::client::Client::connect(&addr.to_string(), Duration::from_secs(5)).await.unwrap();
        Deploy { clock, emulator, handle: Some(handle), client, admin, stop: Some(stop), join: Some(join), _data: data }
    }

    async fn record(&self, key: &str, dimension: &str, quantity: &str, at_ms: i64, tags: &[(&str, &str)]) {
        let ev = event(key, dimension, quantity, at_ms, tags);
        self.client.metering().record_usage(v1::RecordUsageRequest { event: Some(ev) }).await.expect("recorded");
    }

    async fn report(&self) -> v1::ReportResponse {
        self.client.admin().report(v1::ReportRequest {}).await.unwrap().into_inner()
    }

    async fn status(&self) -> v1::StatusResponse {
        self.client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner()
    }

    /// Polls until `done` holds for the report (a real-time bound only against hangs).
    async fn wait_report(&self, what: &str, done: impl Fn(&v1::ReportResponse) -> bool) -> v1::ReportResponse {
        let start = Instant::now();
        loop {
            let r = self.report().await;
            if done(&r) {
                return r;
            }
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}: {:?}", r.totals);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls until every check of `status` is settled (not pending or retrying).
    async fn settled_checks(&self) -> Vec<v1::DeploymentCheck> {
        let start = Instant::now();
        loop {
            let s = self.status().await;
            if !s.deployment_checks.is_empty()
                && s.deployment_checks.iter().all(|c| c.state == "ok" || c.state == "failed")
            {
                return s.deployment_checks;
            }
            assert!(start.elapsed() < WAIT, "checks never settled: {:?}", s.deployment_checks);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn advance(&self, total_ms: i64, step_ms: i64) {
        let mut moved = 0;
        while moved < total_ms {
            let s = step_ms.min(total_ms - moved);
            self.clock.advance(s);
            moved += s;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.admin);
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.join.take().unwrap().await.unwrap().expect("agent exits cleanly");
        self.handle.take().unwrap().shutdown().await;
    }
}

fn event(key: &str, dimension: &str, quantity: &str, at_ms: i64, tags: &[(&str, &str)]) -> v1::UsageEvent {
    v1::UsageEvent {
        idempotency_key: key.into(),
        customer: None,
        dimension: dimension.into(),
        quantity: quantity.into(),
        timestamp: Some(meterd_proto::Timestamp { seconds: at_ms.div_euclid(1000), nanos: 0 }),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        product: String::new(),
    }
}

fn check<'a>(checks: &'a [v1::DeploymentCheck], name: &str) -> &'a v1::DeploymentCheck {
    checks.iter().find(|c| c.check == name).unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_meter_usage_records_are_exact_and_customers_are_refused() {
    let t0 = at(2026, 11, 10, 9, 0);
    let d = Deploy::start(t0 + 5 * 60_000, EmulatorConfig::default(), &["vcpu_hours", "gb_stored"], "").await;

    // An event that names a customer is refused, naming the field; nothing is stored.
    let mut named = event("named", "vcpu_hours", "1", t0 + 60_000, &[]);
    named.customer = Some(v1::Customer { identity: Some(v1::customer::Identity::TenantId("acme".into())) });
    let e = d.client.metering().record_usage(v1::RecordUsageRequest { event: Some(named) }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("customer.tenant_id") && e.message().contains("identity = \"deployment\""),
        "{}",
        e.message()
    );

    // Hour 0: vcpu 1.5 untagged + 2.25 for team a = 3.75 → 3 units, 0.75 carried; gb 10.
    d.record("v0a", "vcpu_hours", "1.5", t0 + 6 * 60_000, &[]).await;
    d.record("v0b", "vcpu_hours", "2.25", t0 + 7 * 60_000, &[("team", "a")]).await;
    d.record("g0", "gb_stored", "10", t0 + 8 * 60_000, &[]).await;
    d.advance(HOUR, 10 * 60_000).await;
    // Hour 1: vcpu 0.5 + 0.75 carried = 1.25 → 1 unit; gb 4.
    d.record("v1", "vcpu_hours", "0.5", t0 + HOUR + 6 * 60_000, &[]).await;
    d.record("g1", "gb_stored", "4", t0 + HOUR + 7 * 60_000, &[]).await;
    d.advance(HOUR, 10 * 60_000).await;
    // Hour 2: vcpu 3 + 0.25 carried = 3.25 → 3 units (0.25 carried on, still open).
    d.record("v2", "vcpu_hours", "3", t0 + 2 * HOUR + 6 * 60_000, &[]).await;
    d.advance(HOUR, 10 * 60_000).await;
    let r = d
        .wait_report("every sealed hour accepted", |r| {
            let t = r.totals.as_ref().unwrap();
            t.pending == "0" && r.rows.iter().filter(|row| row.state == "accepted").count() == 5
        })
        .await;
    assert!(r.totals.as_ref().unwrap().reconciled);

    // One MeterUsage record per dimension × hour, each exact, stamped at its hour's start.
    let mut ledger: Vec<_> = d
        .emulator
        .ledger()
        .into_iter()
        .map(|e| {
            let allocs: Vec<(String, Vec<(String, String)>)> = e
                .allocations
                .iter()
                .map(|a| (a.quantity.clone(), a.tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect()))
                .collect();
            (e.operation, e.product_code, e.dimension, e.hour_start, e.timestamp as i64, e.quantity, allocs)
        })
        .collect();
    ledger.sort_by(|a, b| (a.3, &a.2).cmp(&(b.3, &b.2)));
    let h = |n: i64| (t0 + n * HOUR) / 1000;
    let row = |dim: &str, n: i64, q: &str, allocs: Vec<(String, Vec<(String, String)>)>| {
        ("MeterUsage".to_string(), CODE.to_string(), dim.to_string(), h(n), h(n), q.to_string(), allocs)
    };
    let team_a = vec![("team".to_string(), "a".to_string())];
    assert_eq!(
        ledger,
        vec![
            row("gb_stored", 0, "10", vec![]),
            row("vcpu_hours", 0, "3", vec![("1".into(), vec![]), ("2".into(), team_a)]),
            row("gb_stored", 1, "4", vec![]),
            row("vcpu_hours", 1, "1", vec![]),
            row("vcpu_hours", 2, "3", vec![]),
        ]
    );
    let c = d.emulator.counters();
    assert_eq!((c.duplicates, c.calls_to("BatchMeterUsage")), (0, 0), "{c:?}");

    // Every call carries a ClientToken meterd derived (64 hex), not the SDK's random UUID.
    for req in d.emulator.requests().iter().filter(|r| r.operation == "MeterUsage") {
        let body: serde_json::Value = serde_json::from_str(&req.body).unwrap();
        let token = body["ClientToken"].as_str().unwrap_or_default();
        if body["DryRun"] == true {
            continue;
        }
        assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{}", req.body);
    }

    // The start-up DryRun passed for both dimensions; status and metrics say so.
    let checks = d.settled_checks().await;
    for dim in ["vcpu_hours", "gb_stored"] {
        let c = check(&checks, &format!("dry_run:{dim}"));
        assert_eq!((c.product.as_str(), c.state.as_str()), ("ami", "ok"), "{c:?}");
    }
    let m = d.metrics().await;
    assert!(
        m.contains(
            "meterd_deployment_check_ok{product=\"ami\",check=\"dry_run:vcpu_hours\",state=\"ok\",error=\"\"} 1"
        ),
        "{m}"
    );
    assert_eq!(d.status().await.products[0].identity, "deployment");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_not_accepted_within_six_hours_expires_unsent() {
    let t0 = at(2026, 11, 10, 9, 0);
    let emu = EmulatorConfig {
        faults: Faults { internal_error_probability: 1.0, ..Faults::default() },
        ..EmulatorConfig::default()
    };
    let d = Deploy::start(t0 + 5 * 60_000, emu, &["vcpu_hours", "gb_stored"], "").await;
    d.record("v0", "vcpu_hours", "5", t0 + 6 * 60_000, &[]).await;
    d.advance(HOUR + 10 * 60_000, 10 * 60_000).await;
    // The 6 h MeterUsage window (not the pipeline's 24 h) less the 30 min safety margin.
    let r = d.wait_report("the record sealed", |r| r.rows.iter().any(|row| row.state != "open")).await;
    let deadline = r.rows[0].deadline.as_ref().unwrap().seconds * 1000;
    assert_eq!(deadline, t0 + 6 * HOUR - 30 * 60_000);
    let tried = Instant::now();
    while d.emulator.counters().calls_to("MeterUsage") < 3 {
        assert!(tried.elapsed() < WAIT, "never sent");
        d.advance(60_000, 60_000).await;
    }
    d.advance(5 * HOUR, 10 * 60_000).await;
    let r = d.wait_report("the record expired", |r| r.totals.as_ref().unwrap().expired == "5").await;
    let t = r.totals.unwrap();
    assert!(t.reconciled && t.accepted == "0" && t.pending == "0", "{t:?}");
    assert!(d.emulator.ledger().is_empty());
    // Expired means never sent again. The start-up DryRuns (also MeterUsage calls, failing with every 5xx here)
    // retry on real time with jittered backoff: wait until they have settled before counting, or a late DryRun
    // retry on a loaded machine would look like a resend.
    d.settled_checks().await;
    let calls = d.emulator.counters().calls_to("MeterUsage");
    d.emulator.set_faults(Faults::default());
    d.advance(HOUR, 10 * 60_000).await;
    assert_eq!(d.emulator.counters().calls_to("MeterUsage"), calls);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_failures_are_reported_in_status_and_metrics() {
    let t0 = at(2026, 11, 10, 9, 0);
    // The listing has no gb_stored dimension: that one dimension fails, the other passes.
    let d = Deploy::start(t0, EmulatorConfig::default(), &["vcpu_hours"], "").await;
    let checks = d.settled_checks().await;
    assert_eq!(check(&checks, "dry_run:vcpu_hours").state, "ok");
    let c = check(&checks, "dry_run:gb_stored");
    assert_eq!((c.state.as_str(), c.error_code.as_str()), ("failed", "InvalidUsageDimensionException"), "{c:?}");
    let m = d.metrics().await;
    assert!(
        m.contains("check=\"dry_run:gb_stored\",state=\"failed\",error=\"InvalidUsageDimensionException\"} 0"),
        "{m}"
    );
    // A DryRun meters nothing.
    assert!(d.emulator.ledger().is_empty());
    d.stop().await;

    // The buyer is not entitled: every dimension fails with CustomerNotEntitledException.
    let emu = EmulatorConfig { not_entitled: vec![CODE.into()], ..EmulatorConfig::default() };
    let d = Deploy::start(t0, emu, &["vcpu_hours", "gb_stored"], "").await;
    let checks = d.settled_checks().await;
    for dim in ["vcpu_hours", "gb_stored"] {
        let c = check(&checks, &format!("dry_run:{dim}"));
        assert_eq!((c.state.as_str(), c.error_code.as_str()), ("failed", "CustomerNotEntitledException"), "{c:?}");
    }
    d.stop().await;

    // A throttled DryRun is tried again, not reported as a failure. Seed 1 with a 50% throttle throttles the
    // emulator's first call and lets the next ones through (the draws depend on the call order only).
    let emu = EmulatorConfig {
        seed: 1,
        faults: Faults { throttle_probability: 0.5, ..Faults::default() },
        ..EmulatorConfig::default()
    };
    let d = Deploy::start(t0, emu, &["vcpu_hours", "gb_stored"], "").await;
    let checks = d.settled_checks().await;
    let first = check(&checks, "dry_run:vcpu_hours");
    assert_eq!((first.state.as_str(), first.attempts), ("ok", 2), "{first:?}");
    assert_eq!(check(&checks, "dry_run:gb_stored").state, "ok");
    assert_eq!(d.emulator.counters().injected.throttling, 1);
    d.stop().await;
}

/// The `Signature` JWT verifies with the public key the emulator serves, and names the product and nonce.
fn verify_token(emulator: &Emulator, jwt: &str) -> serde_json::Value {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    let key = emulator.register_usage_public_key();
    let point = B64.decode(key["public_key"].as_str().unwrap()).unwrap();
    let (input, sig) = jwt.rsplit_once('.').expect("a JWT");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &B64.decode(sig).unwrap())
        .expect("signature verifies");
    serde_json::from_slice(&B64.decode(input.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_usage_paths() {
    let t0 = at(2026, 11, 10, 9, 0);
    let paid = "register_usage = true";

    // On a container platform with an entitled buyer: a signed token, with the nonce meterd sent.
    let emu = EmulatorConfig { container_platform: true, ..EmulatorConfig::default() };
    let d = Deploy::start(t0, emu, &["vcpu_hours", "gb_stored"], paid).await;
    let checks = d.settled_checks().await;
    let c = check(&checks, "register_usage");
    assert_eq!((c.state.as_str(), c.attempts), ("ok", 1), "{c:?}");
    let claims = verify_token(&d.emulator, &c.signature);
    assert_eq!(claims["productCode"], CODE);
    let nonce = claims["nonce"].as_str().expect("a nonce");
    assert!(c.message.contains(nonce), "{c:?}");
    let req = d.emulator.requests().into_iter().find(|r| r.operation == "RegisterUsage").unwrap();
    assert!(req.body.contains("\"PublicKeyVersion\":1") && req.body.contains(nonce), "{}", req.body);
    d.stop().await;

    // Not a container platform (an EC2 instance) and a buyer not entitled: final answers, shown in status and
    // metrics; meterd still records and meters.
    for (emu, code) in [
        (EmulatorConfig::default(), "PlatformNotSupportedException"),
        (
            EmulatorConfig { container_platform: true, not_entitled: vec![CODE.into()], ..EmulatorConfig::default() },
            "CustomerNotEntitledException",
        ),
    ] {
        let entitled = code != "CustomerNotEntitledException";
        let d = Deploy::start(t0 + 5 * 60_000, emu, &["vcpu_hours", "gb_stored"], paid).await;
        let checks = d.settled_checks().await;
        let c = check(&checks, "register_usage");
        assert_eq!((c.state.as_str(), c.error_code.as_str(), c.attempts), ("failed", code, 1), "{c:?}");
        assert!(c.signature.is_empty());
        let m = d.metrics().await;
        assert!(m.contains(&format!("check=\"register_usage\",state=\"failed\",error=\"{code}\"}} 0")), "{m}");
        d.record("v0", "vcpu_hours", "2", t0 + 6 * 60_000, &[]).await;
        let r = d.report().await;
        assert_eq!(r.totals.unwrap().open, "2");
        if entitled {
            d.advance(HOUR + 10 * 60_000, 10 * 60_000).await;
            d.wait_report("accepted", |r| r.totals.as_ref().unwrap().accepted == "2").await;
        }
        d.stop().await;
    }

    // Transient failures are retried with backoff until AWS answers.
    let emu = EmulatorConfig {
        container_platform: true,
        faults: Faults { throttle_probability: 1.0, ..Faults::default() },
        ..EmulatorConfig::default()
    };
    let d = Deploy::start(t0, emu, &["vcpu_hours", "gb_stored"], paid).await;
    let start = Instant::now();
    loop {
        let s = d.status().await;
        let c = check(&s.deployment_checks, "register_usage");
        assert_ne!(c.state, "failed", "throttling is transient: retried, not final");
        if c.state == "retrying" && c.attempts >= 2 {
            assert_eq!(c.error_code, "ThrottlingException");
            break;
        }
        assert!(start.elapsed() < WAIT, "{c:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    d.emulator.set_faults(Faults::default());
    let checks = d.settled_checks().await;
    let c = check(&checks, "register_usage");
    assert!(c.state == "ok" && c.attempts >= 3, "{c:?}");
    verify_token(&d.emulator, &c.signature);
    d.stop().await;
}

/// `meterd check-config --aws`: one DryRun per dimension, printed; exit 1 when one fails, 0 when all pass.
#[test]
fn check_config_aws_sends_a_dry_run_per_dimension() {
    let emulator = meterd_tests::EmulatorProcess::start(&format!(
        "[[products]]\nproduct_code = \"{CODE}\"\ndimensions = [\"vcpu_hours\"]\n"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |dims: &str| {
        let path = dir.path().join("meterd.toml");
        std::fs::write(
            &path,
            format!(
                "[storage]\ndata_dir = \"{}\"\n[accounts.instance]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
                 test_credentials = true\n[products.ami]\nidentity = \"deployment\"\nproduct_code = \"{CODE}\"\n\
                 dimensions = {dims}\n",
                dir.path().join("data").display(),
                emulator.url
            ),
        )
        .unwrap();
        let out = std::process::Command::new(meterd_tests::meterd_bin())
            .args(["check-config", "--aws"])
            .arg(&path)
            .env("METERD_LOG", "error")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (code, out) = run("[\"vcpu_hours\", \"gb_stored\"]");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("aws: ami dry_run:vcpu_hours: ok"), "{out}");
    assert!(out.contains("aws: ami dry_run:gb_stored: FAILED InvalidUsageDimensionException"), "{out}");
    let (code, out) = run("[\"vcpu_hours\"]");
    assert_eq!(code, Some(0), "{out}");
    // Nothing was metered: two DryRuns of vcpu_hours, one of gb_stored.
    assert_eq!(emulator.inspect("/_emulator/ledger").unwrap(), serde_json::json!([]));
    assert_eq!(emulator.inspect("/_emulator/counters").unwrap()["calls"]["MeterUsage"], 3);
}

/// On the buyer's instance: no Region and no credentials in the config. The standard chains find both in the
/// instance metadata service (IMDSv2: a session token, the Region, the instance profile's credentials), and the
/// MeterUsage calls are signed with the instance profile's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_and_credentials_come_from_the_instance_metadata() {
    let emulator = meterd_tests::EmulatorProcess::start(&format!(
        "[[products]]\nproduct_code = \"{CODE}\"\ndimensions = [\"vcpu_hours\"]\n"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n[pipeline]\nseal_grace = \"4h\"\ntick = \"20ms\"\n\
         [accounts.instance]\nendpoint_url = \"{}\"\n[products.ami]\nidentity = \"deployment\"\n\
         product_code = \"{CODE}\"\ndimensions = [\"vcpu_hours\"]\n",
        dir.path().join("data").display(),
        emulator.url
    );
    let nowhere = dir.path().join("no-such-file");
    let nowhere = nowhere.to_str().unwrap();
    let agent = meterd_tests::Agent::start_with_aws_env(
        &config,
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", emulator.url.as_str()),
            ("AWS_CONFIG_FILE", nowhere),
            ("AWS_SHARED_CREDENTIALS_FILE", nowhere),
        ],
    )
    .unwrap();
    let client = agent.client().await.unwrap();
    let hour = meterd::clock::system_now_ms() / HOUR * HOUR - HOUR;
    let ev = event("imds-1", "vcpu_hours", "7", hour + 60_000, &[]);
    client.metering().record_usage(v1::RecordUsageRequest { event: Some(ev) }).await.unwrap();
    client.admin().flush(v1::FlushRequest {}).await.unwrap();
    let start = Instant::now();
    loop {
        let ledger = emulator.inspect("/_emulator/ledger").unwrap();
        if ledger.as_array().unwrap().len() == 1 {
            assert_eq!(
                (ledger[0]["quantity"].as_str(), ledger[0]["hour_start"].as_i64()),
                (Some("7"), Some(hour / 1000))
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "never billed: {}", emulator.inspect("/_emulator/requests").unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let imds = emulator.inspect("/_emulator/imds").unwrap();
    assert!(imds["tokens"].as_u64().unwrap() >= 1, "{imds}");
    assert!(imds["region_requests"].as_u64().unwrap() >= 1, "{imds}");
    assert!(imds["credential_requests"].as_u64().unwrap() >= 1, "{imds}");
    assert_eq!(imds["access_keys"], serde_json::json!(["ASIAEMULATORIMDS0001"]), "{imds}");
    let s = client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(check(&s.deployment_checks, "dry_run:vcpu_hours").state, "ok");
}
