//! A ledger past what one reply can carry (40,000 rows: more than the 4 MiB a gRPC client decodes) against the real
//! binary: the one-reply `Admin.Report` refuses (FAILED_PRECONDITION) with a message naming the streaming call, and `meterd report`
//! streams the summary and every row (table, JSON Lines, CSV) with counts and totals that match what was recorded.

use std::process::Command;

use meterd_proto::v1;
use meterd_tests::stack::event;
use meterd_tests::{Agent, basic_config, meterd_bin};

const HOUR: i64 = 3_600_000;
/// 2 dimensions × this many customers = 40,000 rows (about 4.8 MB in one reply).
const CUSTOMERS: usize = 20_000;
const ROWS: usize = 2 * CUSTOMERS;

/// Runs `meterd <args> --target <target>`: (exit code, stdout, stderr).
async fn meterd(target: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(meterd_bin());
    cmd.args(args).args(["--target", target]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_past_one_reply_streams_whole_with_matching_totals() {
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::start(&basic_config(&data.path().join("data"), "")).unwrap();
    let client = agent.client().await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // All in the current hour (ended hours are sealed at start, so usage for them counts as late in this one). It
    // is sealed an hour and `pipeline.seal_grace` after it starts: never while this test runs.
    let hour = now / HOUR * HOUR;
    let mut events = Vec::with_capacity(ROWS);
    for c in 0..CUSTOMERS {
        for dim in ["api_calls", "gb_hours"] {
            events.push(event(&format!("{c}-{dim}"), c, dim, "1.5", now));
        }
    }
    for batch in events.chunks(5_000) {
        let r = client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events: batch.to_vec() }).await;
        let results = r.unwrap().into_inner().results;
        assert!(results.iter().all(|r| matches!(r.outcome, Some(v1::event_result::Outcome::Receipt(_)))));
    }

    // One reply would pass the client's 4 MiB: a clear refusal, not a transport error.
    let err = client.admin().report(v1::ReportRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("Admin.ReportStream") && err.message().contains("meterd report --rows"), "{err:?}");

    // Every row, as CSV: one line each, recorded exactly what was sent (1.5 per row).
    let (code, csv, stderr) = meterd(&agent.target(), &["report", "--rows", "--format", "csv"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("hour,product,customer,dimension,state,recorded"), "{}", lines[0]);
    assert_eq!(lines.len() - 1, ROWS);
    let recorded: f64 = lines[1..].iter().map(|l| l.split(',').nth(5).unwrap().parse::<f64>().unwrap()).sum();
    assert_eq!(recorded, 1.5 * ROWS as f64);

    // JSON Lines: the rows, then the totals, which reconcile and match the rows.
    let (code, json, stderr) = meterd(&agent.target(), &["report", "--rows", "--format", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), ROWS + 1);
    assert!(lines[..ROWS].iter().all(|l| l["type"] == "row"));
    let t = &lines[ROWS];
    assert_eq!(
        (t["type"].as_str(), t["rows_sent"].as_u64(), t["consistent"].as_bool()),
        (Some("totals"), Some(ROWS as u64), Some(true))
    );
    assert_eq!(t["totals"]["recorded"], (3 * ROWS / 2).to_string());
    assert_eq!(t["totals"]["reconciled"], true);
    assert_eq!(t["totals"]["open"], (3 * ROWS / 2).to_string());
    assert_eq!(t["selected"]["rows"], ROWS as u64);

    // The default: the summary, one line per hour × dimension with its customers.
    let (code, table, stderr) = meterd(&agent.target(), &["report"]).await;
    assert_eq!(code, 0, "{stderr}");
    let groups: Vec<&str> = table.lines().filter(|l| l.contains(" app ")).collect();
    assert_eq!(groups.len(), 2, "{table}");
    assert!(groups.iter().all(|l| l.split_whitespace().nth(3) == Some(&CUSTOMERS.to_string()[..])), "{table}");
    assert!(
        table.contains(&format!("totals: recorded {} ", 3 * ROWS / 2)) && table.contains("[reconciled]"),
        "{table}"
    );

    // Filters narrow what is shown; the totals stay the whole ledger's.
    let since = meterd::clock::rfc3339(hour);
    let (code, csv, stderr) =
        meterd(&agent.target(), &["report", "--format", "csv", "--since", &since, "--dimension", "gb_hours"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].starts_with(&format!("{since},app,gb_hours,{CUSTOMERS},")), "{csv}");
    let customer = format!("aws:111122223333/{}", meterd_tests::stack::arn(7));
    let (code, csv, _) =
        meterd(&agent.target(), &["report", "--rows", "--format", "csv", "--customer", &customer]).await;
    assert_eq!((code, csv.lines().count()), (0, 1 + 2), "{csv}");
    let later = meterd::clock::rfc3339(hour + HOUR);
    let (code, json, _) = meterd(&agent.target(), &["report", "--format", "json", "--since", &later]).await;
    let totals: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!((code, json.lines().count(), totals["groups_sent"].as_u64()), (0, 1, Some(0)), "{json}");
    assert_eq!(totals["totals"]["recorded"], (3 * ROWS / 2).to_string(), "the totals stay the whole ledger's");

    // A bad filter names its field.
    let (code, _, stderr) = meterd(&agent.target(), &["report", "--state", "pending"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("InvalidArgument") && stderr.contains("state"), "{stderr}");
}
