//! The dashboard's data and silence detection end to end: a real agent (in process, on a manual clock, submitting
//! to the emulator) records days of steady usage through gRPC; one customer stops; the drop shows in
//! `Admin.Status`, `Admin.Report`, `/metrics` and `/api/dashboard` once the first silent hour ends. And the admin
//! listener on a non-loopback address asks for the token on its data, not on probes or the page.
//! (The page itself runs in headless Chromium: `tests/browser/`.)

use chrono::{TimeZone, Utc};
use meterd_emulator::EmulatorConfig;
use meterd_proto::v1;
use meterd_tests::stack::{HOUR, Stack, http_get, parse_metrics};
use meterd_tests::{Agent, basic_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_that_stops_shows_as_a_usage_drop_everywhere_within_the_first_ended_hour() {
    let start = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap().timestamp_millis();
    let extra = "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let s = Stack::start(start + 60_000, EmulatorConfig::default(), &["api_calls"], &["api_calls"], 2, extra)
        .await
        .unwrap();
    let admin = s.admin.expect("admin listener");

    // Three days and ten hours of steady usage from two customers, recorded as each hour happens.
    let stop = start + 3 * 24 * HOUR + 10 * HOUR;
    let mut hour = start;
    while hour < stop {
        for c in 0..2 {
            s.record(&format!("c{c}-{hour}"), c, "api_calls", "40", hour + 60_000).await.unwrap();
        }
        s.advance(HOUR, HOUR).await;
        hour += HOUR;
    }
    let status = s.client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.usage_drops, vec![], "nothing dropped yet");

    // Customer 0 stops; customer 1 goes on (so the product's total, at 50%, is not a drop).
    s.record(&format!("c1-{stop}"), 1, "api_calls", "40", stop + 60_000).await.unwrap();
    s.advance(HOUR, HOUR).await;

    let status = s.client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.usage_drops.len(), 1, "{:?}", status.usage_drops);
    let d = &status.usage_drops[0];
    assert_eq!(d.hour.as_ref().unwrap().seconds * 1000, stop);
    assert_eq!((d.product.as_str(), d.dimension.as_str()), ("app", "api_calls"));
    assert!(d.customer.ends_with(&meterd_tests::stack::arn(0)), "{}", d.customer);
    assert_eq!((d.observed.as_str(), d.baseline.as_str()), ("0", "40"));
    assert_eq!(s.report().await.usage_drops, status.usage_drops);

    // The CLI an operator runs shows it: `meterd status`, `status --json`, `report` (table and JSON).
    let (status_text, report_text) = (cli(&s.target, &["status"]).await, cli(&s.target, &["report"]).await);
    let line = format!("app/api_calls customer {}: 0 recorded, baseline 40", d.customer);
    assert!(
        status_text.contains("USAGE DROPS    1 in the last ended hour") && status_text.contains(&line),
        "{status_text}"
    );
    assert!(
        report_text.contains(&format!("USAGE DROP: {}", meterd::clock::rfc3339(stop))) && report_text.contains(&line),
        "{report_text}"
    );
    let json: serde_json::Value = serde_json::from_str(&cli(&s.target, &["status", "--json"]).await).unwrap();
    assert_eq!(json["usage_drops"][0]["baseline"], "40");
    // JSON Lines: the drops are in the last line, with the totals.
    let lines = cli(&s.target, &["report", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(json["type"], "totals");
    assert_eq!(json["usage_drops"][0]["customer"], d.customer.as_str());

    let (code, text) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(parse_metrics(&text).get("meterd_usage_drops{product=\"app\",dimension=\"api_calls\"}"), Some(&1.0));
    assert!(!text.contains("l-0000"), "a customer leaked into a metric label:\n{text}");

    let (code, body) = http_get(admin, "/api/dashboard").await;
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["status"]["usage_drops"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["status"]["usage_drops"][0]["baseline"], "40");
    // The chart has one point per report hour: 3 days and 10 hours of both customers, then the stop hour.
    assert_eq!(doc["usage"]["hours"].as_array().unwrap().len(), 3 * 24 + 11);
    assert_eq!(doc["totals"]["reconciled"], true);
    s.stop().await;
}

/// `meterd ARGS --target TARGET`'s stdout (off the runtime's threads: the agent runs on them).
async fn cli(target: &str, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(meterd_tests::meterd_bin());
    cmd.args(args).args(["--target", target]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// GET with an optional bearer token; returns (status, body).
async fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
}

#[tokio::test]
async fn a_non_loopback_admin_listener_needs_the_token_for_data_but_not_for_probes_or_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let token = "dashboard-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let config = basic_config(&dir.path().join("data"), "[admin]\nlisten = \"0.0.0.0:0\"\n")
        .replace("listen = \"127.0.0.1:0\"\n", &format!("listen = \"127.0.0.1:0\"\ntoken_file = {token_file:?}\n"));
    let mut agent = Agent::start(&config).unwrap();
    let port = agent.admin.clone().expect("admin= on the ready line").rsplit_once(':').unwrap().1.to_string();
    let addr = format!("127.0.0.1:{port}");

    for path in ["/api/dashboard", "/metrics"] {
        assert_eq!(get(&addr, path, None).await.0, 401, "{path} without a token");
        assert_eq!(get(&addr, path, Some("dashboard-token-0123456788")).await.0, 401, "{path} with a wrong token");
        assert_eq!(get(&addr, path, Some(token)).await.0, 200, "{path} with the token");
    }
    for path in ["/", "/assets/dashboard.js", "/assets/uPlot.iife.min.js", "/healthz", "/readyz"] {
        assert_eq!(get(&addr, path, None).await.0, 200, "{path} needs no token");
    }
    let (_, metrics) = get(&addr, "/metrics", Some(token)).await;
    assert!(parse_metrics(&metrics).get("meterd_auth_refused_total").is_some_and(|n| *n >= 4.0), "{metrics}");
    assert_eq!(agent.terminate().unwrap(), Some(0));

    // Without a token file, a non-loopback admin address is refused, naming the key.
    let path = dir.path().join("open.toml");
    std::fs::write(&path, basic_config(&dir.path().join("data2"), "[admin]\nlisten = \"0.0.0.0:0\"\n")).unwrap();
    let out = std::process::Command::new(meterd_tests::meterd_bin()).arg("check-config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("admin.listen") && err.contains("server.token_file"), "{err}");
}

#[tokio::test]
async fn on_loopback_the_dashboard_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent =
        Agent::start(&basic_config(&dir.path().join("data"), "[admin]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    let addr = agent.admin.clone().unwrap();
    let (code, body) = get(&addr, "/api/dashboard", None).await;
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["usage"]["hours"], serde_json::json!([]));
    assert_eq!(doc["at_risk"]["total"], 0);
    let (code, page) = get(&addr, "/", None).await;
    assert_eq!(code, 200);
    assert!(page.contains("/assets/uPlot.iife.min.js") && !page.contains("http"), "assets are local: {page}");
    assert_eq!(agent.terminate().unwrap(), Some(0));
}
