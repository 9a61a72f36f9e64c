//! The inspection API over HTTP (`/_emulator/...`), and that it matches the in-process view.

mod common;

use aws_sdk_marketplacemetering::types::UsageRecordResultStatus as Status;
use common::*;
use meterd_emulator::{Counters, LedgerEntry, Total};
use serde_json::json;

#[tokio::test]
async fn ledger_totals_and_counters_over_http() {
    let env = start().await;
    bmu(&env.client, vec![rec("requests", 2, HOUR), rec("requests", 3, HOUR - 3600), rec("gb_stored", 1, HOUR)])
        .await
        .unwrap();
    bmu(&env.client, vec![rec("requests", 9, HOUR)]).await.unwrap(); // DuplicateRecord
    let _ = bmu(&env.client, vec![rec("nope", 1, HOUR)]).await; // rejected

    let ledger: Vec<LedgerEntry> = serde_json::from_value(inspect_get(env.addr(), "/_emulator/ledger").await).unwrap();
    assert_eq!(ledger, env.emu.ledger());
    assert_eq!(ledger.len(), 3);
    let totals: Vec<Total> = serde_json::from_value(inspect_get(env.addr(), "/_emulator/totals").await).unwrap();
    assert_eq!(totals, env.emu.totals());
    let requests = totals.iter().find(|t| t.dimension == "requests").unwrap();
    assert_eq!((requests.quantity.as_str(), requests.records), ("5", 2));
    assert_eq!(requests.license_arn.as_deref(), Some(LICENSE));
    let counters: Counters = serde_json::from_value(inspect_get(env.addr(), "/_emulator/counters").await).unwrap();
    assert_eq!(counters, env.emu.counters());
    assert_eq!(counters.calls_to("BatchMeterUsage"), 3);
    assert_eq!(counters.duplicates, 1);
    assert_eq!(counters.rejected("InvalidUsageDimensionException"), 1);
    assert_eq!(counters.records_accepted, 3);
    // Inspection calls are not AWS calls.
    assert_eq!(counters.calls_total(), 3);
}

#[tokio::test]
async fn reset_restores_the_start_state() {
    let env = start().await;
    bmu(&env.client, vec![rec("requests", 2, HOUR)]).await.unwrap();
    env.emu.remove_customer(&meterd_emulator::EmuCustomer { license_arn: Some(LICENSE.into()), ..Default::default() });
    env.emu.set_faults(meterd_emulator::Faults { throttle_probability: 1.0, ..Default::default() });
    let r = http(env.addr(), "POST", "/_emulator/reset", &[], b"").await;
    assert_eq!(r.status, 204);
    assert!(env.emu.ledger().is_empty());
    assert_eq!(env.emu.counters(), Counters::default());
    assert_eq!(env.emu.faults(), meterd_emulator::Faults::default());
    // The configured customer is back.
    assert_eq!(statuses(&bmu(&env.client, vec![rec("requests", 7, HOUR)]).await.unwrap()), vec![Status::Success]);
}

#[tokio::test]
async fn customers_are_added_and_removed_over_http() {
    let env = start().await;
    let pending = json!({"product_code": PRODUCT, "aws_account_id": PENDING_ACCOUNT, "license_arn": PENDING_LICENSE});
    let r = inspect_send(env.addr(), "PUT", "/_emulator/customers", pending.clone()).await;
    assert_eq!(r.status, 200);
    assert!(r.json().as_array().unwrap().iter().any(|c| c == &pending));
    let rec_pending = || rec_for(PENDING_ACCOUNT, PENDING_LICENSE, "requests", 1, HOUR);
    assert_eq!(statuses(&bmu(&env.client, vec![rec_pending()]).await.unwrap()), vec![Status::Success]);

    let r = inspect_send(env.addr(), "DELETE", "/_emulator/customers", json!({"license_arn": PENDING_LICENSE})).await;
    assert_eq!(r.json(), json!({"removed": 1}));
    env.set_now(NOW + 3600);
    let next_hour = rec_for(PENDING_ACCOUNT, PENDING_LICENSE, "requests", 1, HOUR + 3600);
    assert_eq!(statuses(&bmu(&env.client, vec![next_hour]).await.unwrap()), vec![Status::CustomerNotSubscribed]);

    // Definitions the catalog cannot honour are refused with the reason.
    for bad in [
        json!({"product_code": "prod-nope", "customer_identifier": "c"}),
        json!({"product_code": PRODUCT, "license_arn": PENDING_LICENSE}),
        json!({"product_code": PRODUCT, "aws_account_id": "12ab"}),
        json!({"product_code": PRODUCT, "unknown_field": 1}),
    ] {
        let r = inspect_send(env.addr(), "PUT", "/_emulator/customers", bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["error"].is_string());
    }
    let listed = inspect_get(env.addr(), "/_emulator/customers").await;
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn faults_and_rate_limit_change_over_http() {
    let env = start().await;
    let r = inspect_send(env.addr(), "PUT", "/_emulator/faults", json!({"throttle_probability": 1.0})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["throttle_probability"], 1.0);
    assert_eq!(code(bmu(&env.client, vec![rec("requests", 1, HOUR)]).await), "ThrottlingException");
    assert_eq!(inspect_get(env.addr(), "/_emulator/faults").await["throttle_probability"], 1.0);
    let r = inspect_send(env.addr(), "PUT", "/_emulator/faults", json!({"throttle_probability": 1.5})).await;
    assert_eq!(r.status, 400);
    let r = inspect_send(env.addr(), "PUT", "/_emulator/faults", json!({"throttle_probabilty": 0.5})).await;
    assert_eq!(r.status, 400, "typos are refused, not ignored");
    inspect_send(env.addr(), "PUT", "/_emulator/faults", json!({})).await;
    bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();

    let r = inspect_send(env.addr(), "PUT", "/_emulator/rate_limit", json!({"per_sec": 0.01})).await;
    assert_eq!(r.json(), json!({"per_sec": 0.01}));
    bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
    assert_eq!(code(bmu(&env.client, vec![rec("requests", 1, HOUR)]).await), "ThrottlingException");
    assert_eq!(inspect_send(env.addr(), "PUT", "/_emulator/rate_limit", json!({"per_sec": -1})).await.status, 400);
    assert_eq!(inspect_get(env.addr(), "/_emulator/rate_limit").await, json!({"per_sec": 0.01}));
}

#[tokio::test]
async fn the_clock_offset_moves_the_service_time() {
    let env = start().await;
    let c = inspect_get(env.addr(), "/_emulator/clock").await;
    assert_eq!((c["offset_secs"].as_i64(), c["now"].as_i64()), (Some(0), Some(NOW)));
    // Two days later, the record is out of the window.
    let r = inspect_send(env.addr(), "PUT", "/_emulator/clock", json!({"offset_secs": 2 * 86_400})).await;
    assert_eq!(r.json()["now_rfc3339"], "2026-11-29T12:30:00Z");
    assert_eq!(code(bmu(&env.client, vec![rec("requests", 1, HOUR)]).await), "TimestampOutOfBoundsException");
    // An hour earlier, a record at the current real hour would be in the future.
    env.emu.set_clock_offset(-3600);
    assert_eq!(code(bmu(&env.client, vec![rec("requests", 1, HOUR)]).await), "TimestampOutOfBoundsException");
    env.emu.set_clock_offset(0);
    bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
}

#[tokio::test]
async fn inspection_errors_are_plain_json() {
    let env = start().await;
    let r = http(env.addr(), "PUT", "/_emulator/faults", &[("content-type", "application/json")], b"{").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    let r = http(env.addr(), "GET", "/_emulator/nothing", &[], b"").await;
    assert_eq!(r.status, 404);
}
