//! Fleet benchmark: ingest through 1, 2 and 3 real `meterd` agents sharing one real PostgreSQL (fleet mode),
//! beside the same load on one standalone agent (sled alone, no `[fleet]`), in one run.
//!
//!     cargo build --release -p meterd -p meterd-tests
//!     target/release/fleet-bench --seconds 10 --rounds 2
//!
//! Configurations (each `--rounds` times, interleaved, so a change in the machine's load touches all alike):
//! `sled` (no `[fleet]`), `local xN` (N agents, `ack = "local"`), `shared xN` (`ack = "shared"`). Workloads, run
//! one after the other against each configuration: unary `RecordUsage` from `--callers` callers, then batches of
//! `--batch` events from `--batch-callers` callers; callers are spread evenly over the agents. Per workload: events/s,
//! p50/p99 call latency, and the forwarder's lag: events waiting in the spools (summed over the agents) and the
//! age of the oldest (the worst agent), their maximum during the workload and their value at its end (each
//! agent's `/metrics`, every 200 ms). Per configuration: the time from the end of the hour the load was recorded
//! in to the moment the emulator has accepted every record of that hour.
//!
//! The hour's end is placed a few seconds after the load: every agent runs `run --simulate --speed 1
//! --clock-offset-ms X` with the same X (the wall clock shifted, so the agents and their embedded emulators agree on
//! the time and every duration is real: the watermark margin, `seal_grace`, the forward interval and AWS's quota
//! are as in production). The lease holder submits to its own embedded emulator; every agent's is read.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use meterd_fleet::test_postgres::TestPostgres;
use meterd_proto::v1;
use meterd_tests::Agent;

#[derive(Parser, Debug)]
struct Args {
    /// Seconds per workload.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Times each configuration runs (interleaved: every configuration once, then again).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Unary callers, spread over the agents.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Batch callers, spread over the agents.
    #[arg(long, default_value_t = 6)]
    batch_callers: usize,
    /// Events per batch call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Distinct customers (each × 2 dimensions = the hour's records).
    #[arg(long, default_value_t = 20)]
    customers: usize,
    /// The agents' `pipeline.seal_grace`.
    #[arg(long, default_value = "5s")]
    seal_grace: String,
    /// Also run 3 agents with `ack = "shared"` (1 agent always runs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    shared3: bool,
    /// Only these configurations (`sled`, `local1`, `local2`, `local3`, `shared1`, `shared3`); all when empty.
    #[arg(long)]
    only: Vec<String>,
    /// Seconds allowed for the agents to start before the load begins (the hour's end is planned from it).
    #[arg(long, default_value_t = 12)]
    start_budget: u64,
    /// Extra `[fleet]` settings for every fleet agent (TOML lines, e.g. `forward_batch = 5000`).
    #[arg(long, default_value = "")]
    fleet_toml: String,
    /// Skip the hour end → accepted measurement (e.g. with forwarding held back by --fleet-toml).
    #[arg(long)]
    no_hour: bool,
    /// Where data dirs go.
    #[arg(long, default_value = ".")]
    data_root: std::path::PathBuf,
    /// Give PostgreSQL CPUs of its own, as a database on another host (RDS) would have: `A:B` runs PostgreSQL on
    /// CPUs `B` and the agents with this benchmark's callers on CPUs `A` (lists as `taskset -c` takes them, e.g.
    /// `0:1` on two cores). Every configuration, sled alone included, then gets the same CPUs `A`.
    #[arg(long)]
    split_cpus: Option<String>,
}

const ACCOUNT: &str = "111122223333";
const PRODUCT_CODE: &str = "fleet-bench-app";
const HOUR_MS: i64 = 3_600_000;
const DIMENSIONS: [&str; 2] = ["api_calls", "gb_hours"];

fn license(c: usize) -> String {
    format!("arn:aws:license-manager::{ACCOUNT}:license:l-bench-{c:03}")
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    name: &'static str,
    agents: usize,
    /// None: standalone (sled alone).
    ack: Option<&'static str>,
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    callers: usize,
    batch: usize,
}

#[derive(Default, Clone, Copy)]
struct Lag {
    events_max: f64,
    events_end: f64,
    age_max_s: f64,
    age_end_s: f64,
}

struct Measured {
    events_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    lag: Lag,
}

struct RunResult {
    round: usize,
    setup: Setup,
    load: String,
    workloads: Vec<(&'static str, Measured)>,
    /// Seconds from the hour's end to every record accepted; None when it did not happen in time.
    hour_to_accepted_s: Option<f64>,
    records: usize,
    /// The load ran past the hour's end (a slow start): some events went to the next hour.
    overran: bool,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 { format!("{:.1} ms", us as f64 / 1000.0) } else { format!("{:.2} ms", us as f64 / 1000.0) }
}

fn agent_config(data: &std::path::Path, setup: Setup, node: usize, db_url: &str, args: &Args) -> String {
    let (seal_grace, extra) = (&args.seal_grace, &args.fleet_toml);
    let fleet = match setup.ack {
        Some(ack) => {
            format!("[fleet]\ndatabase_url = \"{db_url}\"\nnode_id = \"bench-{node}\"\nack = \"{ack}\"\n{extra}\n")
        }
        None => String::new(),
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[storage]
data_dir = "{data}"
[ingest]
max_batch_events = 100000
[pipeline]
seal_grace = "{seal_grace}"
[products.app]
identity = "license"
product_code = "{PRODUCT_CODE}"
dimensions = ["api_calls", "gb_hours"]
{fleet}"#,
        data = data.display()
    )
}

fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    Ok(url.trim_start_matches("http://").trim_end_matches('/').parse()?)
}

/// Subscribes the benchmark's customers in an agent's embedded emulator (`PUT /_emulator/customers`).
async fn subscribe(emulator: SocketAddr, customers: usize) -> anyhow::Result<()> {
    for c in 0..customers {
        let body =
            serde_json::json!({"product_code": PRODUCT_CODE, "aws_account_id": ACCOUNT, "license_arn": license(c)})
                .to_string();
        let (status, out) = meterd_tests::stack::http_put_json(emulator, "/_emulator/customers", &body).await;
        anyhow::ensure!(status == 200, "subscribing {}: {status} {out}", license(c));
    }
    Ok(())
}

/// Records of hour `hour_s` the emulators accepted (distinct license × dimension).
async fn accepted_in_hour(emulators: &[SocketAddr], hour_s: i64) -> anyhow::Result<usize> {
    let mut keys = BTreeSet::new();
    for e in emulators {
        let (status, body) = meterd_tests::stack::http_get(*e, "/_emulator/ledger").await;
        anyhow::ensure!(status == 200, "emulator ledger answered {status}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        for r in v.as_array().into_iter().flatten() {
            if r["hour_start"].as_i64() == Some(hour_s) {
                keys.insert((r["license_arn"].as_str().unwrap_or("").to_string(), r["dimension"].to_string()));
            }
        }
    }
    Ok(keys.len())
}

fn event(key: String, customer: usize, dimension: usize, n: u64) -> v1::UsageEvent {
    v1::UsageEvent {
        idempotency_key: key,
        customer: Some(v1::Customer {
            identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                customer_aws_account_id: ACCOUNT.into(),
                license_arn: license(customer),
            })),
        }),
        dimension: DIMENSIONS[dimension].into(),
        quantity: format!("{}.{}", 1 + n % 7, n % 10),
        timestamp: None,
        tags: Default::default(),
        product: String::new(),
    }
}

/// Polls every agent's `/metrics` every 200 ms until `stop`; the spools' depth and oldest age, max and last.
async fn sample_lag(admins: Vec<SocketAddr>, stop: Arc<std::sync::atomic::AtomicBool>) -> Lag {
    let mut lag = Lag::default();
    loop {
        let done = stop.load(std::sync::atomic::Ordering::Relaxed);
        let (mut events, mut age) = (0.0f64, 0.0f64);
        for a in &admins {
            let (status, body) = meterd_tests::stack::http_get(*a, "/metrics").await;
            if status != 200 {
                continue;
            }
            let m = meterd_tests::stack::parse_metrics(&body);
            events += m.get("meterd_fleet_spool_events").copied().unwrap_or(0.0);
            age = age.max(m.get("meterd_fleet_spool_oldest_age_seconds").copied().unwrap_or(0.0));
        }
        lag.events_max = lag.events_max.max(events);
        lag.age_max_s = lag.age_max_s.max(age);
        lag.events_end = events;
        lag.age_end_s = age;
        if done {
            return lag;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `w` for `seconds` over the agents (caller c → agent c mod N); returns the figures and the
/// customer × dimension pairs it recorded.
async fn run_workload(
    targets: &[String],
    admins: &[SocketAddr],
    w: Workload,
    seconds: u64,
    customers: usize,
    run_id: &str,
) -> anyhow::Result<(Measured, BTreeSet<(usize, usize)>)> {
    // Several connections per agent, as several processes or SDK clients would use (8 in all for one agent).
    let per_agent = 8usize.div_ceil(targets.len()).min(w.callers.max(1));
    let mut clients = Vec::new();
    for t in targets {
        let mut conns = Vec::new();
        for _ in 0..per_agent {
            conns.push(meterd_proto::client::Client::connect(t, Duration::from_secs(5)).await?);
        }
        clients.push(conns);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_lag(admins.to_vec(), stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..w.callers {
        let agent = c % targets.len();
        let mut m = clients[agent][(c / targets.len()) % per_agent].metering();
        let prefix = format!("{run_id}-{}-{c}", w.name);
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut pairs = BTreeSet::new();
            let mut n = 0u64;
            // Each caller walks the customer × dimension pairs from its own starting point.
            let mut pick = |n: u64| {
                let i = (n as usize + c * 7) % (customers * 2);
                let p = (i / 2, i % 2);
                pairs.insert(p);
                p
            };
            while Instant::now() < deadline {
                let start = Instant::now();
                if w.batch == 1 {
                    let (cu, d) = pick(n);
                    let ev = event(format!("{prefix}-{n}"), cu, d, n);
                    m.record_usage(v1::RecordUsageRequest { event: Some(ev) }).await?;
                    n += 1;
                } else {
                    let events = (0..w.batch as u64)
                        .map(|i| {
                            let (cu, d) = pick(n + i);
                            event(format!("{prefix}-{}", n + i), cu, d, n + i)
                        })
                        .collect();
                    let r = m.record_usage_batch(v1::RecordUsageBatchRequest { events }).await?.into_inner();
                    anyhow::ensure!(
                        r.results.iter().all(|r| matches!(r.outcome, Some(v1::event_result::Outcome::Receipt(_)))),
                        "an event was refused"
                    );
                    n += w.batch as u64;
                }
                hist.record(start.elapsed().as_micros() as u64).ok();
            }
            Ok::<_, anyhow::Error>((n, hist, pairs))
        });
    }
    let started = Instant::now();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut total = 0u64;
    let mut pairs = BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        let (n, h, p) = r??;
        total += n;
        hist.add(h)?;
        pairs.extend(p);
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds as f64);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lag = sampler.await?;
    Ok((
        Measured {
            events_per_sec: total as f64 / elapsed,
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            lag,
        },
        pairs,
    ))
}

/// A fresh database on the shared server for one configuration run; its URL.
async fn fresh_database(pg: &TestPostgres, name: &str) -> anyhow::Result<String> {
    let admin = meterd_fleet::connect_plain(&pg.url()).await?;
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    let url = pg.url();
    let base = url.strip_suffix("/meterd").ok_or_else(|| anyhow::anyhow!("unexpected server URL {url}"))?;
    Ok(format!("{base}/{name}"))
}

async fn run_setup(
    args: &Args,
    pg: &TestPostgres,
    root: &std::path::Path,
    round: usize,
    setup: Setup,
) -> anyhow::Result<RunResult> {
    let load = load_average();
    let tag = format!("r{round}_{}", setup.name.replace(' ', "_"));
    let db_url = match setup.ack {
        Some(_) => fresh_database(pg, &format!("bench_{tag}")).await?,
        None => String::new(),
    };
    let workloads = [
        Workload { name: "unary", callers: args.callers, batch: 1 },
        Workload { name: "batch", callers: args.batch_callers, batch: args.batch },
    ];
    // The hour's end: after the agents' start budget, the workloads and a little slack. The clock is shifted so
    // that a UTC hour ends then (ahead of the wall clock, so the database's clock never thinks it long over).
    let plan = Duration::from_secs(args.start_budget + 2 * args.seconds + 3);
    let end_real_ms = meterd::clock::system_now_ms() + plan.as_millis() as i64;
    let hour_end_ms = (end_real_ms.div_euclid(HOUR_MS) + 1) * HOUR_MS;
    let offset_ms = hour_end_ms - end_real_ms;
    let hour_end_at = Instant::now() + plan;

    let offset = offset_ms.to_string();
    let mut agents = Vec::new();
    for n in 0..setup.agents {
        let data = root.join(format!("{tag}-{n}"));
        let config = agent_config(&data, setup, n, &db_url, args);
        agents.push(Agent::start_with_args(&config, &["--simulate", "--speed", "1", "--clock-offset-ms", &offset])?);
    }
    let targets: Vec<String> = agents.iter().map(|a| a.target()).collect();
    let admins: Vec<SocketAddr> =
        agents.iter().map(|a| Ok(a.admin.as_deref().unwrap_or_default().parse()?)).collect::<anyhow::Result<_>>()?;
    let emulators: Vec<SocketAddr> =
        agents.iter().map(|a| addr_of(a.emulator.as_deref().unwrap_or_default())).collect::<anyhow::Result<_>>()?;
    for e in &emulators {
        subscribe(*e, args.customers).await?;
    }
    let started_in = plan.saturating_sub(hour_end_at.saturating_duration_since(Instant::now()));
    eprintln!("[{tag}] load {load}: {} agent(s) ready in {:.1} s", setup.agents, started_in.as_secs_f64());

    let mut results = Vec::new();
    let mut pairs = BTreeSet::new();
    for w in workloads {
        let (m, p) = run_workload(&targets, &admins, w, args.seconds, args.customers, &tag).await?;
        pairs.extend(p);
        results.push((w.name, m));
    }
    let overran = Instant::now() > hour_end_at;
    if !args.no_hour {
        tokio::time::sleep_until(hour_end_at.into()).await;
    }
    let hour_s = (hour_end_ms - HOUR_MS) / 1000;
    let deadline = hour_end_at + Duration::from_secs(300);
    let hour_to_accepted_s = if args.no_hour {
        Some(f64::NAN)
    } else {
        loop {
            if accepted_in_hour(&emulators, hour_s).await? >= pairs.len() {
                break Some(hour_end_at.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    drop(agents);
    Ok(RunResult { round, setup, load, workloads: results, hour_to_accepted_s, records: pairs.len(), overran })
}

fn print_row(r: &RunResult) {
    for (name, m) in &r.workloads {
        let lag = if r.setup.ack.is_some() {
            format!(
                "{:.0} / {:.0} | {:.2} / {:.2}",
                m.lag.events_max, m.lag.events_end, m.lag.age_max_s, m.lag.age_end_s
            )
        } else {
            "- | -".to_string()
        };
        println!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {lag} | {} |",
            r.round + 1,
            r.load,
            r.setup.name,
            name,
            m.events_per_sec,
            fmt_us(m.p50_us),
            fmt_us(m.p99_us),
            match r.hour_to_accepted_s {
                Some(s) if s.is_nan() => "skipped (--no-hour)".to_string(),
                Some(s) =>
                    format!("{s:.1} s ({} records){}", r.records, if r.overran { " (load overran)" } else { "" }),
                None => format!("not within 300 s ({} records)", r.records),
            }
        );
    }
}

/// Parses a CPU list as `taskset -c` takes it (`0`, `0,2`, `1-3`).
fn cpu_list(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>()?..=b.trim().parse::<usize>()?),
            None => cpus.push(part.trim().parse()?),
        }
    }
    anyhow::ensure!(!cpus.is_empty(), "an empty CPU list");
    Ok(cpus)
}

/// Restricts the calling thread to `cpus`; threads and processes it starts afterwards inherit that.
fn pin_to(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET only writes inside it (indices are bounds-checked
    // by the libc macro); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            anyhow::ensure!(c < libc::CPU_SETSIZE as usize, "CPU {c} is out of range");
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!("sched_setaffinity {cpus:?}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // PostgreSQL starts from this thread before the runtime exists: pinned first to the database's CPUs, then
    // (the server started, so its processes keep that mask) to the agents' CPUs, which every runtime thread and
    // every agent process inherits.
    let split = match &args.split_cpus {
        Some(s) => {
            let (agents, database) =
                s.split_once(':').ok_or_else(|| anyhow::anyhow!("--split-cpus {s:?}: expected AGENT_CPUS:DB_CPUS"))?;
            Some((cpu_list(agents)?, cpu_list(database)?))
        }
        None => None,
    };
    if let Some((_, database)) = &split {
        pin_to(database)?;
    }
    let pg = TestPostgres::start()?;
    if let Some((agents, _)) = &split {
        pin_to(agents)?;
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args, pg))
}

async fn run(args: Args, pg: TestPostgres) -> anyhow::Result<()> {
    let mut setups = vec![
        Setup { name: "sled", agents: 1, ack: None },
        Setup { name: "local x1", agents: 1, ack: Some("local") },
        Setup { name: "local x2", agents: 2, ack: Some("local") },
        Setup { name: "local x3", agents: 3, ack: Some("local") },
        Setup { name: "shared x1", agents: 1, ack: Some("shared") },
    ];
    if args.shared3 {
        setups.push(Setup { name: "shared x3", agents: 3, ack: Some("shared") });
    }
    if !args.only.is_empty() {
        setups.retain(|s| args.only.iter().any(|o| o == &s.name.replace([' ', 'x'], "")));
        anyhow::ensure!(!setups.is_empty(), "--only: no configuration named {:?}", args.only);
    }
    let root = meterd_tests::bench_data_dir(&args.data_root)?;
    println!(
        "fleet benchmark {}: {} s per workload, unary x{} callers, batches of {} x{} callers, {} customers x 2 \
         dimensions, seal_grace {}, {} round(s); meterd {}; PostgreSQL {} on this host{}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.seconds,
        args.callers,
        args.batch,
        args.batch_callers,
        args.customers,
        args.seal_grace,
        args.rounds,
        meterd_tests::meterd_bin().display(),
        pg.url(),
        match &args.split_cpus {
            Some(s) => format!(" (CPUs split, agents+callers:database = {s})"),
            None => String::new(),
        },
    );
    println!();
    println!(
        "| run | load avg | config | workload | events/s | p50 | p99 | spool max / end (events) | oldest max / end (s) | hour end → accepted |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut all = Vec::new();
    for round in 0..args.rounds {
        for &setup in &setups {
            let r = run_setup(&args, &pg, root.path(), round, setup).await?;
            print_row(&r);
            all.push(r);
        }
    }
    println!();
    println!("Mean over the rounds (events/s; ratio to sled alone):");
    let mean = |setup: &str, w: &str| {
        let v: Vec<f64> = all
            .iter()
            .filter(|r| r.setup.name == setup)
            .flat_map(|r| r.workloads.iter().filter(|(n, _)| *n == w).map(|(_, m)| m.events_per_sec))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    for w in ["unary", "batch"] {
        let base = mean("sled", w);
        for s in &setups {
            if let Some(m) = mean(s.name, w) {
                let ratio = base.map(|b| format!("{:.0}%", 100.0 * m / b)).unwrap_or_else(|| "-".into());
                println!("  {w:<6} {:<10} {m:>9.0}  {ratio}", s.name);
            }
        }
    }
    Ok(())
}
