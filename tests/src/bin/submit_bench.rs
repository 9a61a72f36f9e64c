//! Submission benchmark: how much of AWS's rate limit meterd's adaptive pacing uses when draining a backlog of
//! sealed records through the emulator (10 calls/s × 25 records = 250 records/s is the ceiling), against both
//! limiter shapes the emulator offers (`token_bucket`, `rolling_window`), alone and with another client using
//! half of the quota.
//!
//!     cargo build --release -p meterd-tests && target/release/submit-bench --records 20000
//!
//! Prints, per scenario: drain time, the fraction of the quota meterd used (of what the other client left),
//! meterd's throttled calls, and records/s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use meterd_emulator::{EmuCustomer, EmulatorConfig, RateLimitMode};
use meterd_proto::v1;
use meterd_tests::stack::{HOUR, Stack, event};

#[derive(Parser, Debug)]
struct Args {
    /// Sealed records to drain per scenario (rounded up to whole customers × 2 dimensions × 19 hours).
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// meterd's ceiling in calls per second (the emulator enforces AWS's 10).
    #[arg(long, default_value_t = 10.0)]
    calls_per_second: f64,
    /// The other client's calls per second in the shared scenarios.
    #[arg(long, default_value_t = 5.0)]
    other_client_rate: f64,
}

const QUOTA: f64 = 10.0;
const OTHER_ACCOUNT: &str = "999988887777";
const OTHER_LICENSE: &str = "arn:aws:license-manager::999988887777:license:l-bench-other-client";

struct Outcome {
    records: u64,
    secs: f64,
    ok: u64,
    throttled: u64,
    failed: u64,
    other_ok: u64,
    other_throttled: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: set before any thread reads the environment (the harness reads it when building the config).
    unsafe { std::env::set_var("METERD_TEST_CALLS_PER_SECOND", args.calls_per_second.to_string()) };
    let scenarios = [
        ("token_bucket", RateLimitMode::TokenBucket, false),
        ("rolling_window", RateLimitMode::RollingWindow, false),
        ("token_bucket + other client", RateLimitMode::TokenBucket, true),
        ("rolling_window + other client", RateLimitMode::RollingWindow, true),
    ];
    let mut rows = Vec::new();
    for (name, mode, shared) in scenarios {
        let o = run(&args, mode, shared.then_some(args.other_client_rate)).await?;
        eprintln!("{name}: done in {:.1} s", o.secs);
        rows.push((name, shared, o));
    }
    println!(
        "submit benchmark: meterd ceiling {} calls/s, emulator quota {QUOTA} calls/s, other client {} calls/s",
        args.calls_per_second, args.other_client_rate
    );
    println!(
        "{:<31} {:>8} {:>8} {:>10} {:>11} {:>12} {:>10} {:>14}",
        "limiter", "records", "drain s", "records/s", "meterd c/s", "quota used", "throttled", "other ok c/s"
    );
    for (name, shared, o) in rows {
        let calls = o.ok + o.throttled + o.failed;
        let meterd_rate = o.ok as f64 / o.secs;
        let other_rate = o.other_ok as f64 / o.secs;
        // Shared: the fraction of what the other client left.
        let available = if shared { QUOTA - other_rate } else { QUOTA };
        println!(
            "{:<31} {:>8} {:>8.1} {:>10.1} {:>11.2} {:>11.1}% {:>9.2}% {:>14}",
            name,
            o.records,
            o.secs,
            o.records as f64 / o.secs,
            meterd_rate,
            100.0 * meterd_rate / available,
            100.0 * o.throttled as f64 / calls.max(1) as f64,
            if shared { format!("{other_rate:.2} ({} thr)", o.other_throttled) } else { "-".into() },
        );
    }
    Ok(())
}

async fn run(args: &Args, mode: RateLimitMode, other_client: Option<f64>) -> anyhow::Result<Outcome> {
    let hours = 19usize;
    let customers = args.records.div_ceil(2 * hours);
    let now = 1_790_000_000_000i64 / HOUR * HOUR + 30 * 60_000;
    let mut emu = EmulatorConfig { rate_limit_per_sec: QUOTA, rate_limit_mode: mode, ..EmulatorConfig::default() };
    emu.customers.push(EmuCustomer::licensed("prod-code-app", OTHER_ACCOUNT, OTHER_LICENSE));
    // A long grace keeps the backlog's hours open until the flush below seals them all at once.
    let s = Stack::start(
        now,
        emu,
        &["api_calls", "gb_hours"],
        &["api_calls", "gb_hours"],
        customers,
        "seal_grace = \"20h\"",
    )
    .await?;

    let mut batch = Vec::new();
    let mut n = 0;
    for h in 1..=hours as i64 {
        for c in 0..customers {
            for dim in ["api_calls", "gb_hours"] {
                batch.push(event(&format!("b{n}"), c, dim, "3", now - h * HOUR));
                n += 1;
                if batch.len() == 5000 {
                    let events = std::mem::take(&mut batch);
                    s.client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events }).await?;
                }
            }
        }
    }
    if !batch.is_empty() {
        s.client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events: batch }).await?;
    }

    let other_ok = Arc::new(AtomicU64::new(0));
    let other_throttled = Arc::new(AtomicU64::new(0));
    let other = match (other_client, s.emulator_addr()) {
        (Some(rate), Some(addr)) => {
            Some(tokio::spawn(other_client_loop(addr, rate, now, other_ok.clone(), other_throttled.clone())))
        }
        _ => None,
    };
    // Let the other client settle into its rate before meterd starts.
    if other.is_some() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (ok0, thr0) = (other_ok.load(Ordering::Relaxed), other_throttled.load(Ordering::Relaxed));

    let f = s.client.admin().flush(v1::FlushRequest {}).await?.into_inner();
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The agent's clock follows real time: throttled records are resent after a backoff on that clock.
        s.clock.advance(250);
        let st = s.client.admin().status(v1::StatusRequest {}).await?.into_inner();
        if st.pending_records == 0 {
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(3600), "did not drain in an hour");
    }
    let secs = start.elapsed().as_secs_f64();
    let (other_ok, other_throttled) =
        (other_ok.load(Ordering::Relaxed) - ok0, other_throttled.load(Ordering::Relaxed) - thr0);
    if let Some(t) = other {
        t.abort();
    }
    let st = s.client.admin().status(v1::StatusRequest {}).await?.into_inner();
    let acct = &st.accounts[0];
    anyhow::ensure!(s.emulator.counters().duplicates == 0, "DuplicateRecord during the drain");
    let o = Outcome {
        records: f.records_sealed,
        secs,
        ok: acct.calls_ok,
        throttled: acct.calls_throttled,
        failed: acct.calls_failed,
        other_ok,
        other_throttled,
    };
    s.stop().await;
    Ok(o)
}

/// Another tool on the same account: one BatchMeterUsage call every 1/rate seconds with a record of its own
/// customer (cycling through hours and dimensions; repeats are idempotent), counting what the quota admits.
async fn other_client_loop(addr: SocketAddr, rate: f64, now: i64, ok: Arc<AtomicU64>, throttled: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0u64.. {
        tick.tick().await;
        let hour = (now - (1 + (i / 2 % 19) as i64) * HOUR) / 1000;
        let dim = if i % 2 == 0 { "api_calls" } else { "gb_hours" };
        let body = format!(
            r#"{{"UsageRecords":[{{"Timestamp":{hour},"Dimension":"{dim}","Quantity":1,"CustomerAWSAccountId":"{OTHER_ACCOUNT}","LicenseArn":"{OTHER_LICENSE}"}}]}}"#
        );
        match call(addr, &body).await {
            Ok(answer) if answer.contains("ThrottlingException") => throttled.fetch_add(1, Ordering::Relaxed),
            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => 0,
        };
    }
}

async fn call(addr: SocketAddr, body: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: AWSMPMeteringService.BatchMeterUsage\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf)
}
