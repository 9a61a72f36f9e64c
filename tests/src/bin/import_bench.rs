//! `meterd import` at scale: writes a gzipped backfill of `--rows` rows (CSV or JSONL), imports it into a real
//! agent, samples the importer's resident memory while it runs, and checks the ledger's total is exact.
//!
//! `cargo build -p meterd -p meterd-tests && target/debug/import-bench --rows 1000000 --data-root target/bench`
//! (release: `--release`, `target/release/import-bench`). Prints rows/s and the importer's RSS at each tenth of
//! the run: flat from the first tenth to the last is constant memory.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use meterd::domain::quantity::Micros;
use meterd_tests::{Agent, bench_data_dir, meterd_bin};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    #[arg(long, default_value = "csv")]
    format: String,
    #[arg(long, default_value = "target/bench")]
    data_root: PathBuf,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
}

const ACCOUNT: &str = "111122223333";

fn write_rows(path: &Path, rows: usize, jsonl: bool) -> anyhow::Result<Micros> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let base = meterd::clock::hour_start(now);
    let f = std::fs::File::create(path)?;
    let mut gz = std::io::BufWriter::new(flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
    if !jsonl {
        writeln!(gz, "timestamp,customer_aws_account_id,license_arn,dimension,quantity")?;
    }
    let mut total = Micros::ZERO;
    for i in 0..rows {
        // Three past hours, 50 customers, millisecond timestamps: every row is distinct usage.
        let ts = meterd::clock::rfc3339(base - (1 + (i % 3) as i64) * 3_600_000 + (i as i64 * 7919) % 3_600_000);
        let arn = format!("arn:aws:license-manager::{ACCOUNT}:license:l-{:04}", i % 50);
        let q = format!("{}.{:02}", i % 5, i % 100);
        total = total.checked_add(Micros::parse_event(&q)?).ok_or_else(|| anyhow::anyhow!("overflow"))?;
        if jsonl {
            writeln!(
                gz,
                r#"{{"timestamp":"{ts}","customer_aws_account_id":"{ACCOUNT}","license_arn":"{arn}","dimension":"api_calls","quantity":"{q}"}}"#
            )?;
        } else {
            writeln!(gz, "{ts},{ACCOUNT},{arn},api_calls,{q}")?;
        }
    }
    gz.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?.finish()?;
    Ok(total)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = bench_data_dir(&args.data_root)?;
    let jsonl = args.format == "jsonl";
    let file = dir.path().join(if jsonl { "rows.jsonl.gz" } else { "rows.csv.gz" });
    let t = Instant::now();
    let total = write_rows(&file, args.rows, jsonl)?;
    println!(
        "wrote {} rows ({:.1} MiB gzipped) in {:.1} s",
        args.rows,
        std::fs::metadata(&file)?.len() as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n[products.app]\nidentity = \"license\"\ndimensions = [\"api_calls\"]\n",
        dir.path().join("data").display()
    );
    let agent = Agent::start(&config)?;
    let mut child = Command::new(meterd_bin())
        .arg("import")
        .arg(&file)
        .args(["--target", &agent.target(), "--progress-every", "1s"])
        .args(["--batch", &args.batch.to_string(), "--in-flight", &args.in_flight.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    // Progress lines on stderr: the rows done when each RSS sample is taken.
    let stderr = child.stderr.take().expect("piped");
    let rows_done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = rows_done.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("import: ").and_then(|l| l.split_whitespace().next()?.parse().ok()) {
                seen.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if let Some(kib) = rss_kib(pid) {
            samples.push((rows_done.load(std::sync::atomic::Ordering::Relaxed), kib));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    let summary = String::from_utf8_lossy(&out.stdout);
    print!("{summary}");
    anyhow::ensure!(out.status.success(), "import failed: {:?}", out.status);
    println!("import: {} rows in {elapsed:.1} s = {:.0} rows/s", args.rows, args.rows as f64 / elapsed);
    println!("importer RSS while running (rows done -> RSS):");
    for tenth in 1..=10u64 {
        let want = args.rows as u64 * tenth / 10;
        if let Some((n, kib)) = samples.iter().find(|(n, _)| *n >= want).or(samples.last()) {
            println!("  {:>3}%  {:>9} rows  {:>6.1} MiB", tenth * 10, n, *kib as f64 / 1024.0);
        }
    }
    let client = agent.client().await?;
    let report = client.admin().report(meterd_proto::v1::ReportRequest {}).await?.into_inner();
    let recorded = report.totals.map(|t| t.recorded).unwrap_or_default();
    anyhow::ensure!(recorded == total.to_string(), "ledger total {recorded}, file total {total}");
    println!("ledger total {recorded} = file total: exact");
    Ok(())
}
