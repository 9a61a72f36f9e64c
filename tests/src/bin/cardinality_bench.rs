//! Cardinality benchmark: one hour with N distinct customer × dimension pairs — the largest seller AWS allows is
//! 900,000 records an hour (10 BatchMeterUsage calls/s × 25 records × 3,600 s). The real `meterd` binary runs as its
//! own process (so its RSS is its own) against the emulator in this process (AWS's quota: 10 calls/s).
//!
//!     cargo build --release -p meterd -p meterd-tests
//!     target/release/cardinality-bench --pairs 100000 --pairs 300000 --pairs 900000
//!
//! Per N it prints: the time to record the hour (batches of 1,000 from 4 callers), the time `Flush` takes to seal
//! it, the latency of unary `RecordUsage` calls issued while the seal runs (p50 / p99 / max), the agent's peak RSS
//! (VmHWM) after recording, after the seal and after the drain window, `Status` latency with the hour pending, the
//! unary `Report` (time and size, or the error it fails with), the submission rate through the emulator over
//! the drain window (`--drain-seconds`: a 900,000-record hour takes an hour at the quota) with the projected time to
//! drain the hour at that rate, and the drain time `Status` itself projects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meterd_emulator::{EmuCustomer, EmuProduct, Emulator, EmulatorConfig};
use meterd_proto::v1;

#[derive(Parser, Debug)]
struct Args {
    /// Distinct customer × dimension pairs in the hour (repeat for several runs).
    #[arg(long, default_values_t = [100_000usize])]
    pairs: Vec<usize>,
    /// Dimensions per customer (customers = pairs / dimensions).
    #[arg(long, default_value_t = 3)]
    dimensions: usize,
    /// Concurrent recording callers, each sending batches of `--batch` events.
    #[arg(long, default_value_t = 4)]
    callers: usize,
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// How long to watch submission after the seal (the drain rate is measured over this window).
    #[arg(long, alias = "drain-seconds", default_value_t = 30)]
    drain_secs: u64,
    /// The agent's `storage.seal_chunk` (buckets per atomic seal write); its default when unset.
    #[arg(long)]
    seal_chunk: Option<usize>,
    /// The agent's `storage.cache_mb`; its default when unset.
    #[arg(long)]
    cache_mb: Option<u64>,
    /// Where the data dirs go (a fresh temp dir under it per run).
    #[arg(long, default_value = ".")]
    data_root: std::path::PathBuf,
}

const PRODUCT_CODE: &str = "prod-cardinality";
const ACCOUNT: &str = "111122223333";
const HOUR_MS: i64 = 3_600_000;

fn license(n: usize) -> String {
    format!("arn:aws:license-manager::{ACCOUNT}:license:l-{n:08}")
}

fn dimension(d: usize) -> String {
    format!("dim_{d}")
}

/// VmHWM (peak resident set) and VmRSS of `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Row {
    pairs: usize,
    record_s: f64,
    seal_s: f64,
    sealed: u64,
    probe: Vec<Duration>,
    hwm_recorded: f64,
    hwm_sealed: f64,
    hwm_end: f64,
    rss_end: f64,
    status_ms: Vec<Duration>,
    /// What `Status` projected for the drain right after the seal, in seconds.
    status_drain_s: u64,
    report: String,
    drain_rps: f64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for &pairs in &args.pairs {
        rows.push(run(&args, pairs).await?);
    }
    println!(
        "\ncardinality benchmark: one hour of N customer × dimension pairs ({} dimensions), {} callers × batches of {}, \
         storage.cache_mb = {}; emulator quota 10 calls/s × 25 records = 250 records/s",
        args.dimensions,
        args.callers,
        args.batch,
        args.cache_mb.map_or("default".to_string(), |mb| mb.to_string())
    );
    println!(
        "{:>8} {:>9} {:>8} {:>8} {:>24} {:>26} {:>14} {:>28} {:>10} {:>10} {:>12}",
        "N",
        "record s",
        "seal s",
        "sealed",
        "ingest in seal p50/p99/max ms",
        "peak RSS MiB rec/seal/end",
        "status ms",
        "unary report",
        "drain r/s",
        "drain h",
        "status est h"
    );
    for r in rows {
        let mut probe = r.probe.clone();
        probe.sort();
        let mut status = r.status_ms.clone();
        status.sort();
        println!(
            "{:>8} {:>9.1} {:>8.2} {:>8} {:>24} {:>26} {:>14} {:>28} {:>10.1} {:>10.2} {:>12.2}",
            r.pairs,
            r.record_s,
            r.seal_s,
            r.sealed,
            format!(
                "{:.1}/{:.1}/{:.1} (n={})",
                ms(percentile(&probe, 0.5)),
                ms(percentile(&probe, 0.99)),
                ms(probe.last().copied().unwrap_or_default()),
                probe.len()
            ),
            format!("{:.0}/{:.0}/{:.0} (rss {:.0})", r.hwm_recorded, r.hwm_sealed, r.hwm_end, r.rss_end),
            format!("{:.0}/{:.0}", ms(percentile(&status, 0.5)), ms(status.last().copied().unwrap_or_default())),
            r.report,
            r.drain_rps,
            if r.drain_rps > 0.0 { r.sealed as f64 / r.drain_rps / 3600.0 } else { f64::INFINITY },
            r.status_drain_s as f64 / 3600.0,
        );
    }
    Ok(())
}

async fn run(args: &Args, pairs: usize) -> anyhow::Result<Row> {
    let dims: Vec<String> = (0..args.dimensions).map(dimension).collect();
    let customers = pairs.div_ceil(args.dimensions);
    eprintln!("N = {pairs}: {customers} customers × {} dimensions", args.dimensions);

    // The emulator, on the real clock, with every customer subscribed and AWS's quota.
    let mut emu = EmulatorConfig { rate_limit_per_sec: 10.0, seed: 7, ..EmulatorConfig::default() };
    emu.submission_window_secs = 24 * 3600;
    emu.products.push(EmuProduct { product_code: PRODUCT_CODE.into(), dimensions: dims.clone() });
    for n in 0..customers {
        emu.customers.push(EmuCustomer::licensed(PRODUCT_CODE, ACCOUNT, &license(n)));
    }
    let emulator = Emulator::new(emu, Arc::new(meterd::simulate::EmulatorClock(Arc::new(meterd::clock::SystemClock))));
    let handle = emulator.start(tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;

    let dir = meterd_tests::bench_data_dir(&args.data_root)?;
    let quoted: Vec<String> = dims.iter().map(|d| format!("{d:?}")).collect();
    // seal_grace of 2 h: the hour under test (the previous one) is sealed by `Flush`, not by the clock.
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "{data}"
{cache}
{chunk}
[pipeline]
seal_grace = "2h"
[accounts.emu]
region = "us-east-1"
endpoint_url = "{endpoint}"
test_credentials = true
calls_per_second = 10
[products.app]
identity = "license"
product_code = "{PRODUCT_CODE}"
dimensions = [{dims}]
"#,
        data = dir.path().join("data").display(),
        cache = args.cache_mb.map(|mb| format!("cache_mb = {mb}")).unwrap_or_default(),
        chunk = args.seal_chunk.map(|c| format!("seal_chunk = {c}")).unwrap_or_default(),
        endpoint = handle.endpoint_url(),
        dims = quoted.join(", "),
    );
    let agent = meterd_tests::Agent::start(&config)?;
    let pid = agent.pid();
    let client = agent.client().await?;

    // The hour under test: the previous one (ended, so `Flush` seals it; inside the 2 h grace, so nothing else does).
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let hour = now_ms - now_ms.rem_euclid(HOUR_MS) - HOUR_MS;
    let at = prost_types::Timestamp { seconds: (hour + 30 * 60_000) / 1000, nanos: 0 };

    // Record: every pair once.
    let started = Instant::now();
    let per_caller = pairs.div_ceil(args.callers);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.callers {
        let mut m = client.metering();
        let (dims, at, batch) = (dims.clone(), at, args.batch);
        let range = (c * per_caller)..((c + 1) * per_caller).min(pairs);
        tasks.spawn(async move {
            let ids: Vec<usize> = range.collect();
            for chunk in ids.chunks(batch) {
                let events = chunk
                    .iter()
                    .map(|&i| v1::UsageEvent {
                        idempotency_key: format!("card-{i}"),
                        customer: Some(v1::Customer {
                            identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                                customer_aws_account_id: ACCOUNT.into(),
                                license_arn: license(i / dims.len()),
                            })),
                        }),
                        dimension: dims[i % dims.len()].clone(),
                        quantity: "1".into(),
                        timestamp: Some(at),
                        tags: Default::default(),
                        product: String::new(),
                    })
                    .collect();
                let reply = m.record_usage_batch(v1::RecordUsageBatchRequest { events }).await?.into_inner();
                let refused = reply
                    .results
                    .iter()
                    .filter(|r| !matches!(r.outcome, Some(v1::event_result::Outcome::Receipt(_))))
                    .count();
                anyhow::ensure!(refused == 0, "{refused} events refused: {:?}", reply.results.first());
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let record_s = started.elapsed().as_secs_f64();
    let (hwm_recorded, _) = memory_mib(pid);
    eprintln!("  recorded in {record_s:.1} s");

    // Seal, with a unary probe recording into the current hour meanwhile.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let mut m = client.metering();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let ev = v1::UsageEvent {
                    idempotency_key: format!("probe-{n}"),
                    customer: Some(v1::Customer {
                        identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                            customer_aws_account_id: ACCOUNT.into(),
                            license_arn: license(0),
                        })),
                    }),
                    dimension: "dim_0".into(),
                    quantity: "1".into(),
                    timestamp: None,
                    tags: Default::default(),
                    product: String::new(),
                };
                let t = Instant::now();
                let _ = m.record_usage(v1::RecordUsageRequest { event: Some(ev) }).await;
                lat.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lat
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let flushed = client.admin().flush(v1::FlushRequest {}).await?.into_inner();
    let seal_s = t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probe = probe.await?;
    let (hwm_sealed, _) = memory_mib(pid);
    eprintln!("  sealed {} records in {seal_s:.2} s", flushed.records_sealed);

    // Status with the hour pending.
    let mut status_ms = Vec::new();
    let mut status_drain_s = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let s = client.admin().status(v1::StatusRequest {}).await?.into_inner();
        status_ms.push(t.elapsed());
        status_drain_s = status_drain_s.max(s.projected_drain_seconds);
    }

    // The unary report, as `meterd report` calls it.
    let t = Instant::now();
    let report = match client.admin().report(v1::ReportRequest {}).await {
        Ok(r) => {
            let r = r.into_inner();
            format!("{} rows {:.1} s", r.rows.len(), t.elapsed().as_secs_f64())
        }
        Err(e) => {
            let msg = e.message().split(':').next().unwrap_or_default().to_string();
            format!("fails: {:?}", msg.chars().take(18).collect::<String>())
        }
    };

    // Drain: the submission rate over a window (starting now: the submitter began at the seal).
    let before = emulator.counters().records_accepted;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.drain_secs)).await;
    let drain_rps = (emulator.counters().records_accepted - before) as f64 / t.elapsed().as_secs_f64();
    let (hwm_end, rss_end) = memory_mib(pid);
    drop(agent);
    Ok(Row {
        pairs,
        record_s,
        seal_s,
        sealed: flushed.records_sealed,
        probe,
        hwm_recorded,
        hwm_sealed,
        hwm_end,
        rss_end,
        status_ms,
        status_drain_s,
        report,
        drain_rps,
    })
}
