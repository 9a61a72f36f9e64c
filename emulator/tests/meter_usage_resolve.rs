//! MeterUsage (hourly per-dimension rule, ClientToken, DryRun) and ResolveCustomer, through the real SDK.

mod common;

use aws_sdk_marketplacemetering::Client;
use aws_sdk_marketplacemetering::operation::meter_usage::builders::MeterUsageFluentBuilder;
use aws_smithy_types::DateTime;
use common::*;

fn mu(c: &Client, dimension: &str, quantity: i32, ts: i64) -> MeterUsageFluentBuilder {
    c.meter_usage()
        .product_code(PRODUCT)
        .usage_dimension(dimension)
        .usage_quantity(quantity)
        .timestamp(DateTime::from_secs(ts))
}

#[tokio::test]
async fn meter_usage_is_billed_once_per_dimension_and_hour() {
    let env = start().await;
    let first = mu(&env.client, "requests", 5, HOUR).send().await.unwrap();
    let id = first.metering_record_id().unwrap().to_string();
    // A new call (new automatic ClientToken), identical after rounding down to the hour: same record id.
    let again = mu(&env.client, "requests", 5, HOUR + 600).send().await.unwrap();
    assert_eq!(again.metering_record_id(), Some(id.as_str()));
    // A different quantity in that hour.
    let r = mu(&env.client, "requests", 6, HOUR + 900).send().await;
    assert_eq!(code(r), "DuplicateRequestException");
    // Another dimension or hour is its own record.
    mu(&env.client, "gb_stored", 6, HOUR).send().await.unwrap();
    mu(&env.client, "requests", 6, HOUR - 3600).send().await.unwrap();
    let ledger = env.emu.ledger();
    assert_eq!(ledger.len(), 3);
    assert!(ledger.iter().all(|e| e.operation == "MeterUsage" && e.product_code == PRODUCT));
    let c = env.emu.counters();
    assert_eq!((c.records_accepted, c.records_replayed, c.duplicates), (3, 1, 1));
}

#[tokio::test]
async fn client_token_replays_and_conflicts() {
    let env = start().await;
    let a = mu(&env.client, "requests", 5, HOUR).client_token("tok-1").send().await.unwrap();
    let b = mu(&env.client, "requests", 5, HOUR).client_token("tok-1").send().await.unwrap();
    assert_eq!(a.metering_record_id(), b.metering_record_id());
    let r = mu(&env.client, "requests", 7, HOUR).client_token("tok-1").send().await;
    let status = r.as_ref().unwrap_err().raw_response().map(|r| r.status().as_u16());
    assert_eq!(code(r), "IdempotencyConflictException");
    assert_eq!(status, Some(409));
    assert_eq!(env.emu.ledger().len(), 1);
}

#[tokio::test]
async fn dry_run_checks_without_metering() {
    let env = start().await;
    let r = mu(&env.client, "requests", 5, HOUR).dry_run(true).send().await;
    let status = r.as_ref().unwrap_err().raw_response().map(|r| r.status().as_u16());
    assert_eq!(code(r), "DryRunOperation");
    assert_eq!(status, Some(412));
    assert!(env.emu.ledger().is_empty());
    // A dry run of an invalid request reports the real problem.
    assert_eq!(code(mu(&env.client, "nope", 5, HOUR).dry_run(true).send().await), "InvalidUsageDimensionException");
    // And the real call then succeeds.
    mu(&env.client, "requests", 5, HOUR).send().await.unwrap();
}

#[tokio::test]
async fn meter_usage_request_rules() {
    let env = start().await;
    let bad_product = env
        .client
        .meter_usage()
        .product_code("prod-nope")
        .usage_dimension("requests")
        .usage_quantity(1)
        .timestamp(DateTime::from_secs(HOUR))
        .send()
        .await;
    assert_eq!(code(bad_product), "InvalidProductCodeException");
    assert_eq!(code(mu(&env.client, "Requests", 1, HOUR).send().await), "InvalidUsageDimensionException");
    assert_eq!(code(mu(&env.client, "requests", -1, HOUR).send().await), "ValidationException");
    assert_eq!(code(mu(&env.client, "requests", 1, NOW + 60).send().await), "TimestampOutOfBoundsException");
    // MeterUsage's window is 6 hours.
    assert_eq!(code(mu(&env.client, "requests", 1, HOUR - 6 * 3600).send().await), "TimestampOutOfBoundsException");
    mu(&env.client, "requests", 1, HOUR - 5 * 3600).send().await.unwrap();
    // Each allocation needs its own tag set.
    let r = mu(&env.client, "gb_stored", 2, HOUR)
        .usage_allocations(alloc(1, &[("team", "a")]))
        .usage_allocations(alloc(1, &[("team", "a")]))
        .send()
        .await;
    assert_eq!(code(r), "InvalidUsageAllocationsException");
    let r = mu(&env.client, "gb_stored", 2, HOUR).usage_allocations(alloc(2, &[("team", "a>")])).send().await;
    assert_eq!(code(r), "InvalidTagException");
    mu(&env.client, "gb_stored", 2, HOUR)
        .usage_allocations(alloc(1, &[("team", "a")]))
        .usage_allocations(alloc(1, &[]))
        .send()
        .await
        .unwrap();
    // Decimal quantity through the current model's UsageQuantityAsDecimal.
    let out = mu(&env.client, "requests", 0, HOUR - 3600)
        .customize()
        .mutate_request(edit_body(|v| {
            v.as_object_mut().unwrap().remove("UsageQuantity");
            v["UsageQuantityAsDecimal"] = serde_json::json!("0.25");
        }))
        .send()
        .await
        .unwrap();
    assert!(out.metering_record_id().is_some());
    assert!(env.emu.ledger().iter().any(|e| e.quantity == "0.25"));
}

#[tokio::test]
async fn resolve_customer_returns_the_configured_identity() {
    let env = start().await;
    let out = env.client.resolve_customer().registration_token("tok-ok").send().await.unwrap();
    assert_eq!(out.customer_aws_account_id(), Some(ACCOUNT));
    assert_eq!(out.license_arn(), Some(LICENSE));
    assert_eq!(out.product_code(), Some(PRODUCT));
    assert_eq!(out.customer_identifier(), None);
    assert_eq!(out.metadata().and_then(|m| m.agreement_id()), Some("agmt-0123456789"));
    // Resolving is repeatable while the token is valid.
    env.client.resolve_customer().registration_token("tok-ok").send().await.unwrap();
    let legacy = env.client.resolve_customer().registration_token("tok-legacy").send().await.unwrap();
    assert_eq!(legacy.customer_identifier(), Some(LEGACY_CUSTOMER));
    assert_eq!(legacy.product_code(), Some(LEGACY_PRODUCT));
}

#[tokio::test]
async fn resolve_customer_refuses_bad_tokens() {
    let env = start().await;
    let r = env.client.resolve_customer().registration_token("tok-expired").send().await;
    assert!(r.as_ref().unwrap_err().as_service_error().is_some_and(|e| e.is_expired_token_exception()));
    let r = env.client.resolve_customer().registration_token("nope").send().await;
    assert!(r.as_ref().unwrap_err().as_service_error().is_some_and(|e| e.is_invalid_token_exception()));
    let r = env.client.resolve_customer().registration_token("").send().await;
    assert_eq!(code(r), "ValidationException");
    let c = env.emu.counters();
    assert_eq!(c.calls_to("ResolveCustomer"), 3);
    assert_eq!((c.rejected("ExpiredTokenException"), c.rejected("InvalidTokenException")), (1, 1));
}

#[tokio::test]
async fn a_pending_customer_resolves_but_cannot_be_metered_until_subscribed() {
    let env = start().await;
    let out = env.client.resolve_customer().registration_token("tok-pending").send().await.unwrap();
    let (acct, lic) = (out.customer_aws_account_id().unwrap(), out.license_arn().unwrap());
    let r = bmu(&env.client, vec![rec_for(acct, lic, "requests", 1, HOUR)]).await.unwrap();
    assert_eq!(statuses(&r), vec![aws_sdk_marketplacemetering::types::UsageRecordResultStatus::CustomerNotSubscribed]);
}
