//! History benchmark: does the store grow with every event ever recorded, or only with what the job needs now?
//! The real `meterd` binary (`run --simulate` on a scaled clock, its own process) records N events spread over
//! many simulated days; retention runs as the simulated hours pass.
//!
//!     cargo build --release -p meterd -p meterd-tests
//!     target/release/history-bench --events 1000000 --events 10000000
//!
//! Per N it prints: events still inside the dedupe window (`--dedupe-window`: store v2 keeps idempotency keys that
//! long; a v1 store kept them for the whole `retention`) and the data dir's bytes per such event, the data dir at the end and its peak, the longest and p99.9 latency of the batch
//! calls while retention ran, and the time from a SIGKILL to serving again (the restart's ready line); then the data
//! dir at each simulated day (flat once the window has passed, if the store is bounded by what the job needs).
//!
//! The restarted agent's scaled clock starts again from the real time (behind the recorded data); only its start-up
//! time is measured.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use meterd_proto::v1;

#[derive(Parser, Debug)]
struct Args {
    /// Events to record (repeat for several runs).
    #[arg(long, default_values_t = [1_000_000u64])]
    events: Vec<u64>,
    /// Simulated days the events are spread over, at least (more when N at `--max-rate` takes longer).
    #[arg(long, default_value_t = 10.0)]
    days: f64,
    /// The agent's clock speed (`run --simulate --speed`, at most 3600: an hour a second).
    #[arg(long, default_value_t = 3600.0)]
    speed: f64,
    /// The highest ingest rate to ask for, in events/s of real time (batches of 1,000 from 2 callers).
    #[arg(long, default_value_t = 30_000.0)]
    max_rate: f64,
    /// The store's retention (the ledger; v1 also kept every event's key this long).
    #[arg(long, default_value = "3d")]
    retention: String,
    /// `storage.dedupe_window`: how long store v2 keeps an idempotency key.
    #[arg(long, default_value = "48h")]
    dedupe_window: String,
    /// Print every batch call slower than this (ms) to stderr, with its end as Unix ms and simulated day, to line
    /// it up with the agent's log (0: off).
    #[arg(long, default_value_t = 0)]
    slow_ms: u64,
    #[arg(long, default_value = ".")]
    data_root: std::path::PathBuf,
}

const ACCOUNT: &str = "111122223333";
const BATCH: u64 = 1_000;
const CALLERS: u64 = 2;

struct Row {
    events: u64,
    days: f64,
    secs: f64,
    in_window: u64,
    end_bytes: u64,
    peak_bytes: u64,
    lat: Histogram<u64>,
    restart_s: f64,
    /// (simulated day, data dir bytes), sampled as the run goes.
    by_day: Vec<(f64, u64)>,
}

struct Running {
    child: std::process::Child,
    target: String,
}

/// `meterd run --simulate --config` at `speed`; waits for the ready line, returns how long that took.
fn start(config: &std::path::Path, speed: f64) -> anyhow::Result<(Running, Duration)> {
    let t = Instant::now();
    let mut child = std::process::Command::new(meterd_tests::meterd_bin())
        .args(["run", "--simulate", "--speed", &speed.to_string(), "--config"])
        .arg(config)
        .env("METERD_LOG", std::env::var("METERD_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let ready = t.elapsed();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let target = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tcp=").map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("no tcp= in the ready line {line:?}"))?;
    Ok((Running { child, target }, ready))
}

fn parse_days(s: &str) -> anyhow::Result<f64> {
    let d = humantime::parse_duration(s)?;
    Ok(d.as_secs_f64() / 86_400.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let window_days = parse_days(&args.dedupe_window)?.min(parse_days(&args.retention)?);
    let mut rows = Vec::new();
    for &n in &args.events {
        rows.push(run(&args, n, window_days).await?);
    }
    let rows_by_day: Vec<(u64, Vec<(f64, u64)>)> = rows.iter().map(|r| (r.events, r.by_day.clone())).collect();
    println!(
        "\nhistory benchmark: N events over at least {} simulated days at {}×, dedupe window {}, batches of \
         {BATCH} from {CALLERS} callers",
        args.days, args.speed, args.dedupe_window
    );
    println!(
        "{:>10} {:>8} {:>8} {:>11} {:>10} {:>12} {:>12} {:>11} {:>11} {:>11} {:>8} {:>8}",
        "N",
        "days",
        "real s",
        "in window",
        "B/event",
        "dir end MB",
        "dir peak MB",
        "p99.9 ms",
        "max ms",
        "restart s",
        "p50 ms",
        "p99 ms"
    );
    for r in rows {
        println!(
            "{:>10} {:>8.1} {:>8.1} {:>11} {:>10.1} {:>12.1} {:>12.1} {:>11.1} {:>11.1} {:>11.2} {:>8.1} {:>8.1}",
            r.events,
            r.days,
            r.secs,
            r.in_window,
            r.end_bytes as f64 / r.in_window.max(1) as f64,
            r.end_bytes as f64 / 1e6,
            r.peak_bytes as f64 / 1e6,
            r.lat.value_at_quantile(0.999) as f64 / 1000.0,
            r.lat.max() as f64 / 1000.0,
            r.restart_s,
            r.lat.value_at_quantile(0.5) as f64 / 1000.0,
            r.lat.value_at_quantile(0.99) as f64 / 1000.0,
        );
    }
    for r in &rows_by_day {
        let days: Vec<String> = r.1.iter().map(|(d, b)| format!("day {d:.0}: {:.1}", *b as f64 / 1e6)).collect();
        println!("N = {}: data dir MB by simulated day — {}", r.0, days.join(", "));
    }
    Ok(())
}

async fn run(args: &Args, n: u64, window_days: f64) -> anyhow::Result<Row> {
    let speed = args.speed;
    let real_secs = (args.days * 86_400.0 / speed).max(n as f64 / args.max_rate);
    let days = real_secs * speed / 86_400.0;
    let rate = n as f64 / real_secs;
    eprintln!("N = {n}: {rate:.0} events/s for {real_secs:.0} s, {days:.1} simulated days at {speed}×");
    let dir = meterd_tests::bench_data_dir(&args.data_root)?;
    let data = dir.path().join("data");
    let config = dir.path().join("history.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
retention = "{}"
dedupe_window = "{}"
[pipeline]
max_lateness = "1h"
[products.app]
identity = "license"
dimensions = ["api_calls", "gb_hours"]
"#,
            data.display(),
            args.retention,
            args.dedupe_window
        ),
    )?;
    let (mut agent, _) = start(&config, speed)?;
    let client = meterd_proto::client::Client::connect(&agent.target, Duration::from_secs(5)).await?;

    // Data dir sampler: the peak over the run, and the size at each whole simulated day.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done, data) = (peak.clone(), done.clone(), data.clone());
        let t0 = Instant::now();
        std::thread::spawn(move || {
            let mut by_day = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let bytes = meterd::store::generation::dir_bytes(&data);
                peak.fetch_max(bytes, Ordering::Relaxed);
                let day = t0.elapsed().as_secs_f64() * speed / 86_400.0;
                if day.floor() as usize >= by_day.len() {
                    by_day.push((day.floor(), bytes));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            by_day
        })
    };

    // Callers pace themselves to `rate` overall; every call's latency goes into the histogram.
    let started = Instant::now();
    let per_caller = n / CALLERS;
    let slow_ms = args.slow_ms;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        let mut m = client.metering();
        let interval = Duration::from_secs_f64(BATCH as f64 * CALLERS as f64 / rate);
        tasks.spawn(async move {
            let mut lat = Histogram::<u64>::new(3)?;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0;
            while sent < per_caller {
                tick.tick().await;
                let events = (0..BATCH.min(per_caller - sent))
                    .map(|i| v1::UsageEvent {
                        idempotency_key: format!("hist-{c}-{}", sent + i),
                        customer: Some(v1::Customer {
                            identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                                customer_aws_account_id: ACCOUNT.into(),
                                license_arn: format!("arn:aws:license-manager::{ACCOUNT}:license:l-demo-app"),
                            })),
                        }),
                        dimension: if i % 2 == 0 { "api_calls" } else { "gb_hours" }.into(),
                        quantity: "1".into(),
                        timestamp: None,
                        tags: Default::default(),
                        product: String::new(),
                    })
                    .collect::<Vec<_>>();
                let count = events.len() as u64;
                let t = Instant::now();
                m.record_usage_batch(v1::RecordUsageBatchRequest { events }).await?;
                let took = t.elapsed();
                lat.record(took.as_micros() as u64)?;
                if slow_ms > 0 && took >= Duration::from_millis(slow_ms) {
                    let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
                    let day = started.elapsed().as_secs_f64() * speed / 86_400.0;
                    eprintln!("slow call: {} ms, ended at {unix_ms} (simulated day {day:.2})", took.as_millis());
                }
                sent += count;
            }
            anyhow::Ok(lat)
        });
    }
    let mut lat = Histogram::<u64>::new(3)?;
    while let Some(r) = tasks.join_next().await {
        lat.add(r??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let by_day = sampler.join().unwrap_or_default();
    let end_bytes = meterd::store::generation::dir_bytes(&data);
    let in_window = ((n as f64) * (window_days / days).min(1.0)) as u64;

    // SIGKILL, then time the restart to its ready line.
    agent.child.kill()?;
    agent.child.wait()?;
    let (mut again, ready) = start(&config, speed)?;
    again.child.kill()?;
    again.child.wait()?;
    Ok(Row {
        events: n,
        days,
        secs,
        in_window,
        end_bytes,
        peak_bytes: peak.load(Ordering::Relaxed).max(end_bytes),
        lat,
        restart_s: ready.as_secs_f64(),
        by_day,
    })
}
