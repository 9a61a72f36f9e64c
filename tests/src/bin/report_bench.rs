//! The report at scale: records `--rows` distinct customer × dimension rows (one hour, two dimensions) into a real
//! agent, then streams the whole report with `meterd report` — the summary and every row (CSV to /dev/null) —
//! measuring wall time, the CLI's peak RSS and the agent's resident memory while it serves the stream; and checks
//! that the one-reply `Admin.Report` refuses clearly past what a client decodes.
//!
//! `cargo build --release -p meterd -p meterd-tests && target/release/report-bench --rows 100000,300000,900000`

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use meterd_proto::v1;
use meterd_tests::{Agent, basic_config, bench_data_dir, meterd_bin};

#[derive(Parser)]
struct Args {
    /// Row counts to measure (comma-separated), each on a fresh agent.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    rows: Vec<usize>,
    #[arg(long, default_value = "target/bench")]
    data_root: PathBuf,
}

/// A process's memory from /proc: (resident now, peak resident), in MiB.
fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Runs `meterd report <args>` to /dev/null: (seconds, the CLI's peak RSS, the agent's highest RSS meanwhile).
fn stream(target: &str, agent_pid: u32, args: &[&str]) -> anyhow::Result<(f64, f64, f64)> {
    let start = Instant::now();
    let mut child = Command::new(meterd_bin())
        .arg("report")
        .args(args)
        .args(["--target", target])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let (mut cli_peak, mut agent_peak) = (0f64, 0f64);
    loop {
        if let Some((_, hwm)) = memory_mib(child.id()) {
            cli_peak = cli_peak.max(hwm);
        }
        if let Some((rss, _)) = memory_mib(agent_pid) {
            agent_peak = agent_peak.max(rss);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "meterd report {args:?} exited {status}");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((start.elapsed().as_secs_f64(), cli_peak, agent_peak))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "| rows | record | summary: time, CLI peak RSS | rows (CSV): time, CLI peak RSS | agent RSS before → while streaming | one-reply Report |"
    );
    println!("|---:|---:|---|---|---|---|");
    for &rows in &args.rows {
        let data = bench_data_dir(&args.data_root)?;
        let agent = Agent::start(&basic_config(&data.path().join("data"), ""))?;
        let client = agent.client().await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        let t = Instant::now();
        let customers = rows.div_ceil(2);
        let mut batch = Vec::with_capacity(10_000);
        for c in 0..customers {
            for dim in ["api_calls", "gb_hours"] {
                let mut e = meterd_tests::stack::event(&format!("{c}-{dim}"), c, dim, "1.5", now);
                // stack::event names l-NNNN licenses; make them distinct past 10,000 customers.
                if let Some(v1::customer::Identity::AwsAccount(a)) =
                    e.customer.as_mut().and_then(|c| c.identity.as_mut())
                {
                    a.license_arn = format!("arn:aws:license-manager::111122223333:license:l-{c:08}");
                }
                batch.push(e);
                if batch.len() == 10_000 {
                    client
                        .metering()
                        .record_usage_batch(v1::RecordUsageBatchRequest { events: std::mem::take(&mut batch) })
                        .await?;
                }
            }
        }
        if !batch.is_empty() {
            client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events: batch }).await?;
        }
        let record_s = t.elapsed().as_secs_f64();
        let before = memory_mib(agent.pid()).map(|m| m.0).unwrap_or_default();
        let (sum_s, sum_cli, sum_agent) = stream(&agent.target(), agent.pid(), &["--format", "csv"])?;
        let (rows_s, rows_cli, rows_agent) = stream(&agent.target(), agent.pid(), &["--rows", "--format", "csv"])?;
        let unary = match client.admin().report(v1::ReportRequest {}).await {
            Ok(r) => format!("{} rows", r.into_inner().rows.len()),
            Err(e) => format!("{:?}", e.code()),
        };
        println!(
            "| {rows} | {record_s:.1} s | {sum_s:.2} s, {sum_cli:.0} MiB | {rows_s:.2} s, {rows_cli:.0} MiB | {before:.0} → {:.0} MiB | {unary} |",
            sum_agent.max(rows_agent)
        );
        drop(agent);
    }
    Ok(())
}
