//! Submission benchmark: how close meterd gets to AWS's rate limit when draining a backlog of sealed
//! records through the emulator (10 calls/s × 25 records = 250 records/s is the ceiling).
//!
//!     cargo build --release -p meterd-tests && target/release/submit-bench --records 100000
//!
//! Prints drain time, records/s, calls/s, the fraction of the rate limit used, and throttles meterd caused.

use std::time::{Duration, Instant};

use clap::Parser;
use meterd_emulator::EmulatorConfig;
use meterd_proto::v1;
use meterd_tests::stack::{HOUR, Stack, event};

#[derive(Parser, Debug)]
struct Args {
    /// Sealed records to drain (rounded up to whole customers × 2 dimensions × 19 hours).
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// meterd's calls per second (the emulator enforces AWS's 10).
    #[arg(long, default_value_t = 10.0)]
    calls_per_second: f64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: set before any thread reads the environment (the harness reads it when building the config).
    unsafe { std::env::set_var("METERD_TEST_CALLS_PER_SECOND", args.calls_per_second.to_string()) };
    let hours = 19usize;
    let customers = args.records.div_ceil(2 * hours);
    let now = 1_790_000_000_000i64 / HOUR * HOUR + 30 * 60_000;
    let emu = EmulatorConfig { rate_limit_per_sec: 10.0, ..EmulatorConfig::default() };
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

    let t = Instant::now();
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
    let ingest = t.elapsed();
    let f = s.client.admin().flush(v1::FlushRequest {}).await?.into_inner();
    let records = f.records_sealed;
    println!(
        "submit benchmark: {records} sealed records ({customers} customers x 2 dimensions x {hours} hours), ingested in {ingest:.2?}"
    );

    let start = Instant::now();
    let calls_before = s.emulator.counters().calls_to("BatchMeterUsage");
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let st = s.client.admin().status(v1::StatusRequest {}).await?.into_inner();
        if st.pending_records == 0 {
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(3600), "did not drain in an hour");
    }
    let secs = start.elapsed().as_secs_f64();
    let c = s.emulator.counters();
    let calls = c.calls_to("BatchMeterUsage") - calls_before;
    let accepted = c.records_accepted;
    let calls_per_sec = calls as f64 / secs;
    println!("drained in {secs:.1} s: {accepted} records accepted in {calls} calls");
    println!("  records/s      {:.1} (ceiling 250)", accepted as f64 / secs);
    println!("  calls/s        {calls_per_sec:.2} (limit 10, meterd configured {})", args.calls_per_second);
    println!("  rate limit use {:.1}%", 100.0 * calls_per_sec / 10.0);
    println!(
        "  throttled      {} (by the emulator's rate limit: {})",
        c.injected.throttling + c.rate_limited,
        c.rate_limited
    );
    println!("  duplicates     {}", c.duplicates);
    let stats = s.client.admin().status(v1::StatusRequest {}).await?.into_inner();
    let acct = &stats.accounts[0];
    println!("  meterd calls ok/throttled/failed {}/{}/{}", acct.calls_ok, acct.calls_throttled, acct.calls_failed);
    s.stop().await;
    Ok(())
}
