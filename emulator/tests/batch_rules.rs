//! BatchMeterUsage rules, each driven through the real AWS Rust SDK over HTTP.

mod common;

use aws_sdk_marketplacemetering::types::{UsageAllocation, UsageRecordResultStatus as Status};
use common::*;
use meterd_emulator::EmuCustomer;

#[tokio::test]
async fn concurrent_agreements_record_is_billed_and_echoed() {
    let env = start().await;
    let out = bmu(&env.client, vec![rec("requests", 3, HOUR)]).await.unwrap();
    assert!(out.unprocessed_records().is_empty());
    let r = &out.results()[0];
    assert_eq!(r.status(), Some(&Status::Success));
    let id = r.metering_record_id().unwrap();
    assert!(!id.is_empty());
    // The echo is what was sent: the SDK's empty CustomerIdentifier, the account and license.
    let echo = r.usage_record().unwrap();
    assert_eq!(echo.customer_identifier(), "");
    assert_eq!(echo.customer_aws_account_id(), Some(ACCOUNT));
    assert_eq!(echo.license_arn(), Some(LICENSE));
    assert_eq!(echo.quantity(), Some(3));
    assert_eq!(echo.timestamp().secs(), HOUR);

    let ledger = env.emu.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].metering_record_id, id);
    assert_eq!(ledger[0].product_code, PRODUCT);
    assert_eq!(ledger[0].license_arn.as_deref(), Some(LICENSE));
    assert_eq!(ledger[0].quantity, "3");
    assert_eq!(ledger[0].hour_start, HOUR);
    let totals = env.emu.totals();
    assert_eq!(totals.len(), 1);
    assert_eq!((totals[0].dimension.as_str(), totals[0].quantity.as_str()), ("requests", "3"));
    assert_eq!(env.emu.counters().records_accepted, 1);
}

#[tokio::test]
async fn empty_customer_identifier_counts_as_absent() {
    // The Rust SDK always sends "CustomerIdentifier":""; with an account it must not count as mixing.
    let env = start().await;
    let r = record_builder("requests", HOUR)
        .customer_identifier("")
        .customer_aws_account_id(ACCOUNT)
        .license_arn(LICENSE)
        .quantity(1)
        .build()
        .unwrap();
    let out = bmu(&env.client, vec![r]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
}

#[tokio::test]
async fn legacy_product_code_and_customer_identifier_are_billed() {
    let env = start().await;
    let out =
        bmu_legacy(&env.client, LEGACY_PRODUCT, vec![legacy_rec(LEGACY_CUSTOMER, "users", 7, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    let e = &env.emu.ledger()[0];
    assert_eq!((e.product_code.as_str(), e.customer_identifier.as_deref()), (LEGACY_PRODUCT, Some(LEGACY_CUSTOMER)));
}

#[tokio::test]
async fn product_code_with_account_id_is_a_separate_key() {
    // 2025-style records (ProductCode + CustomerAWSAccountId) are accepted for a customer that holds no license
    // of the product, keyed apart from its CustomerIdentifier records.
    let mut cfg = config();
    cfg.customers.push(EmuCustomer {
        product_code: LEGACY_PRODUCT.into(),
        aws_account_id: Some(OTHER_ACCOUNT.into()),
        ..EmuCustomer::default()
    });
    let env = start_with(cfg).await;
    let by_account = record_builder("users", HOUR).customer_aws_account_id(OTHER_ACCOUNT).quantity(2).build().unwrap();
    let out = bmu_legacy(&env.client, LEGACY_PRODUCT, vec![by_account]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    let e = &env.emu.ledger()[0];
    assert_eq!((e.product_code.as_str(), e.customer_aws_account_id.as_deref()), (LEGACY_PRODUCT, Some(OTHER_ACCOUNT)));
}

#[tokio::test]
async fn a_license_customer_metered_by_product_code_and_account_is_refused() {
    // The same buyer keyed by ProductCode + account and by LicenseArn would be two dedup keys: billed twice.
    let env = start().await;
    let out = bmu(&env.client, vec![rec("requests", 5, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    let by_account = record_builder("requests", HOUR).customer_aws_account_id(ACCOUNT).quantity(5).build().unwrap();
    let r = bmu_legacy(&env.client, PRODUCT, vec![by_account]).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "InvalidProductCodeException");
    assert!(msg.contains("usageRecords.1") && msg.contains(LICENSE), "{msg}");
    assert_eq!(env.emu.ledger().len(), 1, "billed once");
    // Also after the license's agreement ended: the product is still a Concurrent Agreements product.
    env.emu.remove_customer(&EmuCustomer { license_arn: Some(LICENSE.into()), ..Default::default() });
    let by_account = record_builder("requests", HOUR).customer_aws_account_id(ACCOUNT).quantity(5).build().unwrap();
    assert_eq!(code(bmu_legacy(&env.client, PRODUCT, vec![by_account]).await), "InvalidProductCodeException");
}

#[tokio::test]
async fn twenty_five_records_pass_twenty_six_are_refused() {
    let env = start().await;
    // Distinct keys within the window: 13 hours x 2 dimensions.
    let recs =
        |n: i64| (0..n).map(|i| rec(["requests", "gb_stored"][(i % 2) as usize], 1, HOUR - 3600 * (i / 2))).collect();
    assert_eq!(bmu(&env.client, recs(25)).await.unwrap().results().len(), 25);
    assert_eq!(env.emu.ledger().len(), 25);
    env.emu.reset();
    let recs = recs(26);
    let r = bmu(&env.client, recs).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "ValidationException");
    assert!(msg.contains("less than or equal to 25"), "{msg}");
    assert_nothing_billed(&env);
}

#[tokio::test]
async fn empty_batch_is_legal() {
    let env = start().await;
    let out = bmu(&env.client, vec![]).await.unwrap();
    assert!(out.results().is_empty() && out.unprocessed_records().is_empty());
}

fn tagged(n: usize, each: i32) -> Vec<UsageAllocation> {
    (0..n).map(|i| alloc(each, &[("tenant", &format!("t{i:05}")), ("region", "eu-west-1-long-value")])).collect()
}

#[tokio::test]
async fn a_body_of_1_mb_or_more_is_refused() {
    let env = start().await;
    // One legal record with 2500 tagged allocations is ~200 KB; five of them exceed 1 MB.
    let big = |hour: i64| {
        record_builder("requests", hour)
            .customer_aws_account_id(ACCOUNT)
            .license_arn(LICENSE)
            .quantity(2500)
            .set_usage_allocations(Some(tagged(2500, 1)))
            .build()
            .unwrap()
    };
    let out = bmu(&env.client, vec![big(HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    env.emu.reset();
    let r = bmu(&env.client, (0..6).map(|i| big(HOUR - 3600 * i)).collect()).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "ValidationException");
    assert!(msg.contains("less than 1 MB"), "{msg}");
    assert_nothing_billed(&env);
}

#[tokio::test]
async fn license_records_with_a_request_product_code_are_refused() {
    let env = start().await;
    let r = bmu_legacy(&env.client, PRODUCT, vec![rec("requests", 1, HOUR)]).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "InvalidProductCodeException");
    assert!(msg.contains("remove ProductCode"), "{msg}");
    assert_nothing_billed(&env);
}

#[tokio::test]
async fn legacy_records_without_product_code_are_refused() {
    let env = start().await;
    let r = bmu(&env.client, vec![legacy_rec(LEGACY_CUSTOMER, "users", 1, HOUR)]).await;
    assert_eq!(code(r), "InvalidCustomerIdentifierException");
}

#[tokio::test]
async fn an_unknown_customer_identifier_is_invalid_customer_identifier() {
    let env = start().await;
    let r = bmu_legacy(
        &env.client,
        LEGACY_PRODUCT,
        vec![legacy_rec(LEGACY_CUSTOMER, "users", 1, HOUR), legacy_rec("cust-nobody", "users", 1, HOUR)],
    )
    .await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "InvalidCustomerIdentifierException");
    assert!(msg.contains("usageRecords.2") && msg.contains("cust-nobody"), "{msg}");
    assert_nothing_billed(&env);
    // A known identifier whose subscription ended is a per-record status, not an unknown identifier.
    env.emu.remove_customer(&EmuCustomer::legacy(LEGACY_PRODUCT, LEGACY_CUSTOMER));
    let out = bmu_legacy(&env.client, LEGACY_PRODUCT, vec![legacy_rec(LEGACY_CUSTOMER, "users", 1, HOUR)]).await;
    assert_eq!(statuses(&out.unwrap()), vec![Status::CustomerNotSubscribed]);
}

#[tokio::test]
async fn mixing_identity_shapes_in_one_request_is_refused() {
    let env = start().await;
    // Legacy and Concurrent Agreements records together: one of the two shapes is always wrong for the request,
    // and the error is the modelled one for the record's identity, naming the record.
    let r = bmu(&env.client, vec![rec("requests", 1, HOUR), legacy_rec(LEGACY_CUSTOMER, "requests", 1, HOUR)]).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "InvalidCustomerIdentifierException");
    assert!(msg.contains("usageRecords.2"), "{msg}");
    let r = bmu_legacy(
        &env.client,
        LEGACY_PRODUCT,
        vec![legacy_rec(LEGACY_CUSTOMER, "users", 1, HOUR), rec("users", 1, HOUR)],
    )
    .await;
    assert_eq!(code(r), "InvalidProductCodeException");
    // CustomerIdentifier and CustomerAWSAccountId in one record.
    let both = record_builder("users", HOUR)
        .customer_identifier(LEGACY_CUSTOMER)
        .customer_aws_account_id(ACCOUNT)
        .quantity(1)
        .build()
        .unwrap();
    let r = bmu_legacy(&env.client, LEGACY_PRODUCT, vec![both]).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "InvalidCustomerIdentifierException");
    assert!(msg.contains("mutually exclusive"), "{msg}");
    // An account without a license and no ProductCode.
    let no_license = record_builder("requests", HOUR).customer_aws_account_id(ACCOUNT).quantity(1).build().unwrap();
    assert_eq!(code(bmu(&env.client, vec![no_license]).await), "InvalidLicenseException");
    // A license without its account.
    let no_account = record_builder("requests", HOUR).license_arn(LICENSE).quantity(1).build().unwrap();
    assert_eq!(code(bmu(&env.client, vec![no_account]).await), "InvalidCustomerIdentifierException");
    // A record with no identity at all, with a ProductCode.
    let nobody = record_builder("users", HOUR).quantity(1).build().unwrap();
    assert_eq!(code(bmu_legacy(&env.client, LEGACY_PRODUCT, vec![nobody]).await), "InvalidCustomerIdentifierException");
    assert_nothing_billed(&env);
    assert_eq!(env.emu.counters().rejected("ValidationException"), 0);
    assert_eq!(env.emu.counters().rejected("InvalidCustomerIdentifierException"), 4);
}

#[tokio::test]
async fn bad_license_arns_are_invalid_license() {
    let env = start().await;
    // Not an ARN (EventBridge samples drop the "arn:" prefix).
    let r =
        bmu(&env.client, vec![rec_for(ACCOUNT, "aws:license-manager::123456789012:license:l-1", "requests", 1, HOUR)])
            .await;
    assert_eq!(code(r), "InvalidLicenseException");
    // A known license presented with another account.
    let r = bmu(&env.client, vec![rec_for(OTHER_ACCOUNT, LICENSE, "requests", 1, HOUR)]).await;
    assert_eq!(code(r), "InvalidLicenseException");
    // Licenses of two products in one call.
    let r =
        bmu(&env.client, vec![rec("requests", 1, HOUR), rec_for(OTHER_ACCOUNT, OTHER_LICENSE, "seats", 1, HOUR)]).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "InvalidLicenseException");
    assert!(msg.contains("one call per product"), "{msg}");
    assert_nothing_billed(&env);
}

#[tokio::test]
async fn unknown_product_code_is_refused() {
    let env = start().await;
    let r = bmu_legacy(&env.client, "prod-nope", vec![legacy_rec(LEGACY_CUSTOMER, "users", 1, HOUR)]).await;
    assert_eq!(code(r), "InvalidProductCodeException");
}

#[tokio::test]
async fn quantity_out_of_range_is_refused() {
    let env = start().await;
    let r = bmu(&env.client, vec![rec("requests", -5, HOUR)]).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "ValidationException");
    assert!(msg.contains("usageRecords.1.member.quantity") && msg.contains("greater than or equal to 0"), "{msg}");
    // Beyond int32 can only be sent by hand.
    let r = env
        .client
        .batch_meter_usage()
        .usage_records(rec("requests", 1, HOUR))
        .customize()
        .mutate_request(edit_body(|v| v["UsageRecords"][0]["Quantity"] = serde_json::json!(2_147_483_648u64)))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    // The maximum is fine.
    let out = bmu(&env.client, vec![rec("requests", i32::MAX, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    assert_eq!(env.emu.totals()[0].quantity, "2147483647");
}

#[tokio::test]
async fn absent_quantity_means_zero() {
    let env = start().await;
    let r = record_builder("requests", HOUR).customer_aws_account_id(ACCOUNT).license_arn(LICENSE).build().unwrap();
    assert_eq!(statuses(&bmu(&env.client, vec![r]).await.unwrap()), vec![Status::Success]);
    assert_eq!(env.emu.ledger()[0].quantity, "0");
}

#[tokio::test]
async fn decimal_quantities_are_exact() {
    let env = start().await;
    let out = env
        .client
        .batch_meter_usage()
        .usage_records(rec("requests", 0, HOUR))
        .usage_records(rec("gb_stored", 0, HOUR))
        .customize()
        .mutate_request(edit_body(|v| {
            as_decimal(v, 0, "0.1");
            as_decimal(v, 1, "1234567890.000001");
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(statuses(&out), vec![Status::Success, Status::Success]);
    let ledger = env.emu.ledger();
    assert_eq!(ledger[0].quantity, "0.1");
    assert_eq!(ledger[1].quantity, "1234567890.000001");
    // Another 0.2 in the next hour: the total is exactly 0.3.
    env.set_now(NOW + 3600);
    env.client
        .batch_meter_usage()
        .usage_records(rec("requests", 0, HOUR + 3600))
        .customize()
        .mutate_request(edit_body(|v| as_decimal(v, 0, "0.2")))
        .send()
        .await
        .unwrap();
    let t = env.emu.totals();
    let requests = t.iter().find(|t| t.dimension == "requests").unwrap();
    assert_eq!((requests.quantity.as_str(), requests.records), ("0.3", 2));
}

#[tokio::test]
async fn decimal_rules_of_the_current_model() {
    let env = start().await;
    let tagged_17 = || {
        record_builder("requests", HOUR)
            .customer_aws_account_id(ACCOUNT)
            .license_arn(LICENSE)
            .quantity(17)
            .usage_allocations(alloc(17, &[("team", "a")]))
            .build()
            .unwrap()
    };
    // Both Quantity and QuantityAsDecimal.
    let r = env
        .client
        .batch_meter_usage()
        .usage_records(tagged_17())
        .customize()
        .mutate_request(edit_body(|v| v["UsageRecords"][0]["QuantityAsDecimal"] = serde_json::json!("17")))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    // Seven decimals, a leading zero, a sign, an exponent: not the model's decimal pattern.
    for bad in ["1.1234567", "017", "-1", "1e3", "12345678901"] {
        let r = env
            .client
            .batch_meter_usage()
            .usage_records(rec("requests", 0, HOUR))
            .customize()
            .mutate_request(edit_body(move |v| as_decimal(v, 0, bad)))
            .send()
            .await;
        assert_eq!(code(r), "ValidationException", "{bad}");
    }
    // A decimal record with whole-number allocations.
    let r = env
        .client
        .batch_meter_usage()
        .usage_records(tagged_17())
        .customize()
        .mutate_request(edit_body(|v| as_decimal(v, 0, "17")))
        .send()
        .await;
    assert_eq!(code(r), "InvalidUsageAllocationsException");
    assert_nothing_billed(&env);
    // Decimal record, decimal allocations summing by value.
    let out = env
        .client
        .batch_meter_usage()
        .usage_records(tagged_17())
        .customize()
        .mutate_request(edit_body(|v| {
            as_decimal(v, 0, "17.50");
            let a = &mut v["UsageRecords"][0]["UsageAllocations"][0];
            a.as_object_mut().unwrap().remove("AllocatedUsageQuantity");
            a["AllocatedUsageQuantityAsDecimal"] = serde_json::json!("17.5");
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    assert_eq!(env.emu.ledger()[0].quantity, "17.5");
}

#[tokio::test]
async fn quantities_compare_by_value_for_dedup() {
    // 17 sent as Quantity and then as "17.00" is the same record.
    let env = start().await;
    let first = bmu(&env.client, vec![rec("requests", 17, HOUR)]).await.unwrap();
    let again = env
        .client
        .batch_meter_usage()
        .usage_records(rec("requests", 17, HOUR))
        .customize()
        .mutate_request(edit_body(|v| as_decimal(v, 0, "17.00")))
        .send()
        .await
        .unwrap();
    assert_eq!(statuses(&again), vec![Status::Success]);
    assert_eq!(again.results()[0].metering_record_id(), first.results()[0].metering_record_id());
    assert_eq!(env.emu.ledger().len(), 1);
}

#[tokio::test]
async fn unknown_dimension_is_refused_case_sensitively() {
    let env = start().await;
    for dim in ["Requests", "nope"] {
        let r = bmu(&env.client, vec![rec("requests", 1, HOUR), rec(dim, 1, HOUR)]).await;
        assert_eq!(code(r), "InvalidUsageDimensionException", "{dim}");
    }
    // A dimension of another product.
    assert_eq!(code(bmu(&env.client, vec![rec("seats", 1, HOUR)]).await), "InvalidUsageDimensionException");
    assert_nothing_billed(&env);
    assert_eq!(env.emu.counters().rejected("InvalidUsageDimensionException"), 3);
}

fn with_allocs(allocs: Vec<UsageAllocation>, quantity: i32) -> aws_sdk_marketplacemetering::types::UsageRecord {
    record_builder("requests", HOUR)
        .customer_aws_account_id(ACCOUNT)
        .license_arn(LICENSE)
        .quantity(quantity)
        .set_usage_allocations(Some(allocs))
        .build()
        .unwrap()
}

#[tokio::test]
async fn invalid_tags_are_refused() {
    let env = start().await;
    let six: Vec<(String, String)> = (0..6).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let six: Vec<(&str, &str)> = six.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cases = vec![
        vec![alloc(1, &six)],                            // more than 5 tags
        vec![alloc(1, &[("team", "a>b")])],              // '>' is outside the tag pattern
        vec![alloc(1, &[("t\u{e9}am", "a")])],           // non-ASCII
        vec![alloc(1, &[(&"k".repeat(101), "a")])],      // key longer than 100
        vec![alloc(1, &[("team", &"v".repeat(257))])],   // value longer than 256
        vec![alloc(1, &[("team", "a"), ("team", "b")])], // the same key twice
    ];
    for allocs in cases {
        let r = bmu(&env.client, vec![with_allocs(allocs.clone(), 1)]).await;
        assert_eq!(code(r), "InvalidTagException", "{allocs:?}");
    }
    // An empty tag list (rather than none).
    let r = env
        .client
        .batch_meter_usage()
        .usage_records(with_allocs(vec![alloc(1, &[("team", "a")])], 1))
        .customize()
        .mutate_request(edit_body(|v| v["UsageRecords"][0]["UsageAllocations"][0]["Tags"] = serde_json::json!([])))
        .send()
        .await;
    assert_eq!(code(r), "InvalidTagException");
    // The model's odd character range (0x20-0x3D) is honoured: '$', '!' and ',' are legal.
    let out = bmu(&env.client, vec![with_allocs(vec![alloc(1, &[("cost center", "$a,b!")])], 1)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
}

#[tokio::test]
async fn invalid_allocations_are_refused() {
    let env = start().await;
    // Sum differs from the quantity.
    let r = bmu(&env.client, vec![with_allocs(vec![alloc(2, &[("team", "a")]), alloc(2, &[])], 5)]).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "InvalidUsageAllocationsException");
    assert!(msg.contains("sum to 4"), "{msg}");
    // More than 2500 allocations.
    let r = bmu(&env.client, vec![with_allocs((0..2501).map(|_| alloc(0, &[])).collect(), 0)]).await;
    assert_eq!(code(r), "InvalidUsageAllocationsException");
    // An allocation with no quantity at all.
    let r = env
        .client
        .batch_meter_usage()
        .usage_records(with_allocs(vec![alloc(1, &[("team", "a")])], 1))
        .customize()
        .mutate_request(edit_body(|v| {
            v["UsageRecords"][0]["UsageAllocations"][0].as_object_mut().unwrap().remove("AllocatedUsageQuantity");
        }))
        .send()
        .await;
    assert_eq!(code(r), "InvalidUsageAllocationsException");
    assert_nothing_billed(&env);
    // Tagged plus untagged buckets summing exactly are fine, and recorded.
    let out = bmu(&env.client, vec![with_allocs(vec![alloc(3, &[("team", "a")]), alloc(2, &[])], 5)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    let allocs = &env.emu.ledger()[0].allocations;
    assert_eq!(allocs.len(), 2);
    assert!(allocs.iter().any(|a| a.quantity == "3" && a.tags.len() == 1 && a.tags[0].value == "a"));
}

#[tokio::test]
async fn a_future_timestamp_refuses_the_whole_batch() {
    let env = start().await;
    let r = bmu(&env.client, vec![rec("requests", 1, HOUR), rec("gb_stored", 1, NOW + 1)]).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "TimestampOutOfBoundsException");
    assert!(msg.contains("future"), "{msg}");
    assert_nothing_billed(&env);
    // "Now" itself is fine.
    assert_eq!(statuses(&bmu(&env.client, vec![rec("requests", 1, NOW)]).await.unwrap()), vec![Status::Success]);
}

#[tokio::test]
async fn the_24_hour_window_counts_from_the_record_timestamp() {
    let env = start().await;
    // Service time 12:30. A record stamped 12:29 yesterday is more than 24 h old; one stamped 12:31 yesterday
    // (23 h 59 m old, in an hour that started 24 h 30 m ago) is still accepted.
    let r = bmu(&env.client, vec![rec("requests", 1, NOW - 86_400 - 60)]).await;
    assert_eq!(code(r), "TimestampOutOfBoundsException");
    let r = bmu(&env.client, vec![rec("requests", 1, HOUR), rec("requests", 1, NOW - 86_400 + 60)]).await.unwrap();
    assert_eq!(statuses(&r), vec![Status::Success, Status::Success]);
    // Exactly 24 h is "24 hours or more": refused.
    let r = bmu(&env.client, vec![rec("gb_stored", 1, NOW - 86_400)]).await;
    assert_eq!(code(r), "TimestampOutOfBoundsException");
    // A window from the config.
    let env = start_with(meterd_emulator::EmulatorConfig { submission_window_secs: 6 * 3600, ..config() }).await;
    let r = bmu(&env.client, vec![rec("requests", 1, NOW - 6 * 3600)]).await;
    assert_eq!(code(r), "TimestampOutOfBoundsException");
    let r = bmu(&env.client, vec![rec("requests", 1, NOW - 6 * 3600 + 1)]).await.unwrap();
    assert_eq!(statuses(&r), vec![Status::Success]);
}

#[tokio::test]
async fn previous_month_closes_at_0600_utc_on_the_first() {
    let env = start().await;
    let nov30_23h = 1_796_079_600; // 2026-11-30T23:00:00Z
    let dec1_05h = nov30_23h + 6 * 3600; // 2026-12-01T05:00:00Z
    env.set_now(dec1_05h);
    let out = bmu(&env.client, vec![rec("requests", 1, nov30_23h)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    // A November hour that is < 24 h old but submitted at 06:00 on December 1st: refused.
    env.set_now(dec1_05h + 3600);
    let r = bmu(&env.client, vec![rec("gb_stored", 1, nov30_23h)]).await;
    let msg = message(r.as_ref().unwrap_err());
    assert_eq!(code(r), "TimestampOutOfBoundsException");
    assert!(msg.contains("2026-12-01T06:00:00Z"), "{msg}");
    // A December hour is unaffected.
    let out = bmu(&env.client, vec![rec("gb_stored", 1, dec1_05h)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
}

#[tokio::test]
async fn unsubscribed_and_unknown_customers_fail_per_record() {
    let env = start().await;
    let out = bmu(
        &env.client,
        vec![
            rec("requests", 1, HOUR),
            rec_for(PENDING_ACCOUNT, PENDING_LICENSE, "requests", 1, HOUR), // known license, no agreement
            rec_for("999999999999", "arn:aws:license-manager::999999999999:license:l-unknown", "requests", 1, HOUR),
        ],
    )
    .await
    .unwrap();
    assert_eq!(statuses(&out), vec![Status::Success, Status::CustomerNotSubscribed, Status::CustomerNotSubscribed]);
    assert!(out.results()[1].metering_record_id().is_none());
    assert_eq!(env.emu.ledger().len(), 1);
    assert_eq!(env.emu.counters().not_subscribed, 2);
}

#[tokio::test]
async fn subscriptions_change_at_run_time() {
    let env = start().await;
    assert_eq!(env.emu.remove_customer(&EmuCustomer { license_arn: Some(LICENSE.into()), ..Default::default() }), 1);
    let out = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::CustomerNotSubscribed]);
    env.emu.add_customer(EmuCustomer::licensed(PRODUCT, PENDING_ACCOUNT, PENDING_LICENSE));
    env.emu.add_customer(EmuCustomer::licensed(PRODUCT, ACCOUNT, LICENSE));
    let out = bmu(
        &env.client,
        vec![rec("requests", 1, HOUR), rec_for(PENDING_ACCOUNT, PENDING_LICENSE, "requests", 1, HOUR)],
    )
    .await
    .unwrap();
    assert_eq!(statuses(&out), vec![Status::Success, Status::Success]);
}
