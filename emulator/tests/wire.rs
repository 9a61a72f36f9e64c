//! The awsJson1.1 wire as bytes: headers, status codes, `__type` errors, and what the SDK cannot send.

mod common;

use aws_sdk_marketplacemetering::operation::RequestId;
use common::*;

#[tokio::test]
async fn success_headers_and_body_shape() {
    let env = start().await;
    let body = format!(
        r#"{{"UsageRecords":[{{"Timestamp":{}.456,"CustomerIdentifier":"","Dimension":"requests","Quantity":42,
        "UsageAllocations":[{{"AllocatedUsageQuantity":40,"Tags":[{{"Key":"team","Value":"a"}}]}},{{"AllocatedUsageQuantity":2}}],
        "CustomerAWSAccountId":"{ACCOUNT}","LicenseArn":"{LICENSE}","SomeFutureMember":1}}]}}"#,
        HOUR
    );
    let r = aws_raw(env.addr(), "BatchMeterUsage", &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/x-amz-json-1.1"));
    assert!(r.header("x-amzn-RequestId").is_some_and(|v| !v.is_empty()));
    // The Date header carries the service clock (2026-11-27T12:30:00Z).
    assert_eq!(r.header("date"), Some("Fri, 27 Nov 2026 12:30:00 GMT"));
    let v = r.json();
    assert_eq!(v["UnprocessedRecords"], serde_json::json!([]));
    let res = &v["Results"][0];
    assert_eq!(res["Status"], "Success");
    assert!(res["MeteringRecordId"].is_string());
    // The echo keeps the known members as sent (fractional epoch seconds included) and drops unknown ones.
    let echo = &res["UsageRecord"];
    assert_eq!(echo["Timestamp"].to_string(), format!("{HOUR}.456"));
    assert_eq!(echo["CustomerIdentifier"], "");
    assert_eq!(echo["UsageAllocations"][1], serde_json::json!({"AllocatedUsageQuantity": 2}));
    assert!(echo.get("SomeFutureMember").is_none());
}

#[tokio::test]
async fn every_answer_carries_a_request_id_the_sdk_reads() {
    let env = start().await;
    let out = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
    assert!(out.request_id().is_some_and(|id| !id.is_empty()));
    let err = bmu(&env.client, vec![rec("nope", 1, HOUR)]).await.unwrap_err();
    assert!(err.request_id().is_some_and(|id| !id.is_empty()));
    let raw = aws_raw(env.addr(), "Bogus", "{}").await;
    assert!(raw.header("x-amzn-RequestId").is_some());
}

#[tokio::test]
async fn errors_are_type_and_message_with_aws_status_codes() {
    let env = start().await;
    let r = aws_raw(env.addr(), "BatchMeterUsage", &format!(r#"{{"UsageRecords":[{{"Timestamp":{},"Dimension":"x","CustomerAWSAccountId":"{ACCOUNT}","LicenseArn":"{LICENSE}"}}]}}"#, HOUR)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/x-amz-json-1.1"));
    let v = r.json();
    assert_eq!(v["__type"], "InvalidUsageDimensionException");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("'x'")));
}

#[tokio::test]
async fn unknown_or_missing_target_is_unknown_operation() {
    let env = start().await;
    let r = aws_raw(env.addr(), "DeleteEverything", "{}").await;
    assert_eq!((r.status, r.json()["__type"].as_str()), (400, Some("UnknownOperationException")));
    let r = http(env.addr(), "POST", "/", &[("x-amz-target", "SomeOtherService.BatchMeterUsage")], b"{}").await;
    assert_eq!((r.status, r.json()["__type"].as_str()), (400, Some("UnknownOperationException")));
    let r = http(env.addr(), "POST", "/", &[], b"{}").await;
    assert_eq!((r.status, r.json()["__type"].as_str()), (400, Some("UnknownOperationException")));
    // RegisterUsage is for ECS/EKS containers, which this host is not.
    let r = aws_raw(env.addr(), "RegisterUsage", r#"{"ProductCode":"x","PublicKeyVersion":1}"#).await;
    assert_eq!((r.status, r.json()["__type"].as_str()), (400, Some("PlatformNotSupportedException")));
    // Other paths and methods are not the AWS API.
    let r = http(env.addr(), "GET", "/", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(env.emu.counters().rejected("UnknownOperationException"), 3);
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_serialization_exceptions() {
    let env = start().await;
    for body in [
        "{",
        "[]",
        r#"{"UsageRecords":"x"}"#,
        r#"{"UsageRecords":[{"Timestamp":"2026-11-27T12:00:00Z","Dimension":"requests"}]}"#,
        r#"{"UsageRecords":[{"Timestamp":1,"Dimension":"requests","Quantity":1.5}]}"#,
        r#"{"UsageRecords":[{"Timestamp":1,"Dimension":7}]}"#,
        r#"{"ProductCode":5,"UsageRecords":[]}"#,
    ] {
        let r = aws_raw(env.addr(), "BatchMeterUsage", body).await;
        assert_eq!((r.status, r.json()["__type"].as_str()), (400, Some("SerializationException")), "{body}");
    }
    assert_eq!(env.emu.counters().rejected("SerializationException"), 7);
}

#[tokio::test]
async fn missing_required_members_are_validation_errors() {
    let env = start().await;
    // What the SDK sends for an input with nothing set.
    let r = aws_raw(env.addr(), "BatchMeterUsage", "{}").await;
    let v = r.json();
    assert_eq!(v["__type"], "ValidationException");
    assert!(
        v["message"].as_str().unwrap().contains("'usageRecords' failed to satisfy constraint: Member must not be null")
    );
    let r = aws_raw(env.addr(), "BatchMeterUsage", r#"{"UsageRecords":[{"Quantity":1}]}"#).await;
    let m = r.json()["message"].as_str().unwrap().to_string();
    assert!(m.starts_with("2 validation errors detected"), "{m}");
    assert!(m.contains("usageRecords.1.member.timestamp") && m.contains("usageRecords.1.member.dimension"), "{m}");
    let r = aws_raw(env.addr(), "BatchMeterUsage", "").await;
    assert_eq!(r.json()["__type"], "ValidationException");
}

#[tokio::test]
async fn integral_numbers_in_other_notations_are_accepted() {
    let env = start().await;
    let body = format!(
        r#"{{"UsageRecords":[{{"Timestamp":{HOUR}.0,"Dimension":"requests","Quantity":3.0,"CustomerAWSAccountId":"{ACCOUNT}","LicenseArn":"{LICENSE}"}}]}}"#
    );
    let r = aws_raw(env.addr(), "BatchMeterUsage", &body).await;
    assert_eq!(r.json()["Results"][0]["Status"], "Success");
    assert_eq!(env.emu.ledger()[0].quantity, "3");
}

#[tokio::test]
async fn an_oversized_body_is_refused_without_reading_it_all() {
    let env = start().await;
    let big = format!(r#"{{"UsageRecords":[],"Padding":"{}"}}"#, "x".repeat(9 * 1024 * 1024));
    let r = aws_raw(env.addr(), "BatchMeterUsage", &big).await;
    assert_eq!((r.status, r.json()["__type"].as_str()), (400, Some("ValidationException")));
    // Exactly at the limit is already too much ("less than 1 MB").
    let pad = 1_000_000 - r#"{"UsageRecords":[],"P":""}"#.len();
    let at_limit = format!(r#"{{"UsageRecords":[],"P":"{}"}}"#, "x".repeat(pad));
    assert_eq!(at_limit.len(), 1_000_000);
    assert_eq!(aws_raw(env.addr(), "BatchMeterUsage", &at_limit).await.json()["__type"], "ValidationException");
    let under = &format!(r#"{{"UsageRecords":[],"P":"{}"}}"#, "x".repeat(pad - 1));
    assert_eq!(aws_raw(env.addr(), "BatchMeterUsage", under).await.status, 200);
}

#[tokio::test]
async fn keep_alive_connections_serve_many_calls() {
    let env = start().await;
    for i in 0..20 {
        bmu(&env.client, vec![rec("requests", 1, HOUR - 3600 * (i % 10))]).await.unwrap();
    }
    assert_eq!(env.emu.counters().calls_to("BatchMeterUsage"), 20);
    assert_eq!(env.emu.ledger().len(), 10);
}
