//! The store alone, without gRPC: how fast durable batches go in, so the ingest benchmark's numbers can be split
//! between transport and storage.
//!
//!     cargo build --release -p meterd-tests && target/release/store-bench --seconds 5 --data-root target/bench
//!
//! `--spool` runs the same load against a standalone store and then a fleet spool (nothing forwarded: its writer's
//! own cost, without PostgreSQL or gRPC), side by side, and for the spool the outbox's bytes on disk per event and
//! the time to open it again with that backlog (what a restart after a database outage costs).

use std::time::{Duration, Instant};

use clap::Parser;
use meterd::config::LateUsage;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::quantity::Micros;
use meterd::store::space::MinFree;
use meterd::store::{Store, StoreOptions};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 1)]
    callers: usize,
    #[arg(long, default_value = ".")]
    data_root: std::path::PathBuf,
    /// Also run a fleet spool beside the standalone store (see the module docs).
    #[arg(long)]
    spool: bool,
}

const HOUR: i64 = 3_600_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let standalone = run(&args, false).await?;
    if args.spool {
        let spool = run(&args, true).await?;
        println!("store-bench: spool / standalone: {:.0}%", 100.0 * spool / standalone);
    }
    Ok(())
}

fn options() -> StoreOptions {
    StoreOptions {
        cache_bytes: 64 << 20,
        min_free: MinFree::Bytes(0),
        seal_chunk: meterd::store::SEAL_CHUNK_BUCKETS,
        dedupe_keep_ms: meterd::store::DEFAULT_DEDUPE_KEEP_MS,
        stuck_after: None,
    }
}

/// One timed load against a fresh store; returns its events/s.
async fn run(args: &Args, spool: bool) -> anyhow::Result<f64> {
    let dir = meterd_tests::bench_data_dir(&args.data_root)?;
    let store =
        if spool { Store::open_spool(dir.path(), options())? } else { Store::open_with(dir.path(), options())? };
    let now = 1_790_000_000_000 / HOUR * HOUR + 1000;
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.callers {
        let store = store.clone();
        let size = args.batch_size;
        tasks.spawn(async move {
            let (mut n, mut calls) = (0u64, 0u64);
            while Instant::now() < until {
                let events = (0..size)
                    .map(|i| UsageEvent {
                        idempotency_key: format!("{c}-{n}-{i}-2f6b1c1e-8d1a-4a6e-9c3f-{calls:012}"),
                        product: "app".into(),
                        identity: Identity::Aws {
                            account_id: format!("11112222333{}", i % 10),
                            license_arn: "arn:aws:license-manager::111122223333:license:l-demo".into(),
                        },
                        dimension: if i % 2 == 0 { "api_calls" } else { "gb_hours" }.into(),
                        quantity: Micros(1_250_000),
                        timestamp_ms: Some(now),
                        tags: if i % 3 == 0 {
                            [("team".to_string(), format!("t{}", i % 4))].into()
                        } else {
                            TagSet::new()
                        },
                    })
                    .collect();
                store.ingest(events, now, LateUsage::Carry).await.expect("ingest");
                n += size as u64;
                calls += 1;
            }
            (n, calls)
        });
    }
    let (mut events, mut calls) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (n, c) = r?;
        events += n;
        calls += c;
    }
    let secs = started.elapsed().as_secs_f64();
    let c = store.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "store-bench: {}: {} callers x batches of {}: {:.0} events/s ({} calls, {} write groups, {} fsyncs, mean fsync {:.2} ms)",
        if spool { "spool" } else { "standalone" },
        args.callers,
        args.batch_size,
        events as f64 / secs,
        calls,
        load(&c.write_groups),
        load(&c.fsyncs),
        load(&c.fsync_micros) as f64 / 1000.0 / load(&c.fsyncs).max(1) as f64
    );
    store.close().await?;
    drop(store);
    if spool {
        let outbox = dir.path().join(meterd::store::outbox_log::DIR);
        let bytes: u64 = std::fs::read_dir(&outbox)?.map(|e| Ok(e?.metadata()?.len())).sum::<std::io::Result<u64>>()?;
        let started = Instant::now();
        let reopened = Store::open_spool(dir.path(), options())?;
        let open_ms = started.elapsed().as_secs_f64() * 1000.0;
        let depth = reopened.outbox_depth()?.entries;
        println!(
            "store-bench: spool backlog {depth} events in {} outbox file(s), {:.1} MB ({:.0} bytes/event); reopened in {open_ms:.0} ms",
            reopened.outbox_files(),
            bytes as f64 / 1e6,
            bytes as f64 / depth.max(1) as f64
        );
        reopened.close().await?;
    }
    Ok(events as f64 / secs)
}
