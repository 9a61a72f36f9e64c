//! `meterd verify` end to end: the agent submits to the emulator, the emulator's CloudTrail-shaped records
//! (`/_emulator/cloudtrail`, both as a CloudTrail log file and as `lookup-events` output) are written to files,
//! and the real binary matches them with the agent's ledger. A clean run reconciles; a record removed from the
//! trail (missing), a call made by another system (foreign) and an altered quantity (mismatch) are each found.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use meterd_emulator::EmulatorConfig;
use meterd_tests::meterd_bin;
use meterd_tests::stack::{ACCOUNT, HOUR, Stack, arn, http_get};
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `meterd verify` off the async workers (the agent under test shares this runtime).
async fn verify(target: &str, files: &[&Path], format: &str) -> Run {
    let mut cmd = std::process::Command::new(meterd_bin());
    cmd.args(["verify", "--target", target, "--format", format, "--cloudtrail"]).args(files);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", run.stdout, run.stderr))
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

/// The metering record ids of a trail's Success results, with the event they are in.
fn success_ids(trail: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    for e in trail["Records"].as_array().unwrap() {
        for r in e["responseElements"]["results"].as_array().into_iter().flatten() {
            if r["status"] == "Success" {
                ids.push(r["meteringRecordId"].as_str().unwrap().to_string());
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_reconciles_and_missing_foreign_and_mismatched_records_are_each_found() {
    let h = Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap().timestamp_millis();
    let s = Stack::start(h + 60_000, EmulatorConfig::default(), &["api_calls"], &["api_calls"], 3, "").await.unwrap();
    for c in 0..3 {
        s.record(&format!("k-{c}"), c, "api_calls", &format!("{}", 5 + c), h + 120_000).await.unwrap();
    }
    s.advance(HOUR + 2 * 60_000, 10 * 60_000).await;
    s.wait_for("3 accepted records", Duration::from_secs(60), |r| {
        r.rows.iter().filter(|row| row.state == "accepted").count() == 3
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let emu = s.emulator_addr().unwrap();
    let (status, body) = http_get(emu, "/_emulator/cloudtrail").await;
    assert_eq!(status, 200, "{body}");
    let trail: Value = serde_json::from_str(&body).unwrap();
    let e = &trail["Records"][0];
    assert_eq!(
        (e["eventSource"].as_str(), e["eventName"].as_str()),
        (Some("metering-marketplace.amazonaws.com"), Some("BatchMeterUsage"))
    );
    assert_eq!(e["requestParameters"]["usageRecords"][0]["customerAWSAccountId"], ACCOUNT);
    let ids = success_ids(&trail);
    assert_eq!(ids.len(), 3, "{trail}");

    // Clean: the log file and the lookup-events form both reconcile.
    let clean = write(dir.path(), "clean.json", &trail);
    let run = verify(&s.target, &[&clean], "json").await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let v = json(&run);
    assert_eq!(v["reconciled"], true);
    assert_eq!((v["summary"]["matched"].as_u64(), v["summary"]["meterd_accepted"].as_u64()), (Some(3), Some(3)));
    let (status, lookup) = http_get(emu, "/_emulator/cloudtrail?format=lookup-events").await;
    assert_eq!(status, 200);
    let lookup_file = dir.path().join("lookup.json");
    std::fs::write(&lookup_file, lookup).unwrap();
    let run = verify(&s.target, &[&lookup_file], "table").await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("matched 3") && run.stdout.contains("RECONCILED"), "{}", run.stdout);

    // Missing: one of meterd's accepted records is not in the trail.
    let gone = &ids[0];
    let mut missing = trail.clone();
    for e in missing["Records"].as_array_mut().unwrap() {
        if let Some(results) = e["responseElements"]["results"].as_array_mut() {
            results.retain(|r| r["meteringRecordId"] != gone.as_str());
        }
    }
    let run = verify(&s.target, &[&write(dir.path(), "missing.json", &missing)], "json").await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let d = &json(&run)["discrepancies"];
    assert_eq!(d.as_array().unwrap().len(), 1, "{d}");
    assert_eq!((d[0]["kind"].as_str(), d[0]["metering_record_id"].as_str()), (Some("missing"), Some(gone.as_str())));

    // Mismatch: the trail shows another quantity for one of them.
    let altered = &ids[1];
    let mut mismatch = trail.clone();
    for e in mismatch["Records"].as_array_mut().unwrap() {
        for r in e["responseElements"]["results"].as_array_mut().into_iter().flatten() {
            if r["meteringRecordId"] == altered.as_str() {
                let q = r["usageRecord"]["quantity"].as_u64().unwrap();
                r["usageRecord"]["quantity"] = Value::from(q + 1);
            }
        }
    }
    let run = verify(&s.target, &[&write(dir.path(), "mismatch.json", &mismatch)], "csv").await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(lines[0].starts_with("kind,hour,product,customer,dimension,meterd_quantity,cloudtrail_quantity"));
    assert!(lines[1].starts_with("mismatch,") && lines[1].contains(altered.as_str()), "{}", lines[1]);
    assert!(lines[1].contains(",quantity,"), "{}", lines[1]);

    // Foreign: another system bills a customer's next hour straight at the emulator.
    let answer = s.bill_elsewhere(2, "api_calls", 7, h + HOUR).await;
    assert!(answer.contains("\"Success\""), "{answer}");
    let (_, body) = http_get(emu, "/_emulator/cloudtrail").await;
    let with_foreign: Value = serde_json::from_str(&body).unwrap();
    let run = verify(&s.target, &[&write(dir.path(), "foreign.json", &with_foreign)], "json").await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let v = json(&run);
    let d = v["discrepancies"].as_array().unwrap();
    assert_eq!(d.len(), 1, "{v}");
    assert_eq!(d[0]["kind"], "foreign");
    assert_eq!(d[0]["customer"], format!("aws:{ACCOUNT}/{}", arn(2)));
    assert_eq!(d[0]["cloudtrail_quantity"], 7);
    assert_eq!(v["summary"]["matched"], 3);

    // Several files at once (a directory of them is read the same way): every problem is found together.
    let run = verify(
        &s.target,
        &[&write(dir.path(), "m2.json", &missing), &write(dir.path(), "f2.json", &with_foreign)],
        "json",
    )
    .await;
    let v = json(&run);
    let kinds: Vec<&str> = v["discrepancies"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap()).collect();
    // The missing record is in f2.json (the full trail), so only the foreign call remains.
    assert_eq!(kinds, vec!["foreign"], "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_trails_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"items": []}"#).unwrap();
    let run = verify("127.0.0.1:1", &[&bad], "table").await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("bad.json") && run.stderr.contains("Records"), "{}", run.stderr);
}
