//! Seal → submit → account, end to end: the agent in-process with a manual clock, the real
//! `aws-sdk-marketplacemetering` client talking HTTP to the emulator. Invariants 3–8 of
//! docs/ARCHITECTURE.md.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use meterd::clock::Clock;
use meterd_emulator::{EmulatorConfig, Faults};
use meterd_proto::v1;
use meterd_tests::stack::{HOUR, Stack, arn};
use tonic::Code;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().timestamp_millis()
}

const WAIT: Duration = Duration::from_secs(120);

fn pending_done(r: &v1::ReportResponse) -> bool {
    let t = r.totals.as_ref().unwrap();
    t.pending == "0" && r.rows.iter().any(|row| row.state != "open")
}

/// Accepted units per (license ARN, dimension) according to the emulator's ledger.
fn emulator_totals(s: &Stack) -> BTreeMap<(String, String), u128> {
    s.emulator
        .totals()
        .into_iter()
        .map(|t| ((t.license_arn.unwrap_or_default(), t.dimension), t.quantity.parse::<u128>().expect("integer total")))
        .collect()
}

/// Accepted units per (license ARN, dimension) according to meterd's report.
fn report_accepted(r: &v1::ReportResponse) -> BTreeMap<(String, String), u128> {
    let mut m = BTreeMap::new();
    for row in &r.rows {
        if row.accepted > 0 {
            let arn = row.customer.rsplit_once('/').map(|(_, a)| a.to_string()).unwrap_or_default();
            *m.entry((arn, row.dimension.clone())).or_default() += u128::from(row.accepted);
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_usage_is_sealed_submitted_and_accepted_exactly() {
    let h = at(2026, 11, 10, 10, 0);
    let s = Stack::start(
        h + 15 * 60_000,
        EmulatorConfig::default(),
        &["api_calls", "gb_hours"],
        &["api_calls", "gb_hours"],
        3,
        "",
    )
    .await
    .unwrap();
    let mut n = 0;
    for c in 0..3 {
        for (dim, q) in [("api_calls", "1.5"), ("api_calls", "2.25"), ("gb_hours", "0.4"), ("gb_hours", "7")] {
            let mut ev = meterd_tests::stack::event(&format!("e{n}"), c, dim, q, h + 60_000 * n);
            if n % 2 == 0 {
                ev.tags.insert("team".into(), format!("t{}", n % 3));
            }
            s.client.metering().record_usage(v1::RecordUsageRequest { event: Some(ev) }).await.unwrap();
            n += 1;
        }
    }
    // Nothing is sealed (or sent) before the hour ends plus the grace.
    s.advance(HOUR - 16 * 60_000, 10 * 60_000).await; // h + 59m
    let r = s.report().await;
    assert!(r.rows.iter().all(|row| row.state == "open"), "sealed too early: {:?}", r.rows);
    assert_eq!(s.emulator.counters().calls_to("BatchMeterUsage"), 0);

    s.advance(3 * 60_000, 60_000).await; // h + 1h + 2m: ended plus grace
    let r = s.wait_for("all records accepted", WAIT, pending_done).await;
    let t = r.totals.clone().unwrap();
    assert!(t.reconciled, "{t:?}");
    // Per customer: api_calls 3.75 → 3 sent, 0.75 carried; gb_hours 7.4 → 7 sent, 0.4 carried.
    assert_eq!(t.accepted, "30");
    assert_eq!(t.carried, "3.45");
    for row in r.rows.iter().filter(|r| r.state == "accepted") {
        assert!(!row.metering_record_id.is_empty(), "{row:?}");
        assert_eq!(row.hour.as_ref().unwrap().seconds * 1000, h);
    }
    assert_eq!(
        emulator_totals(&s),
        report_accepted(&r),
        "the emulator billed exactly what meterd accounts as accepted"
    );
    let c = s.emulator.counters();
    assert_eq!((c.duplicates, c.rejections.values().sum::<u64>()), (0, 0));

    // The fractions carry into the series' next hour: 0.75 + 0.5 = 1.25 → 1 unit.
    s.record("next-hour", 0, "api_calls", "0.5", h + HOUR + 60_000).await.unwrap();
    let f = s.client.admin().flush(v1::FlushRequest {}).await.unwrap().into_inner();
    assert_eq!(f.records_sealed, 0, "flush seals only ended hours");
    // h + 2h + 30s: the hour has ended but is inside its grace, so only a flush seals it now.
    s.advance(58 * 60_000 + 30_000, 10 * 60_000).await;
    assert_eq!(s.report().await.rows.iter().filter(|r| r.state == "open").count(), 1);
    let f = s.client.admin().flush(v1::FlushRequest {}).await.unwrap().into_inner();
    assert_eq!(f.records_sealed, 1);
    let r = s.wait_for("carry record accepted", WAIT, |r| r.totals.as_ref().unwrap().accepted == "31").await;
    let row = r.rows.iter().find(|row| row.hour.as_ref().unwrap().seconds * 1000 == h + HOUR).unwrap();
    assert_eq!((row.carried_in.as_str(), row.sealed, row.carried_out.as_str()), ("0.75", 1, "0.25"));
    assert!(r.totals.unwrap().reconciled);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_matrix_still_ends_with_everything_accepted_once() {
    let h = at(2026, 11, 12, 3, 0);
    let faults = Faults {
        throttle_probability: 0.5,
        internal_error_probability: 0.2,
        unprocessed_probability: 0.2,
        latency_ms: 20,
        drop_connection_probability: 0.1,
        drop_response_probability: 0.1,
    };
    let emu = EmulatorConfig { seed: 7, faults, ..EmulatorConfig::default() };
    let customers = 30;
    let s = Stack::start(h + 60_000, emu, &["api_calls", "gb_hours"], &["api_calls", "gb_hours"], customers, "")
        .await
        .unwrap();
    let mut expected: BTreeMap<(String, String), u128> = BTreeMap::new();
    for c in 0..customers {
        for (i, dim) in ["api_calls", "gb_hours"].iter().enumerate() {
            let q = (c * 3 + i + 1) as u128;
            s.record(&format!("k{c}-{dim}"), c, dim, &q.to_string(), h + 120_000).await.unwrap();
            expected.insert((arn(c), dim.to_string()), q);
        }
    }
    s.advance(HOUR + 2 * 60_000, 30 * 60_000).await;
    // Backoffs run on the agent's clock: keep time moving (well inside the 24 h window) while faults hit. The
    // pacer runs on real time and, with half of all calls throttled, sends slowly: bound the loop by real time
    // (generously, for a loaded machine) as well as by steps; 5,000 steps of 10 s of agent time (at least 150 s of
    // real time, at 30 ms each) stay inside the window.
    let started = std::time::Instant::now();
    let mut r = s.report().await;
    for _ in 0..5_000 {
        if pending_done(&r) || started.elapsed() > std::time::Duration::from_secs(300) {
            break;
        }
        s.advance(10_000, 10_000).await;
        r = s.report().await;
    }
    assert!(pending_done(&r), "not drained: {:?}", r.totals);
    let t = r.totals.unwrap();
    assert_eq!((t.rejected.as_str(), t.expired.as_str()), ("0", "0"));
    assert_eq!(emulator_totals(&s), expected);
    let c = s.emulator.counters();
    assert_eq!(c.duplicates, 0, "a resend must never be a DuplicateRecord");
    assert!(c.injected.throttling > 0 && c.injected.internal_errors > 0 && c.injected.unprocessed_records > 0, "{c:?}");
    assert!(c.injected.dropped_connections + c.injected.dropped_responses > 0, "{c:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_hour_outage_delays_but_loses_nothing() {
    let h = at(2026, 11, 14, 8, 0);
    let s = Stack::start(h + 60_000, EmulatorConfig::default(), &["api_calls"], &["api_calls"], 5, "").await.unwrap();
    for c in 0..5 {
        s.record(&format!("o{c}"), c, "api_calls", "4", h + 120_000).await.unwrap();
    }
    s.emulator.set_faults(Faults { internal_error_probability: 1.0, ..Faults::default() });
    s.advance(HOUR + 2 * 60_000, 10 * 60_000).await;
    s.advance(2 * HOUR, 5 * 60_000).await;
    let r = s.report().await;
    assert_eq!(r.totals.as_ref().unwrap().pending, "20", "still pending during the outage: {:?}", r.totals);
    assert!(s.emulator.counters().injected.internal_errors > 0);
    s.emulator.set_faults(Faults::default());
    // After two hours of failures a record's next attempt is due up to ~5 minutes later on the agent's clock
    // (jittered backoff): keep the clock moving while waiting, or a late attempt is never due (failed under load).
    let started = std::time::Instant::now();
    let r = loop {
        let r = s.report().await;
        if pending_done(&r) {
            break r;
        }
        assert!(started.elapsed() < WAIT, "not drained after the outage: {:?}", r.totals);
        s.advance(60_000, 60_000).await;
    };
    assert_eq!(r.totals.as_ref().unwrap().accepted, "20");
    for row in &r.rows {
        assert!(row.deadline.as_ref().unwrap().seconds * 1000 > s.clock.now_ms() - 60_000);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_isolated_and_the_rest_accepted() {
    let h = at(2026, 11, 16, 12, 0);
    // meterd knows a dimension the marketplace listing does not: AWS refuses the whole call for it.
    let s = Stack::start(h + 60_000, EmulatorConfig::default(), &["api_calls", "bogus"], &["api_calls"], 12, "")
        .await
        .unwrap();
    for c in 0..12 {
        s.record(&format!("g{c}"), c, "api_calls", "2", h + 120_000).await.unwrap();
    }
    s.record("poison", 5, "bogus", "3", h + 120_000).await.unwrap();
    s.advance(HOUR + 2 * 60_000, 10 * 60_000).await;
    let r = s.wait_for("poison isolated", WAIT, pending_done).await;
    let t = r.totals.clone().unwrap();
    assert_eq!((t.accepted.as_str(), t.rejected.as_str()), ("24", "3"), "{t:?}");
    assert_eq!(t.rejected_by_reason.get("InvalidUsageDimensionException"), Some(&3));
    let poison = r.rows.iter().find(|row| row.dimension == "bogus").unwrap();
    assert_eq!(poison.state, "rejected");
    assert!(t.reconciled);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_cannot_make_its_deadline_expires_and_is_never_sent() {
    let h = at(2026, 11, 18, 1, 0);
    let s = Stack::start(h + 60_000, EmulatorConfig::default(), &["api_calls"], &["api_calls"], 2, "").await.unwrap();
    s.record("x0", 0, "api_calls", "5", h + 120_000).await.unwrap();
    s.record("x1", 1, "api_calls", "6", h + 120_000).await.unwrap();
    s.emulator.set_faults(Faults { internal_error_probability: 1.0, ..Faults::default() });
    s.advance(25 * HOUR, 30 * 60_000).await;
    let r = s.wait_for("expired", WAIT, |r| r.totals.as_ref().unwrap().expired == "11").await;
    assert_eq!(r.totals.as_ref().unwrap().expired_by_reason.get("DeadlinePassed"), Some(&11));
    s.emulator.set_faults(Faults::default());
    s.advance(HOUR, 10 * 60_000).await;
    assert!(s.emulator.ledger().is_empty(), "an expired record was sent");
    let st = s.client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((st.pending_records, st.accounts[0].records_expired), (0, 2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn month_end_hours_are_due_by_six_on_the_first() {
    let h = at(2026, 11, 30, 23, 0);
    let s =
        Stack::start(h + 5 * 60_000, EmulatorConfig::default(), &["api_calls"], &["api_calls"], 1, "").await.unwrap();
    s.record("m0", 0, "api_calls", "9", h + 6 * 60_000).await.unwrap();
    s.emulator.set_faults(Faults { internal_error_probability: 1.0, ..Faults::default() });
    s.advance(HOUR, 10 * 60_000).await;
    let r = s.wait_for("sealed", WAIT, |r| r.rows.iter().any(|row| row.state != "open")).await;
    // min(23:00 + 24h, Dec 1 06:00) − 30 min safety margin.
    assert_eq!(r.rows[0].deadline.as_ref().unwrap().seconds * 1000, at(2026, 12, 1, 5, 30));
    s.advance(at(2026, 12, 1, 5, 31) - s.clock.now_ms(), 30 * 60_000).await;
    let r = s.wait_for("expired at month end", WAIT, |r| r.totals.as_ref().unwrap().expired == "9").await;
    assert!(r.totals.unwrap().reconciled);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_usage_is_carried_into_the_open_hour_or_refused_by_policy() {
    let h = at(2026, 11, 20, 14, 0);
    let s = Stack::start(h + 60_000, EmulatorConfig::default(), &["api_calls"], &["api_calls"], 1, "").await.unwrap();
    s.record("on-time", 0, "api_calls", "2", h + 120_000).await.unwrap();
    s.advance(HOUR + 2 * 60_000, 10 * 60_000).await;
    s.wait_for("hour sealed and sent", WAIT, pending_done).await;
    let receipt = s.record("late", 0, "api_calls", "3", h + 30 * 60_000).await.unwrap();
    assert_eq!(receipt.usage_hour.unwrap().seconds * 1000, h + HOUR, "late usage goes to the open hour");
    let st = s.client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.late_events, 1);
    let r = s.report().await;
    let open = r.rows.iter().find(|row| row.state == "open").unwrap();
    assert_eq!((open.recorded.as_str(), open.late.as_str()), ("3", "3"));
    assert_eq!(r.totals.unwrap().late, "3");
    s.stop().await;

    let s = Stack::start(
        h + 60_000,
        EmulatorConfig::default(),
        &["api_calls"],
        &["api_calls"],
        1,
        "late_usage = \"reject\"",
    )
    .await
    .unwrap();
    s.advance(HOUR + 2 * 60_000, 10 * 60_000).await;
    s.wait_for("hour sealed", WAIT, |r| r.rows.is_empty() || r.rows.iter().all(|row| row.state != "open")).await;
    s.client.admin().flush(v1::FlushRequest {}).await.unwrap();
    let err = s.record("late", 0, "api_calls", "3", h + 30 * 60_000).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("already sealed"), "{}", err.message());
    assert_eq!(s.client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner().events_stored, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_older_than_max_lateness_is_refused_and_younger_late_usage_is_carried() {
    // A 40-day-old event was once accepted and billed in the current hour: the wrong period for the buyer, and
    // usage AWS itself would refuse. Default pipeline.max_lateness is 24h.
    let h = at(2026, 11, 20, 14, 0);
    let s = Stack::start(h + 60_000, EmulatorConfig::default(), &["api_calls"], &["api_calls"], 1, "").await.unwrap();
    let err = s.record("old", 0, "api_calls", "3", h - 30 * HOUR).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("pipeline.max_lateness"), "{}", err.message());
    assert!(err.message().starts_with("event.timestamp:"), "{}", err.message());
    // Older than the dedupe window (48 h): it could be a retry of a key already forgotten, so it is refused as such.
    let err = s.record("older", 0, "api_calls", "3", h - 40 * 24 * HOUR).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("storage.dedupe_window"), "{}", err.message());
    // Just inside the bound: accepted.
    s.record("late", 0, "api_calls", "2", h + 60_000 - 23 * HOUR).await.unwrap();
    s.advance(HOUR + 2 * 60_000, 10 * 60_000).await;
    let r = s.wait_for("sent", WAIT, pending_done).await;
    assert_eq!(r.totals.as_ref().unwrap().accepted, "2");
    // Now older than max_lateness, but already stored: a retry still gets its receipt.
    let again = s.record("late", 0, "api_calls", "2", h + 60_000 - 23 * HOUR).await.unwrap();
    assert!(again.replayed, "a retry of a stored event is answered, not refused");
    // After the seal, an event 25 h old is refused, one 2 h old is carried into the open hour.
    let now = s.clock.now_ms();
    let err = s.record("old2", 0, "api_calls", "1", now - 25 * HOUR).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let late = s.record("late2", 0, "api_calls", "1", now - 2 * HOUR).await.unwrap();
    assert_eq!(late.usage_hour.unwrap().seconds * 1000, now / HOUR * HOUR, "carried into the open hour");
    let st = s.client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.events_stored, 2, "refused events are not stored");
    s.stop().await;
}
