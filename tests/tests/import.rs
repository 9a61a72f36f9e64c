//! `meterd import` against the real binary and a real agent: CSV and JSONL rows reach the ledger exactly, a
//! re-run replays instead of doubling, an import killed mid-way and run again ends with exact totals, every
//! refusal reason lands in the refusal file with its row, and memory does not grow with the file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meterd::domain::quantity::Micros;
use meterd_tests::{Agent, meterd_bin};

const ACCOUNT: &str = "111122223333";
const HOUR: i64 = 3_600_000;

fn arn(n: usize) -> String {
    format!("arn:aws:license-manager::{ACCOUNT}:license:l-{n:04}")
}

fn config(data: &Path, pipeline: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
[ingest]
default_product = "app"
[pipeline]
{pipeline}
[products.app]
identity = "license"
dimensions = ["api_calls", "gb_hours"]
[products.other]
identity = "license"
dimensions = ["api_calls"]
"#,
        data.display()
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    meterd::clock::rfc3339(ms)
}

/// Row `i` of a generated backfill: 1 to 3 hours back, seven customers, two dimensions, exact fractions.
fn usage(i: usize, base_hour: i64) -> (String, String, String, String) {
    let ts = base_hour - (1 + (i % 3) as i64) * HOUR + (i as i64 * 7919) % HOUR;
    let quantity = format!("{}.{:02}", i % 5, i % 100);
    let dimension = if i.is_multiple_of(2) { "api_calls" } else { "gb_hours" };
    (rfc3339(ts), arn(i % 7), dimension.to_string(), quantity)
}

fn write_csv(path: &Path, rows: usize, base_hour: i64) -> Micros {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(f, "timestamp,customer_aws_account_id,license_arn,dimension,quantity,tag:team").unwrap();
    let mut total = Micros::ZERO;
    for i in 0..rows {
        let (ts, arn, dim, q) = usage(i, base_hour);
        writeln!(f, "{ts},{ACCOUNT},{arn},{dim},{q},team-{}", i % 3).unwrap();
        total = total.checked_add(Micros::parse_event(&q).unwrap()).unwrap();
    }
    f.flush().unwrap();
    total
}

fn write_jsonl(path: &Path, rows: usize, base_hour: i64) -> Micros {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut total = Micros::ZERO;
    for i in 0..rows {
        let (ts, arn, dim, q) = usage(i, base_hour);
        // Half the rows carry their own key, half are keyed by their content; quantities as JSON numbers.
        let key = if i.is_multiple_of(2) { format!(",\"idempotency_key\":\"jsonl-{i}\"") } else { String::new() };
        writeln!(
            f,
            r#"{{"timestamp":"{ts}","customer_aws_account_id":"{ACCOUNT}","license_arn":"{arn}","dimension":"{dim}","quantity":{q},"tags":{{"team":"t{}"}}{key}}}"#,
            i % 3
        )
        .unwrap();
        total = total.checked_add(Micros::parse_event(&q).unwrap()).unwrap();
    }
    f.flush().unwrap();
    total
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The summary's `key=value` counts.
    fn counts(&self) -> BTreeMap<String, u64> {
        self.stdout
            .split_whitespace()
            .filter_map(|w| w.trim_start_matches('(').trim_end_matches(')').split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }

    fn peak_rss_mib(&self) -> f64 {
        let after = self.stdout.split("peak RSS ").nth(1).expect("peak RSS in the summary");
        after.split_whitespace().next().unwrap().parse().unwrap()
    }
}

fn import(agent: &Agent, args: &[&str]) -> Run {
    let out = Command::new(meterd_bin())
        .arg("import")
        .args(args)
        .args(["--target", &agent.target(), "--progress-every", "200ms"])
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn recorded(agent: &Agent) -> String {
    let client = agent.client().await.unwrap();
    let r = client.admin().report(meterd_proto::v1::ReportRequest {}).await.unwrap().into_inner();
    r.totals.unwrap().recorded
}

async fn events_stored(agent: &Agent) -> u64 {
    let client = agent.client().await.unwrap();
    client.admin().status(meterd_proto::v1::StatusRequest {}).await.unwrap().into_inner().events_stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_jsonl_rows_reach_the_ledger_exactly_and_a_rerun_replays() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&config(&dir.path().join("data"), "")).unwrap();
    let base = meterd::clock::hour_start(now_ms());
    let csv = dir.path().join("usage.csv");
    let jsonl = dir.path().join("usage.jsonl");
    let csv_total = write_csv(&csv, 3_000, base);
    // Other hours' offsets than the CSV's, so the two files are different usage.
    let jsonl_total = write_jsonl(&jsonl, 2_000, base - 7 * 60_000);

    let first = import(&agent, &[csv.to_str().unwrap()]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let c = first.counts();
    assert_eq!((c["rows"], c["accepted"], c["replayed"], c["refused"]), (3_000, 3_000, 0, 0), "{}", first.stdout);
    assert_eq!(recorded(&agent).await, csv_total.to_string());
    // stderr is not a terminal here: plain progress lines, the last one with every count.
    let last = first.stderr.lines().rfind(|l| l.starts_with("import: ")).expect("a progress line");
    assert!(last.contains("3000 rows") && last.contains("rows/s") && last.contains("accepted 3000"), "{last}");
    assert!(last.contains("100.0% of"), "{last}");
    assert!(!csv.with_extension("csv.refused.jsonl").exists(), "no refusal file when nothing is refused");

    let jl = import(&agent, &[jsonl.to_str().unwrap()]);
    assert_eq!(jl.code, 0, "{}{}", jl.stdout, jl.stderr);
    assert_eq!(jl.counts()["accepted"], 2_000, "{}", jl.stdout);
    let both = csv_total.checked_add(jsonl_total).unwrap();
    assert_eq!(recorded(&agent).await, both.to_string());

    // Both again, the JSONL gzipped and the CSV from stdin: every row is a replay, nothing is counted twice.
    let gz = dir.path().join("usage.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&std::fs::read(&jsonl).unwrap()).unwrap();
    enc.finish().unwrap();
    let again = import(&agent, &[gz.to_str().unwrap()]);
    assert_eq!((again.counts()["replayed"], again.counts()["accepted"]), (2_000, 0), "{}", again.stdout);
    let out = Command::new(meterd_bin())
        .args(["import", "-", "--format", "csv", "--target", &agent.target()])
        .stdin(std::fs::File::open(&csv).unwrap())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdin_run = Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::new(),
    };
    assert_eq!((stdin_run.code, stdin_run.counts()["replayed"]), (0, 3_000), "{}", stdin_run.stdout);
    assert_eq!(recorded(&agent).await, both.to_string());

    // A dry run reads and checks without sending.
    let dry = import(&agent, &["--dry-run", csv.to_str().unwrap()]);
    assert_eq!((dry.code, dry.counts()["valid"]), (0, 3_000), "{}", dry.stdout);
    assert_eq!(recorded(&agent).await, both.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_midway_and_run_again_ends_with_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&config(&dir.path().join("data"), "")).unwrap();
    let base = meterd::clock::hour_start(now_ms());
    let file = dir.path().join("big.csv");
    const ROWS: usize = 20_000;
    let total = write_csv(&file, ROWS, base);

    // Small batches, one at a time: the kill lands while rows are still being sent.
    let mut child = Command::new(meterd_bin())
        .args(["import", file.to_str().unwrap(), "--batch", "100", "--in-flight", "1", "--target", &agent.target()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while events_stored(&agent).await == 0 {
        assert!(start.elapsed() < Duration::from_secs(120), "the import stored nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The batch in flight at the kill may still be stored by the agent after this count.
    let stored_by_first = events_stored(&agent).await;
    assert!(stored_by_first > 0 && stored_by_first < ROWS as u64, "killed mid-way: {stored_by_first} stored");

    let rerun = import(&agent, &[file.to_str().unwrap()]);
    assert_eq!(rerun.code, 0, "{}{}", rerun.stdout, rerun.stderr);
    let c = rerun.counts();
    assert!(c["replayed"] >= stored_by_first && c["replayed"] < ROWS as u64, "{}", rerun.stdout);
    assert_eq!(c["accepted"] + c["replayed"], ROWS as u64, "{}", rerun.stdout);
    assert_eq!(recorded(&agent).await, total.to_string());
    assert_eq!(events_stored(&agent).await, ROWS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_dies_midway_stops_the_import_and_a_rerun_after_its_restart_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&config(&dir.path().join("data"), "")).unwrap();
    let base = meterd::clock::hour_start(now_ms());
    let file = dir.path().join("rows.csv");
    const ROWS: usize = 20_000;
    let total = write_csv(&file, ROWS, base);
    let child = Command::new(meterd_bin())
        .args(["import", file.to_str().unwrap(), "--batch", "100", "--in-flight", "1", "--target", &agent.target()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while events_stored(&agent).await == 0 {
        assert!(start.elapsed() < Duration::from_secs(120), "the import stored nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    agent.kill9();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("import interrupted: rows 1..") && stderr.contains("Run the same command again"),
        "{stderr}"
    );

    let agent = agent.restart().unwrap();
    let rerun = import(&agent, &[file.to_str().unwrap()]);
    assert_eq!(rerun.code, 0, "{}{}", rerun.stdout, rerun.stderr);
    let c = rerun.counts();
    assert!(c["replayed"] > 0 && c["accepted"] + c["replayed"] == ROWS as u64, "{}", rerun.stdout);
    assert_eq!(recorded(&agent).await, total.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_reason_is_written_with_its_row_and_the_exit_status_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&config(&dir.path().join("data"), "late_usage = \"reject\"")).unwrap();
    // Seal every ended hour, so a row for the last one is late (and refused by the late policy). Again if the hour
    // turned during the flush: the hour before `hour` must be the one it sealed.
    let now = loop {
        let before = now_ms();
        let flush = Command::new(meterd_bin()).args(["flush", "--target", &agent.target()]).output().unwrap();
        assert!(flush.status.success(), "{}", String::from_utf8_lossy(&flush.stderr));
        let after = now_ms();
        if meterd::clock::hour_start(before) == meterd::clock::hour_start(after) {
            break after;
        }
    };
    let hour = meterd::clock::hour_start(now);
    // A tenant of the other product.
    let put = Command::new(meterd_bin())
        .args(["customers", "--target", &agent.target(), "put", "t-other", "--product", "other"])
        .args(["--account-id", ACCOUNT, "--license-arn", &arn(99)])
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));

    // In the current hour even during its first minute (a minute back would be the hour just sealed: late).
    let open = rfc3339((now - 60_000).max(hour));
    let row = |ts: &str, dim: &str, q: &str, extra: &str| {
        format!(
            r#"{{"timestamp":"{ts}","customer_aws_account_id":"{ACCOUNT}","license_arn":"{}","dimension":"{dim}","quantity":"{q}"{extra}}}"#,
            arn(1)
        )
    };
    let lines = [
        row(&open, "api_calls", "1", ""),                            // 1 stored
        "this is not JSON".to_string(),                              // 2 malformed
        row("last tuesday", "api_calls", "1", ""),                   // 3 invalid (timestamp, here)
        row(&open, "no_such_dimension", "1", ""),                    // 4 invalid (dimension, agent)
        row(&rfc3339(hour - 3 * 24 * HOUR), "api_calls", "1", ""),   // 5 past_deadline
        row(&open, "api_calls", "2", r#","idempotency_key":"k-1""#), // 6 stored
        row(&open, "api_calls", "3", r#","idempotency_key":"k-1""#), // 7 conflict
        row(&rfc3339(hour - HOUR + 60_000), "api_calls", "1", ""),   // 8 late
        format!(
            r#"{{"timestamp":"{open}","tenant_id":"t-other","product":"app","dimension":"api_calls","quantity":"1"}}"#
        ), // 9 not_active
        row(&open, "api_calls", "1.0000001", ""),                    // 10 invalid (quantity, agent)
    ];
    let file = dir.path().join("bad.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    // One batch in flight: rows 6 and 7 share a key and sit in different batches, and which of the two is the
    // conflict depends on which batch the agent stores first (with several in flight, either can).
    let run = import(&agent, &[file.to_str().unwrap(), "--batch", "3", "--in-flight", "1"]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let c = run.counts();
    assert_eq!((c["rows"], c["accepted"], c["refused"]), (10, 2, 8), "{}", run.stdout);
    for (reason, n) in
        [("malformed", 1), ("invalid", 3), ("past_deadline", 1), ("conflict", 1), ("late", 1), ("not_active", 1)]
    {
        assert_eq!(c.get(reason).copied(), Some(n), "{reason} in {}", run.stdout);
    }
    let refusals = PathBuf::from(format!("{}.refused.jsonl", file.display()));
    assert!(run.stdout.contains(&format!("refused rows: {}", refusals.display())), "{}", run.stdout);
    let listed: Vec<serde_json::Value> = std::fs::read_to_string(&refusals)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each refusal line is JSON"))
        .collect();
    let got: Vec<(u64, &str, &str)> = listed
        .iter()
        .map(|v| (v["row"].as_u64().unwrap(), v["reason"].as_str().unwrap(), v["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "malformed", ""),
            (3, "invalid", "timestamp"),
            (4, "invalid", "dimension"),
            (5, "past_deadline", "timestamp"),
            (7, "conflict", "idempotency_key"),
            (8, "late", "timestamp"),
            (9, "not_active", "customer"),
            (10, "invalid", "quantity"),
        ]
    );
    // The past-deadline message names the deadline; each line carries the row as read.
    let past = &listed[3];
    let deadline = meterd::domain::deadline::deadline(hour - 3 * 24 * HOUR, 24 * HOUR, 30 * 60_000);
    assert!(past["message"].as_str().unwrap().contains(&format!("until {}", rfc3339(deadline))), "{past}");
    assert_eq!(listed[0]["input"], "this is not JSON");
    assert_eq!(listed[4]["input"]["quantity"], "3");
    assert_eq!(listed[0]["line"], 2);

    // Fixed and run again: the stale refusal file goes away with the refusals.
    std::fs::write(&file, format!("{}\n", lines[0])).unwrap();
    let fixed = import(&agent, &[file.to_str().unwrap()]);
    assert_eq!((fixed.code, fixed.counts()["replayed"]), (0, 1), "{}", fixed.stdout);
    assert!(!refusals.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&config(&dir.path().join("data"), "")).unwrap();
    let base = meterd::clock::hour_start(now_ms());
    let small = dir.path().join("small.csv");
    let large = dir.path().join("large.csv");
    write_csv(&small, 4_000, base);
    // Ten times the rows (other hours than the small file's, so nothing is a replay).
    write_csv(&large, 40_000, base - 11 * 60_000);
    // Batches of 200, two in flight: at most ~1,000 rows in the pipeline, so both runs reach its steady state.
    let args = ["--batch", "200", "--in-flight", "2"];
    let s = import(&agent, &[&[small.to_str().unwrap()][..], &args].concat());
    let l = import(&agent, &[&[large.to_str().unwrap()][..], &args].concat());
    assert_eq!((s.code, l.code), (0, 0), "{}{}", l.stdout, l.stderr);
    assert_eq!(l.counts()["accepted"], 40_000);
    let (small_mib, large_mib) = (s.peak_rss_mib(), l.peak_rss_mib());
    println!("peak RSS: {small_mib} MiB for 4,000 rows, {large_mib} MiB for 40,000 rows");
    // Holding every row (key, event, input) would cost ~20 MiB more for 36,000 more rows; the pipeline holds a
    // fixed number of batches.
    assert!(large_mib < small_mib + 6.0, "peak RSS grew from {small_mib} to {large_mib} MiB");
}
