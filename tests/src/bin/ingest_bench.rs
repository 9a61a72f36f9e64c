//! Durable-ingest benchmark: meterd over gRPC versus the baseline a seller would otherwise write, a
//! per-event SQLite transaction with fsync (idempotency key insert + hourly bucket upsert), on the same disk.
//!
//!     cargo build --release -p meterd -p meterd-tests
//!     target/release/ingest-bench --seconds 5
//!
//! Prints events/s and p50/p99 call latency per workload, side by side, with the ratio meterd/SQLite, and the
//! transport's own ceiling on this machine: the same gRPC calls against a tonic server in its own process that
//! validates nothing and stores nothing (`ingest-bench --serve-noop`, started by the benchmark itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use meterd_proto::v1;
use meterd_tests::{Agent, basic_config};

#[derive(Parser, Debug)]
struct Args {
    /// Seconds per workload.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Events per batch call.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Concurrent callers for the many-callers unary workload.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Where data dirs go (created if missing; defaults to the current directory's disk).
    #[arg(long, default_value = ".")]
    data_root: std::path::PathBuf,
    /// Skip the SQLite baseline.
    #[arg(long)]
    no_baseline: bool,
    /// The agent's `storage.cache_mb` (sled's page cache); its default when unset.
    #[arg(long)]
    cache_mb: Option<u64>,
    /// Skip the no-op ceiling.
    #[arg(long)]
    no_ceiling: bool,
    /// Run the agent in fleet mode against this PostgreSQL (`postgres://…`): its spool forwards to the shared
    /// ledger while the workloads run.
    #[arg(long)]
    fleet_database_url: Option<String>,
    /// With --fleet-database-url: `local` (answer after the local fsync) or `shared` (after the PostgreSQL commit).
    #[arg(long, default_value = "local")]
    fleet_ack: String,
    /// Run only the workloads whose name contains this (`unary`, `batch x1`, ...); all when unset. With
    /// `perf stat -p <agent>` this measures one workload's instructions per event, which other load on the host
    /// does not change the way it changes events/s.
    #[arg(long)]
    only: Option<String>,
    /// Internal: serve the no-op Metering service on an ephemeral loopback port, print `tcp=ADDR`, serve forever.
    #[arg(long, hide = true)]
    serve_noop: bool,
}

/// The transport ceiling: answers every call with a receipt built from the request (the fields meterd fills), and
/// stores nothing. What meterd does on top of this — validation, dedupe, the fsynced group commit — is the gap
/// between the two columns.
struct NoopMetering;

fn noop_receipt(ev: &v1::UsageEvent) -> v1::Receipt {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ts = |ms: i64| prost_types::Timestamp { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 };
    let now_ms = now.as_millis() as i64;
    v1::Receipt {
        idempotency_key: ev.idempotency_key.clone(),
        replayed: false,
        product: "app".into(),
        event_time: Some(ev.timestamp.unwrap_or_else(|| ts(now_ms))),
        usage_hour: Some(ts(now_ms - now_ms % 3_600_000)),
        recorded_at: Some(ts(now_ms)),
    }
}

#[tonic::async_trait]
impl v1::metering_server::Metering for NoopMetering {
    async fn record_usage(
        &self,
        request: tonic::Request<v1::RecordUsageRequest>,
    ) -> std::result::Result<tonic::Response<v1::RecordUsageResponse>, tonic::Status> {
        let ev = request.into_inner().event.unwrap_or_default();
        Ok(tonic::Response::new(v1::RecordUsageResponse { receipt: Some(noop_receipt(&ev)) }))
    }

    async fn record_usage_batch(
        &self,
        request: tonic::Request<v1::RecordUsageBatchRequest>,
    ) -> std::result::Result<tonic::Response<v1::RecordUsageBatchResponse>, tonic::Status> {
        let results = request
            .into_inner()
            .events
            .iter()
            .map(|ev| v1::EventResult { outcome: Some(v1::event_result::Outcome::Receipt(noop_receipt(ev))) })
            .collect();
        Ok(tonic::Response::new(v1::RecordUsageBatchResponse { results }))
    }
}

async fn serve_noop() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("tcp={}", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    let service = v1::metering_server::MeteringServer::new(NoopMetering)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    // The agent's own transport settings (server/mod.rs): without TCP_NODELAY a 1,000-event batch met delayed
    // ACKs (~44 ms a call), so the "ceiling" was below meterd itself; without the large windows it waits for
    // window updates.
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .add_service(service)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}

/// Runs this binary again as the no-op server; returns the process and its address.
fn start_noop() -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--serve-noop")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let addr = line.trim().strip_prefix("tcp=").ok_or_else(|| anyhow::anyhow!("no-op server said {line:?}"))?;
    Ok((child, addr.to_string()))
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    callers: usize,
    batch: usize,
}

struct Result {
    events_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
}

fn event(key: String, n: u64) -> v1::UsageEvent {
    v1::UsageEvent {
        idempotency_key: key,
        customer: Some(v1::Customer {
            identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                customer_aws_account_id: format!("1111222233{:02}", n % 20),
                license_arn: "arn:aws:license-manager::111122223333:license:l-0123456789abcdef".into(),
            })),
        }),
        dimension: if n.is_multiple_of(2) { "api_calls" } else { "gb_hours" }.into(),
        quantity: format!("{}.{}", n % 7, n % 10),
        timestamp: None,
        tags: Default::default(),
        product: String::new(),
    }
}

async fn run_meterd(target: &str, w: Workload, seconds: u64, run_id: &str) -> anyhow::Result<Result> {
    // Callers spread over a few connections, as several processes or SDK clients would.
    let n_conns = w.callers.clamp(1, 8);
    let mut clients = Vec::new();
    for _ in 0..n_conns {
        clients.push(meterd_proto::client::Client::connect(target, Duration::from_secs(5)).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..w.callers {
        let mut m = clients[c % n_conns].metering();
        let counter = counter.clone();
        let prefix = format!("{run_id}-{}-{c}", w.name.replace(' ', "_"));
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut n = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                if w.batch == 1 {
                    let ev = event(format!("{prefix}-{n}"), n);
                    m.record_usage(v1::RecordUsageRequest { event: Some(ev) }).await.expect("record_usage");
                    n += 1;
                } else {
                    let events = (0..w.batch as u64).map(|i| event(format!("{prefix}-{}", n + i), n + i)).collect();
                    let r = m.record_usage_batch(v1::RecordUsageBatchRequest { events }).await.expect("batch");
                    assert_eq!(r.into_inner().results.len(), w.batch);
                    n += w.batch as u64;
                }
                hist.record(start.elapsed().as_micros() as u64).ok();
            }
            counter.fetch_add(n, Ordering::Relaxed);
            hist
        });
    }
    let started = Instant::now();
    let mut hist = Histogram::<u64>::new(3)?;
    while let Some(h) = tasks.join_next().await {
        hist.add(h?)?;
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds as f64);
    Ok(Result {
        events_per_sec: counter.load(Ordering::Relaxed) as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
    })
}

fn sqlite_open(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(path)?;
    // WAL + synchronous=FULL: every commit is fsynced, the durable setting a careful seller would pick.
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (key TEXT PRIMARY KEY, customer TEXT, dimension TEXT, quantity TEXT, ts INTEGER);
         CREATE TABLE IF NOT EXISTS buckets (hour INTEGER, customer TEXT, dimension TEXT, micros INTEGER,
                                             PRIMARY KEY (hour, customer, dimension));",
    )?;
    Ok(c)
}

fn run_sqlite(path: &std::path::Path, w: Workload, seconds: u64, run_id: &str) -> anyhow::Result<Result> {
    sqlite_open(path)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..w.callers)
        .map(|c| {
            let path = path.to_path_buf();
            let counter = counter.clone();
            let prefix = format!("{run_id}-{}-{c}", w.name.replace(' ', "_"));
            std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                let mut conn = sqlite_open(&path)?;
                let mut hist = Histogram::<u64>::new(3)?;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    for i in 0..w.batch as u64 {
                        let ev = event(format!("{prefix}-{}", n + i), n + i);
                        let micros = meterd::domain::quantity::Micros::parse_event(&ev.quantity)?.0 as i64;
                        let now = meterd::clock::system_now_ms();
                        let customer = format!("{:?}", ev.customer);
                        let inserted = tx.execute(
                            "INSERT OR IGNORE INTO events VALUES (?1, ?2, ?3, ?4, ?5)",
                            rusqlite::params![ev.idempotency_key, customer, ev.dimension, ev.quantity, now],
                        )?;
                        if inserted == 1 {
                            tx.execute(
                                "INSERT INTO buckets VALUES (?1, ?2, ?3, ?4)
                                 ON CONFLICT (hour, customer, dimension) DO UPDATE SET micros = micros + excluded.micros",
                                rusqlite::params![now / 3_600_000 * 3_600_000, customer, ev.dimension, micros],
                            )?;
                        }
                    }
                    tx.commit()?;
                    n += w.batch as u64;
                    hist.record(start.elapsed().as_micros() as u64).ok();
                }
                counter.fetch_add(n, Ordering::Relaxed);
                Ok(hist)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3)?;
    for h in handles {
        hist.add(h.join().expect("sqlite thread")?)?;
    }
    Ok(Result {
        events_per_sec: counter.load(Ordering::Relaxed) as f64 / seconds as f64,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
    })
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 { format!("{:.1}ms", us as f64 / 1000.0) } else { format!("{us}us") }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_noop {
        return serve_noop().await;
    }
    let workloads = [
        Workload { name: "unary x1", callers: 1, batch: 1 },
        Workload { name: "unary xN", callers: args.callers, batch: 1 },
        Workload { name: "batch x1", callers: 1, batch: args.batch_size },
        Workload { name: "batch x4", callers: 4, batch: args.batch_size },
    ];
    let workloads: Vec<Workload> = workloads
        .into_iter()
        .filter(|w| args.only.as_deref().is_none_or(|o| w.name.replace('N', &args.callers.to_string()).contains(o)))
        .collect();
    let root = meterd_tests::bench_data_dir(&args.data_root)?;
    let mut extra = String::from("[ingest]\nmax_batch_events = 100000\n");

    if let Some(url) = &args.fleet_database_url {
        extra.push_str(&format!(
            "[fleet]\ndatabase_url = \"{url}\"\nnode_id = \"bench-{}\"\nack = \"{}\"\n",
            std::process::id(),
            args.fleet_ack
        ));
    }
    let mut config = basic_config(&root.path().join("meterd"), &extra);
    if let Some(mb) = args.cache_mb {
        // Into basic_config's own [storage] table.
        config = config.replace("[storage]\n", &format!("[storage]\ncache_mb = {mb}\n"));
    }
    let agent = Agent::start(&config)?;
    let target = agent.target();
    let sqlite_path = root.path().join("baseline.sqlite");
    let run_id = format!("{}", meterd::clock::system_now_ms());
    let noop = if args.no_ceiling { None } else { Some(start_noop()?) };

    println!(
        "ingest benchmark: {} s per workload, batch = {} events, N = {} callers",
        args.seconds, args.batch_size, args.callers
    );
    println!("meterd: {}  data: {}", meterd_tests::meterd_bin().display(), root.path().display());
    println!();
    println!(
        "{:<10} | {:>12} {:>9} {:>9} | {:>12} {:>9} {:>9} | {:>7} | {:>12} {:>9} {:>9} | {:>8}",
        "workload",
        "meterd ev/s",
        "p50",
        "p99",
        "sqlite ev/s",
        "p50",
        "p99",
        "ratio",
        "no-op ev/s",
        "p50",
        "p99",
        "of no-op"
    );
    println!("{}", "-".repeat(135));
    for w in workloads {
        let m = run_meterd(&target, w, args.seconds, &run_id).await?;
        let name = w.name.replace('N', &args.callers.to_string());
        let sqlite = if args.no_baseline {
            format!("{:>12} {:>9} {:>9} | {:>7}", "-", "-", "-", "-")
        } else {
            let s = tokio::task::block_in_place(|| run_sqlite(&sqlite_path, w, args.seconds, &run_id))?;
            format!(
                "{:>12.0} {:>9} {:>9} | {:>6.1}x",
                s.events_per_sec,
                fmt_us(s.p50_us),
                fmt_us(s.p99_us),
                m.events_per_sec / s.events_per_sec.max(1e-9)
            )
        };
        let ceiling = match &noop {
            Some((_, addr)) => {
                let n = run_meterd(addr, w, args.seconds, &run_id).await?;
                format!(
                    "{:>12.0} {:>9} {:>9} | {:>7.0}%",
                    n.events_per_sec,
                    fmt_us(n.p50_us),
                    fmt_us(n.p99_us),
                    100.0 * m.events_per_sec / n.events_per_sec.max(1e-9)
                )
            }
            None => format!("{:>12} {:>9} {:>9} | {:>8}", "-", "-", "-", "-"),
        };
        println!(
            "{:<10} | {:>12.0} {:>9} {:>9} | {sqlite} | {ceiling}",
            name,
            m.events_per_sec,
            fmt_us(m.p50_us),
            fmt_us(m.p99_us),
        );
    }
    drop(agent);
    if !args.no_ceiling {
        let d = tokio::task::block_in_place(|| disk_ceiling(root.path()))?;
        println!(
            "{:<10} | one 300-byte write + fdatasync in the data root, 2,000 times: p50 {} p99 {} inside a \
             preallocated file, p50 {} p99 {} when each write grows it",
            "disk",
            fmt_us(d.0),
            fmt_us(d.1),
            fmt_us(d.2),
            fmt_us(d.3)
        );
    }
    if let Some((mut child, _)) = noop {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(())
}

/// The device's own round trip, the floor under any single caller's durable reply: p50 and p99 of a small
/// `pwrite` + `fdatasync` inside a preallocated file, then appending to a growing one (µs).
fn disk_ceiling(dir: &std::path::Path) -> anyhow::Result<(u64, u64, u64, u64)> {
    use std::os::unix::fs::FileExt;
    const N: usize = 2_000;
    let record = [7u8; 300];
    let run = |path: std::path::PathBuf, preallocate: bool| -> anyhow::Result<(u64, u64)> {
        let f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&path)?;
        if preallocate {
            f.write_all_at(&vec![0u8; N * record.len()], 0)?;
            f.sync_all()?;
        }
        let mut took = Vec::with_capacity(N);
        for i in 0..N {
            let started = std::time::Instant::now();
            f.write_all_at(&record, (i * record.len()) as u64)?;
            f.sync_data()?;
            took.push(started.elapsed().as_micros() as u64);
        }
        drop(f);
        std::fs::remove_file(&path)?;
        took.sort_unstable();
        Ok((took[N / 2], took[N * 99 / 100]))
    };
    let (p50, p99) = run(dir.join("disk-ceiling-preallocated"), true)?;
    let (g50, g99) = run(dir.join("disk-ceiling-growing"), false)?;
    Ok((p50, p99, g50, g99))
}
