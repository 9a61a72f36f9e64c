//! The admin listener: `/metrics` values agree with the report after an end-to-end run; health endpoints
//! answer; no unbounded labels (tenant ids, customers) appear.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use meterd_emulator::EmulatorConfig;
use meterd_proto::v1;
use meterd_tests::stack::{HOUR, Stack, http_get};

use meterd_tests::stack::parse_metrics as parse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_report() {
    let h = Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap().timestamp_millis();
    let extra = "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let s = Stack::start(h + 60_000, EmulatorConfig::default(), &["api_calls", "gb_hours"], &["api_calls"], 3, extra)
        .await
        .unwrap();
    let admin = s.admin.expect("admin listener");
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    for c in 0..3 {
        s.record(&format!("a{c}"), c, "api_calls", "2.5", h + 120_000).await.unwrap();
    }
    s.record("poison", 0, "gb_hours", "4", h + 120_000).await.unwrap(); // unknown to the listing: rejected
    s.record("a0", 0, "api_calls", "2.5", h + 120_000).await.unwrap(); // replay
    assert!(s.record("bad", 0, "api_calls", "-1", h + 120_000).await.is_err());
    let tenant = meterd_proto::v1::UsageEvent {
        customer: Some(v1::Customer { identity: Some(v1::customer::Identity::TenantId("secret-tenant".into())) }),
        ..meterd_tests::stack::event("t1", 0, "api_calls", "1", h + 120_000)
    };
    s.client.metering().record_usage(v1::RecordUsageRequest { event: Some(tenant) }).await.unwrap();
    s.advance(HOUR + 2 * 60_000, 10 * 60_000).await;
    let r = s
        .wait_for("settled", Duration::from_secs(60), |r| {
            let t = r.totals.as_ref().unwrap();
            t.accepted == "6" && t.rejected == "4"
        })
        .await;

    let (code, text) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(!text.contains("secret-tenant") && !text.contains("license"), "unbounded labels leaked:\n{text}");
    let m = parse(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing from\n{text}"));
    assert_eq!(get("meterd_events_accepted_total"), 5.0);
    // a0, a1, a2 (api_calls), poison (gb_hours), the tenant's usage: five buckets, five records.
    assert_eq!(get("meterd_buckets_sealed_total"), 5.0);
    assert_eq!(get("meterd_records_sealed_total"), r.rows.iter().filter(|row| row.state != "open").count() as f64);
    assert_eq!(get("meterd_idempotent_replays_total"), 1.0);
    assert_eq!(get("meterd_events_refused_total{reason=\"invalid_quantity\"}"), 1.0);
    assert_eq!(get("meterd_quantity_accepted{product=\"app\",dimension=\"api_calls\"}"), 8.5);
    assert_eq!(get("meterd_quantity_accepted{product=\"app\",dimension=\"gb_hours\"}"), 4.0);
    let accepted_rows = r.rows.iter().filter(|row| row.state == "accepted").count() as f64;
    assert_eq!(get("meterd_records_accepted_total"), accepted_rows);
    assert_eq!(get("meterd_records_rejected_total{reason=\"InvalidUsageDimensionException\"}"), 1.0);
    assert_eq!(get("meterd_records_pending"), 1.0, "the unmapped tenant's record is pending");
    assert_eq!(get("meterd_records_at_risk"), 1.0);
    assert!(get("meterd_deadline_seconds") > 0.0);
    assert!(get("meterd_submit_calls_total{account=\"emu\",outcome=\"ok\"}") >= 1.0);
    assert!(get("meterd_submit_call_seconds_count") >= 1.0);
    assert!(get("meterd_store_size_bytes") > 0.0);
    for worker in ["writer", "flusher", "checkpoint"] {
        let busy = get(&format!("meterd_store_busy_seconds{{worker=\"{worker}\"}}"));
        assert!((0.0..60.0).contains(&busy), "{worker} busy for {busy} s");
    }
    assert!(get("meterd_clock_skew_seconds{account=\"emu\"}").abs() < 2.0);
    s.stop().await;
}
