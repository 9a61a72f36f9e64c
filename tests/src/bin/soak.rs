//! Soak: the real `meterd` binary under mixed load with faults on a fast clock, sampling its memory, its disk
//! use and the report's reconciliation every minute.
//!
//!     cargo build --release -p meterd -p meterd-tests
//!     target/release/soak --minutes 30 --speed 720
//!     target/release/soak --minutes 30 --speed 720 --repack-ratio 0   # baseline: sled alone
//!
//! At 720× a simulated day passes every two minutes, so 30 minutes cover ~15 days: many seals, submissions,
//! faults, and retention compactions (retention is set to 3 days for the soak).

use std::time::{Duration, Instant};

use clap::Parser;
use meterd_proto::v1;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Clock speed of the agent (and its embedded emulator).
    #[arg(long, default_value_t = 720.0)]
    speed: f64,
    /// Concurrent callers, each sending batches of 100 events.
    #[arg(long, default_value_t = 8)]
    callers: usize,
    /// Pause between one caller's batches.
    #[arg(long, default_value_t = 50)]
    pause_ms: u64,
    /// The agent's `storage.repack_ratio` (0 turns repacking off, for a side-by-side baseline).
    #[arg(long, default_value_t = 3.0)]
    repack_ratio: f64,
    /// The agent's `storage.cache_mb` (sled's page cache; 64, the agent's default, when not given).
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
    /// The agent's `METERD_LOG` (e.g. `warn,meterd::store=debug` for its slow-write log).
    #[arg(long, default_value = "warn")]
    agent_log: String,
    /// Where the agent's log goes (discarded when not given).
    #[arg(long)]
    agent_log_file: Option<std::path::PathBuf>,
}

const ACCOUNT: &str = "111122223333";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").to_string()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn put_faults(emulator: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let hostport = emulator.trim_start_matches("http://");
    let body = r#"{"throttle_probability":0.1,"internal_error_probability":0.05,"unprocessed_probability":0.05,"latency_ms":5,"drop_connection_probability":0.02,"drop_response_probability":0.02}"#;
    let mut s = std::net::TcpStream::connect(hostport)?;
    write!(
        s,
        "PUT /_emulator/faults HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    anyhow::ensure!(out.starts_with("HTTP/1.1 200"), "setting faults failed: {out}");
    Ok(())
}

/// One scrape of the agent's `/metrics`, as a lookup of unlabelled samples.
async fn metrics(admin: std::net::SocketAddr) -> anyhow::Result<impl Fn(&str) -> f64> {
    let (status, body) = meterd_tests::stack::http_get(admin, "/metrics").await;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    let samples = meterd_tests::stack::parse_metrics(&body);
    Ok(move |name: &str| samples.get(name).copied().unwrap_or(0.0))
}

/// p99, p99.9 and max (ms) of sorted call latencies (µs), and how many took over 50 ms.
fn tail(sorted: &[u64]) -> (f64, f64, f64, usize) {
    let at = |q: f64| {
        if sorted.is_empty() {
            return 0.0;
        }
        sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1000.0
    };
    (at(0.99), at(0.999), at(1.0), sorted.iter().filter(|&&us| us > 50_000).count())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir_in(".")?;
    let data = dir.path().join("data");
    let config = dir.path().join("soak.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
retention = "3d"
repack_ratio = {}
cache_mb = {}
[admin]
listen = "127.0.0.1:0"
[pipeline]
seal_grace = "2m"
tick = "100ms"
[products.app]
identity = "license"
product_code = "soak-product"
dimensions = ["api_calls", "gb_hours"]
"#,
            data.display(),
            args.repack_ratio,
            args.cache_mb
        ),
    )?;
    let mut child = std::process::Command::new(meterd_tests::meterd_bin())
        .args(["run", "--simulate", "--speed", &args.speed.to_string(), "--config"])
        .arg(&config)
        .env("METERD_LOG", &args.agent_log)
        .stdout(std::process::Stdio::piped())
        .stderr(match &args.agent_log_file {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path)?),
            None => std::process::Stdio::null(),
        })
        .spawn()?;
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    std::io::BufRead::read_line(&mut stdout, &mut line)?;
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let field =
        |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).map(str::to_string);
    let target = field("tcp").ok_or_else(|| anyhow::anyhow!("no tcp in {line:?}"))?;
    let emulator = field("emulator").ok_or_else(|| anyhow::anyhow!("no emulator in {line:?}"))?;
    let admin: std::net::SocketAddr = field("admin").ok_or_else(|| anyhow::anyhow!("no admin in {line:?}"))?.parse()?;
    put_faults(&emulator)?;
    let pid = child.id();
    println!(
        "soak: {} min at {}x, {} callers; agent pid {pid}, data {}",
        args.minutes,
        args.speed,
        args.callers,
        data.display()
    );

    let client = meterd_proto::client::Client::connect(&target, Duration::from_secs(5)).await?;
    let deadline = Instant::now() + Duration::from_secs(args.minutes * 60);
    // Every batch call's latency (µs) since the last sample: the write pauses a caller sees.
    let latencies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.callers {
        let mut m = client.metering();
        let pause = Duration::from_millis(args.pause_ms);
        let latencies = latencies.clone();
        tasks.spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c as u64);
            let mut sent = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let events = (0..100)
                    .map(|i| {
                        n += 1;
                        // Mostly the subscribed demo customer; some unknown ones (CustomerNotSubscribed) and
                        // unmapped tenants (held, then expired).
                        let identity = match rng.random_range(0..20) {
                            0 => v1::customer::Identity::TenantId(format!("tenant-{}", rng.random_range(0..3))),
                            1 => v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                                customer_aws_account_id: "999900001111".into(),
                                license_arn: "arn:aws:license-manager::999900001111:license:l-unknown".into(),
                            }),
                            _ => v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                                customer_aws_account_id: ACCOUNT.into(),
                                license_arn: format!("arn:aws:license-manager::{ACCOUNT}:license:l-demo-app"),
                            }),
                        };
                        v1::UsageEvent {
                            idempotency_key: format!("soak-{c}-{n}-{i}"),
                            customer: Some(v1::Customer { identity: Some(identity) }),
                            dimension: if rng.random_bool(0.5) { "api_calls" } else { "gb_hours" }.into(),
                            quantity: format!("{}.{:03}", rng.random_range(0..5), rng.random_range(0..1000)),
                            timestamp: None,
                            tags: if rng.random_bool(0.3) {
                                [("team".to_string(), format!("t{}", rng.random_range(0..4)))].into()
                            } else {
                                Default::default()
                            },
                            product: String::new(),
                        }
                    })
                    .collect();
                let called = Instant::now();
                let ok = m.record_usage_batch(v1::RecordUsageBatchRequest { events }).await.is_ok();
                latencies.lock().expect("latency lock").push(called.elapsed().as_micros() as u64);
                if ok {
                    sent += 100;
                }
                tokio::time::sleep(pause).await;
            }
            sent
        });
    }

    println!(
        "{:>5} {:>8} {:>9} {:>9} {:>7} {:>10} {:>10} {:>8} {:>7} {:>8} {:>8} {:>10} {:>7} {:>7} {:>7} {:>7} {:>6}",
        "min",
        "rss_mib",
        "disk_mib",
        "live_mib",
        "repacks",
        "repack_s",
        "events",
        "accepted",
        "pending",
        "expired",
        "records",
        "reconciled",
        "calls",
        "p99_ms",
        "p999_ms",
        "max_ms",
        ">50ms"
    );
    let mut all_calls: Vec<u64> = Vec::new();
    let start = Instant::now();
    let mut minute = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(60).min(deadline.saturating_duration_since(Instant::now()))).await;
        minute += 1;
        let st = client.admin().status(v1::StatusRequest {}).await?.into_inner();
        let r = client.admin().report(v1::ReportRequest {}).await?.into_inner();
        let t = r.totals.unwrap_or_default();
        let m = metrics(admin).await?;
        let mut calls = std::mem::take(&mut *latencies.lock().expect("latency lock"));
        calls.sort_unstable();
        let (p99, p999, max, slow) = tail(&calls);
        all_calls.extend_from_slice(&calls);
        println!(
            "{:>5} {:>8.1} {:>9.1} {:>9.1} {:>7} {:>10.1} {:>10} {:>8} {:>7} {:>8} {:>8} {:>10} {:>7} {:>7.1} {:>7.1} {:>7.1} {:>6}",
            minute,
            rss_kib(pid) as f64 / 1024.0,
            meterd::store::generation::dir_bytes(&data) as f64 / 1048576.0,
            m("meterd_store_live_bytes") / 1048576.0,
            m("meterd_store_repacks_total"),
            m("meterd_store_repack_seconds_total"),
            st.events_stored,
            t.accepted,
            st.pending_records,
            t.expired,
            r.rows.len(),
            t.reconciled,
            calls.len(),
            p99,
            p999,
            max,
            slow
        );
    }
    all_calls.sort_unstable();
    let (p99, p999, max, slow) = tail(&all_calls);
    println!(
        "batch calls: {} in all, p99 {p99:.1} ms, p99.9 {p999:.1} ms, max {max:.1} ms, {slow} over 50 ms",
        all_calls.len()
    );
    let mut sent = 0;
    while let Some(s) = tasks.join_next().await {
        sent += s?;
    }
    println!("sent {sent} events in {:.0} s", start.elapsed().as_secs_f64());
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait()?;
    println!("agent exit: {status}");
    Ok(())
}
