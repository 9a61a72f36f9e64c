//! First write wins per (identity, dimension, UTC hour), through the real AWS Rust SDK.

mod common;

use aws_sdk_marketplacemetering::types::UsageRecordResultStatus as Status;
use common::*;

#[tokio::test]
async fn identical_resend_is_success_with_the_same_id() {
    let env = start().await;
    let first = bmu(&env.client, vec![rec("requests", 4, HOUR)]).await.unwrap();
    let again = bmu(&env.client, vec![rec("requests", 4, HOUR)]).await.unwrap();
    assert_eq!(statuses(&again), vec![Status::Success]);
    assert_eq!(again.results()[0].metering_record_id(), first.results()[0].metering_record_id());
    assert_eq!(env.emu.ledger().len(), 1);
    assert_eq!(env.emu.totals()[0].quantity, "4");
    let c = env.emu.counters();
    assert_eq!((c.records_accepted, c.records_replayed, c.duplicates), (1, 1, 0));
}

#[tokio::test]
async fn a_resent_subset_is_idempotent() {
    let env = start().await;
    let batch = vec![rec("requests", 1, HOUR), rec("gb_stored", 2, HOUR), rec("requests", 3, HOUR - 3600)];
    let first = bmu(&env.client, batch.clone()).await.unwrap();
    let subset = bmu(&env.client, batch[1..].to_vec()).await.unwrap();
    assert_eq!(statuses(&subset), vec![Status::Success, Status::Success]);
    let ids = |o: &aws_sdk_marketplacemetering::operation::batch_meter_usage::BatchMeterUsageOutput| {
        o.results().iter().map(|r| r.metering_record_id().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&subset), ids(&first)[1..].to_vec());
    assert_eq!(env.emu.ledger().len(), 3);
}

#[tokio::test]
async fn a_different_quantity_is_a_duplicate_record_and_not_billed() {
    let env = start().await;
    bmu(&env.client, vec![rec("requests", 4, HOUR)]).await.unwrap();
    let out = bmu(&env.client, vec![rec("requests", 5, HOUR + 120)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::DuplicateRecord]);
    assert!(out.results()[0].metering_record_id().is_none());
    assert_eq!(env.emu.ledger().len(), 1);
    assert_eq!(env.emu.totals()[0].quantity, "4");
    assert_eq!(env.emu.counters().duplicates, 1);
    // First write keeps winning: the original value still replays as Success.
    let out = bmu(&env.client, vec![rec("requests", 4, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
}

#[tokio::test]
async fn the_key_is_the_utc_hour_not_the_exact_timestamp() {
    let env = start().await;
    let first = bmu(&env.client, vec![rec("requests", 4, HOUR)]).await.unwrap();
    // Same hour, other minute, same content: the same record.
    let later = bmu(&env.client, vec![rec("requests", 4, HOUR + 1799)]).await.unwrap();
    assert_eq!(later.results()[0].metering_record_id(), first.results()[0].metering_record_id());
    // The previous hour is a different key.
    let prev = bmu(&env.client, vec![rec("requests", 9, HOUR - 1)]).await.unwrap();
    assert_eq!(statuses(&prev), vec![Status::Success]);
    assert_ne!(prev.results()[0].metering_record_id(), first.results()[0].metering_record_id());
    assert_eq!(env.emu.ledger().len(), 2);
}

#[tokio::test]
async fn the_same_quantity_with_other_allocations_is_a_replay_not_a_duplicate() {
    // AWS defines DuplicateRecord as the same key with a different *quantity*: other allocations of the same
    // quantity are answered like an identical resend, the first allocations stay billed, and a counter tells.
    let env = start().await;
    let with = |q: i32, tag: &str| {
        record_builder("requests", HOUR)
            .customer_aws_account_id(ACCOUNT)
            .license_arn(LICENSE)
            .quantity(q)
            .usage_allocations(alloc(q, &[("team", tag)]))
            .build()
            .unwrap()
    };
    let first = bmu(&env.client, vec![with(2, "a")]).await.unwrap();
    let id = first.results()[0].metering_record_id().unwrap().to_string();
    let out = bmu(&env.client, vec![with(2, "b")]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    assert_eq!(out.results()[0].metering_record_id(), Some(id.as_str()));
    let ledger = env.emu.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].allocations[0].tags[0].value, "a", "the first allocations stay");
    let c = env.emu.counters();
    assert_eq!((c.records_replayed, c.replayed_with_other_allocations, c.duplicates), (1, 1, 0));
    // A different quantity is still a duplicate.
    let out = bmu(&env.client, vec![with(3, "a")]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::DuplicateRecord]);
}

#[tokio::test]
async fn the_same_key_twice_in_one_batch_is_decided_in_order() {
    let env = start().await;
    let out = bmu(&env.client, vec![rec("requests", 1, HOUR), rec("requests", 1, HOUR), rec("requests", 2, HOUR)])
        .await
        .unwrap();
    assert_eq!(statuses(&out), vec![Status::Success, Status::Success, Status::DuplicateRecord]);
    assert_eq!(env.emu.ledger().len(), 1);
}

#[tokio::test]
async fn customers_and_dimensions_are_separate_keys() {
    let env = start().await;
    env.emu.add_customer(meterd_emulator::EmuCustomer::licensed(PRODUCT, PENDING_ACCOUNT, PENDING_LICENSE));
    let out = bmu(
        &env.client,
        vec![
            rec("requests", 1, HOUR),
            rec("gb_stored", 2, HOUR),
            rec_for(PENDING_ACCOUNT, PENDING_LICENSE, "requests", 3, HOUR),
        ],
    )
    .await
    .unwrap();
    assert_eq!(statuses(&out), vec![Status::Success; 3]);
    let totals = env.emu.totals();
    assert_eq!(totals.len(), 3);
}

#[tokio::test]
async fn concurrent_conflicting_writers_bill_exactly_one_value() {
    let env = start().await;
    let mut tasks = tokio::task::JoinSet::new();
    for q in 1..=16 {
        let c = env.client.clone();
        tasks.spawn(async move { bmu(&c, vec![rec("requests", q, HOUR)]).await.unwrap() });
    }
    let mut success = 0;
    let mut dup = 0;
    while let Some(out) = tasks.join_next().await {
        match statuses(&out.unwrap())[0] {
            Status::Success => success += 1,
            Status::DuplicateRecord => dup += 1,
            ref s => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!((success, dup), (1, 15));
    assert_eq!(env.emu.ledger().len(), 1);
    assert_eq!(env.emu.counters().duplicates, 15);
}

#[tokio::test]
async fn unsubscribed_records_do_not_claim_the_key() {
    let env = start().await;
    let out = bmu(&env.client, vec![rec_for(PENDING_ACCOUNT, PENDING_LICENSE, "requests", 1, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::CustomerNotSubscribed]);
    env.emu.add_customer(meterd_emulator::EmuCustomer::licensed(PRODUCT, PENDING_ACCOUNT, PENDING_LICENSE));
    let out = bmu(&env.client, vec![rec_for(PENDING_ACCOUNT, PENDING_LICENSE, "requests", 2, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    assert_eq!(env.emu.ledger()[0].quantity, "2");
}

#[tokio::test]
async fn an_identical_resend_after_unsubscribing_is_still_success_with_the_same_id() {
    // The record was billed; an identical retry (a lost answer) must not contradict that.
    let env = start().await;
    let first = bmu(&env.client, vec![rec("requests", 4, HOUR)]).await.unwrap();
    let id = first.results()[0].metering_record_id().unwrap().to_string();
    env.emu.remove_customer(&meterd_emulator::EmuCustomer { license_arn: Some(LICENSE.into()), ..Default::default() });
    let out = bmu(&env.client, vec![rec("requests", 4, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    assert_eq!(out.results()[0].metering_record_id(), Some(id.as_str()));
    // Anything new for the customer is refused: another quantity for that hour, or another hour.
    let out = bmu(&env.client, vec![rec("requests", 5, HOUR), rec("gb_stored", 4, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::CustomerNotSubscribed, Status::CustomerNotSubscribed]);
    assert_eq!(env.emu.ledger().len(), 1);
}
