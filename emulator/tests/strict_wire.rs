//! `strict_wire = true`: a license record must not carry `CustomerIdentifier` at all, as no AWS SDK but the bare
//! Rust one sends it; and the request log (`/_emulator/requests`) that shows what a client put on the wire.

mod common;

use common::*;
use meterd_emulator::{EmulatorConfig, LoggedRequest};

fn strict() -> EmulatorConfig {
    EmulatorConfig { strict_wire: true, ..config() }
}

fn license_member(dimension: &str, customer_identifier: Option<&str>) -> String {
    let ci = customer_identifier.map(|c| format!(r#""CustomerIdentifier":"{c}","#)).unwrap_or_default();
    format!(
        r#"{{"Timestamp":{HOUR},{ci}"Dimension":"{dimension}","Quantity":1,"CustomerAWSAccountId":"{ACCOUNT}","LicenseArn":"{LICENSE}"}}"#
    )
}

#[tokio::test]
async fn strict_refuses_the_bare_rust_sdks_empty_customer_identifier_naming_record_and_member() {
    let env = start_with(strict()).await;
    let err = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap_err();
    let m = message(&err);
    assert_eq!(err.as_service_error().and_then(|e| e.meta().code()), Some("ValidationException"), "{m}");
    assert!(m.contains("UsageRecords[0]") && m.contains("'usageRecords.1.member.customerIdentifier'"), "{m}");
    assert!(m.contains("strict_wire"), "{m}");
    assert_nothing_billed(&env);
}

#[tokio::test]
async fn strict_names_every_offending_record_and_refuses_a_non_empty_one_too() {
    let env = start_with(strict()).await;
    let body = format!(
        r#"{{"UsageRecords":[{},{},{}]}}"#,
        license_member("requests", None),
        license_member("gb_stored", Some("")),
        license_member("requests", Some("cust-x"))
    );
    let r = aws_raw(env.addr(), "BatchMeterUsage", &body).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["__type"], "ValidationException");
    let m = v["message"].as_str().unwrap();
    assert!(m.starts_with("2 validation errors detected"), "{m}");
    assert!(!m.contains("UsageRecords[0]"), "{m}");
    assert!(
        m.contains("Value '' at 'usageRecords.2.member.customerIdentifier'") && m.contains("UsageRecords[1]"),
        "{m}"
    );
    assert!(
        m.contains("Value 'cust-x' at 'usageRecords.3.member.customerIdentifier'") && m.contains("UsageRecords[2]"),
        "{m}"
    );
    assert_nothing_billed(&env);
}

#[tokio::test]
async fn strict_accepts_what_the_other_sdks_send_and_legacy_records() {
    let env = start_with(strict()).await;
    let body = format!(r#"{{"UsageRecords":[{}]}}"#, license_member("requests", None));
    let r = aws_raw(env.addr(), "BatchMeterUsage", &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["Results"][0]["Status"], "Success");
    // A legacy record is identified by its CustomerIdentifier: strict has nothing to say about it.
    let out =
        bmu_legacy(&env.client, LEGACY_PRODUCT, vec![legacy_rec(LEGACY_CUSTOMER, "users", 1, HOUR)]).await.unwrap();
    assert_eq!(out.results()[0].status().unwrap().as_str(), "Success");
    assert_eq!(env.emu.ledger().len(), 2);
}

#[tokio::test]
async fn off_by_default_an_empty_customer_identifier_counts_as_absent() {
    let env = start().await;
    let out = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
    assert_eq!(out.results()[0].status().unwrap().as_str(), "Success");
    // A non-empty one beside an account is still refused, as AWS refuses it (the modelled identity exception).
    let body = format!(r#"{{"UsageRecords":[{}]}}"#, license_member("requests", Some("cust-x")));
    let r = aws_raw(env.addr(), "BatchMeterUsage", &body).await;
    assert_eq!(r.json()["__type"], "InvalidCustomerIdentifierException");
}

#[tokio::test]
async fn the_request_log_shows_bodies_as_sent_with_their_outcome() {
    let env = start_with(strict()).await;
    let _ = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await;
    let ok = format!(r#"{{"UsageRecords":[{}]}}"#, license_member("requests", None));
    aws_raw(env.addr(), "BatchMeterUsage", &ok).await;
    aws_raw(env.addr(), "ResolveCustomer", r#"{"RegistrationToken":"tok-ok"}"#).await;

    let log: Vec<LoggedRequest> = serde_json::from_value(inspect_get(env.addr(), "/_emulator/requests").await).unwrap();
    assert_eq!(log, env.emu.requests());
    let ops: Vec<_> = log.iter().map(|r| (r.operation.as_str(), r.error.as_deref())).collect();
    assert_eq!(
        ops,
        [("BatchMeterUsage", Some("ValidationException")), ("BatchMeterUsage", None), ("ResolveCustomer", None)]
    );
    assert!(log[0].body.contains(r#""CustomerIdentifier":"""#), "{}", log[0].body);
    assert_eq!(log[1].body, ok);
    assert_eq!(log[1].body_bytes, ok.len());
    inspect_send(env.addr(), "POST", "/_emulator/reset", serde_json::json!({})).await;
    assert!(env.emu.requests().is_empty(), "reset clears the log");
}
