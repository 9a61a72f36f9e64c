//! Injected faults and the calls-per-second limit, seen through the real AWS Rust SDK (retries disabled so
//! each fault is observed as the SDK first sees it). Assertions are on counters and outcomes, never on timing
//! upper bounds.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_marketplacemetering::error::SdkError;
use aws_sdk_marketplacemetering::types::UsageRecordResultStatus as Status;
use common::*;
use meterd_emulator::{EmulatorConfig, Faults};

#[tokio::test]
async fn throttling_fault() {
    let env = start().await;
    env.emu.set_faults(Faults { throttle_probability: 1.0, ..Faults::none() });
    let r = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await;
    assert!(r.as_ref().unwrap_err().as_service_error().is_some_and(|e| e.is_throttling_exception()));
    assert_eq!(r.unwrap_err().raw_response().unwrap().status().as_u16(), 400);
    // Every AWS operation can be throttled.
    assert_eq!(code(env.client.resolve_customer().registration_token("tok-ok").send().await), "ThrottlingException");
    assert_nothing_billed(&env);
    let c = env.emu.counters();
    assert_eq!((c.injected.throttling, c.rate_limited), (2, 0));
    assert!(c.rejections.is_empty(), "throttles are not rejections: {:?}", c.rejections);
    env.emu.set_faults(Faults::none());
    assert_eq!(statuses(&bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap()), vec![Status::Success]);
}

#[tokio::test]
async fn internal_error_fault() {
    let env = start().await;
    env.emu.set_faults(Faults { internal_error_probability: 1.0, ..Faults::none() });
    let r = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await;
    let e = r.unwrap_err();
    assert!(e.as_service_error().is_some_and(|e| e.is_internal_service_error_exception()));
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 500);
    assert_nothing_billed(&env);
    assert_eq!(env.emu.counters().injected.internal_errors, 1);
}

#[tokio::test]
async fn unprocessed_records_fault() {
    let env = start().await;
    env.emu.set_faults(Faults { unprocessed_probability: 1.0, ..Faults::none() });
    let batch = vec![rec("requests", 1, HOUR), rec("gb_stored", 2, HOUR), rec("requests", 3, HOUR - 3600)];
    let out = bmu(&env.client, batch.clone()).await.unwrap();
    assert!(out.results().is_empty());
    assert_eq!(out.unprocessed_records(), &batch[..], "unprocessed records come back exactly as sent");
    assert_nothing_billed(&env);
    assert_eq!(env.emu.counters().injected.unprocessed_records, 3);
    // Resending them unchanged once the fault clears bills them.
    env.emu.set_faults(Faults::none());
    let out = bmu(&env.client, out.unprocessed_records().to_vec()).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success; 3]);
}

#[tokio::test]
async fn partially_unprocessed_batches_bill_only_what_was_processed() {
    let env = start().await;
    env.emu.set_faults(Faults { unprocessed_probability: 0.5, ..Faults::none() });
    let batch: Vec<_> =
        (0..24).map(|i| rec(["requests", "gb_stored"][i % 2], 1, HOUR - 3600 * (i as i64 / 2))).collect();
    let out = bmu(&env.client, batch).await.unwrap();
    let (done, left) = (out.results().len(), out.unprocessed_records().len());
    assert_eq!(done + left, 24);
    assert!(done > 0 && left > 0, "seed 42 splits this batch ({done}/{left})");
    assert_eq!(env.emu.ledger().len(), done);
    env.emu.set_faults(Faults::none());
    let retry = bmu(&env.client, out.unprocessed_records().to_vec()).await.unwrap();
    assert_eq!(statuses(&retry), vec![Status::Success; left]);
    assert_eq!(env.emu.ledger().len(), 24);
}

#[tokio::test]
async fn latency_fault_delays_the_answer() {
    let env = start().await;
    env.emu.set_faults(Faults { latency_ms: 300, ..Faults::none() });
    let t = Instant::now();
    bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(env.emu.counters().injected.delayed, 1);
    // The record was processed before the delay: a client that gave up early may still have been billed.
    assert_eq!(env.emu.ledger().len(), 1);
}

#[tokio::test]
async fn latency_past_the_client_timeout_still_bills_and_the_retry_is_idempotent() {
    let env = start().await;
    env.emu.set_faults(Faults { latency_ms: 2500, ..Faults::none() });
    let timeouts = aws_sdk_marketplacemetering::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(400))
        .build();
    let r = env
        .client
        .batch_meter_usage()
        .usage_records(rec("requests", 1, HOUR))
        .customize()
        .config_override(aws_sdk_marketplacemetering::config::Config::builder().timeout_config(timeouts))
        .send()
        .await;
    assert!(matches!(r, Err(SdkError::TimeoutError(_))), "{r:?}");
    // The server finishes the call after the client left.
    for _ in 0..100 {
        if !env.emu.ledger().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let billed = env.emu.ledger();
    assert_eq!(billed.len(), 1);
    env.emu.set_faults(Faults::none());
    let out = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
    assert_eq!(out.results()[0].metering_record_id(), Some(billed[0].metering_record_id.as_str()));
}

fn is_transport_failure<E, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::DispatchFailure(_) | SdkError::ResponseError(_))
}

#[tokio::test]
async fn dropped_connection_fault_processes_nothing() {
    let env = start().await;
    env.emu.set_faults(Faults { drop_connection_probability: 1.0, ..Faults::none() });
    let e = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap_err();
    assert!(is_transport_failure(&e), "{e:?}");
    assert_nothing_billed(&env);
    assert_eq!(env.emu.counters().injected.dropped_connections, 1);
    // The same client recovers on a fresh connection.
    env.emu.set_faults(Faults::none());
    assert_eq!(statuses(&bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap()), vec![Status::Success]);
}

#[tokio::test]
async fn dropped_response_fault_bills_and_the_resend_replays() {
    let env = start().await;
    env.emu.set_faults(Faults { drop_response_probability: 1.0, ..Faults::none() });
    let e = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap_err();
    assert!(is_transport_failure(&e), "{e:?}");
    let billed = env.emu.ledger();
    assert_eq!(billed.len(), 1, "processed before the connection was dropped");
    assert_eq!(env.emu.counters().injected.dropped_responses, 1);
    env.emu.set_faults(Faults::none());
    let out = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    assert_eq!(out.results()[0].metering_record_id(), Some(billed[0].metering_record_id.as_str()));
    assert_eq!(env.emu.ledger().len(), 1);
}

/// A serial client's view of a run: one outcome string per call.
async fn faulty_run(seed: u64) -> Vec<String> {
    let faults = Faults {
        throttle_probability: 0.2,
        internal_error_probability: 0.2,
        unprocessed_probability: 0.3,
        drop_connection_probability: 0.15,
        ..Faults::none()
    };
    let env = start_with(EmulatorConfig { seed, faults, ..config() }).await;
    let mut outcomes = Vec::new();
    for i in 0..40 {
        let r =
            bmu(&env.client, vec![rec("requests", 1, HOUR - 3600 * (i % 20)), rec("gb_stored", i as i32, HOUR)]).await;
        outcomes.push(match r {
            Ok(o) => format!(
                "ok {:?} ids {:?} unprocessed {}",
                statuses(&o),
                o.results().iter().map(|r| r.metering_record_id().unwrap_or("-").to_string()).collect::<Vec<_>>(),
                o.unprocessed_records().len()
            ),
            Err(e) => match aws_sdk_marketplacemetering::error::ProvideErrorMetadata::code(&e) {
                Some(c) => c.to_string(),
                None => "transport".to_string(),
            },
        });
    }
    outcomes
}

#[tokio::test]
async fn a_seed_replays_the_same_faults_and_ids() {
    let a = faulty_run(7).await;
    let b = faulty_run(7).await;
    assert_eq!(a, b);
    for kind in ["ThrottlingException", "InternalServiceErrorException", "transport", "unprocessed 1"] {
        assert!(a.iter().any(|o| o.contains(kind)), "seed 7 exercises {kind}: {a:#?}");
    }
    assert_ne!(a, faulty_run(8).await);
}

#[tokio::test]
async fn default_rate_limit_is_ten_calls_per_second() {
    assert_eq!(EmulatorConfig::default().rate_limit_per_sec, 10.0);
    let env = start_with(EmulatorConfig { rate_limit_per_sec: 10.0, ..config() }).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let c = env.client.clone();
        tasks.spawn(async move { bmu(&c, vec![rec("requests", 1, HOUR)]).await });
    }
    let (mut ok, mut throttled) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_throttling_exception()) => throttled += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok + throttled, 40);
    // The bucket starts with one second's worth (10); 40 calls at once cannot all fit.
    assert!(ok >= 10 && throttled >= 1, "ok {ok}, throttled {throttled}");
    let c = env.emu.counters();
    assert_eq!(c.rate_limited, throttled);
    assert_eq!(c.injected.throttling, 0);
    assert_eq!(env.emu.ledger().len(), 1);
}

#[tokio::test]
async fn rate_limit_changes_at_run_time_and_buckets_are_per_operation() {
    let env = start().await;
    // Effectively one call per 100 s: everything after the first is throttled, whatever the machine's speed.
    env.emu.set_rate_limit(0.01);
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.is_ok());
    }
    assert_eq!(outcomes, vec![true, false, false, false]);
    // MeterUsage has its own quota.
    let mu = || {
        env.client
            .meter_usage()
            .product_code(PRODUCT)
            .usage_dimension("requests")
            .usage_quantity(1)
            .timestamp(aws_smithy_types::DateTime::from_secs(HOUR))
    };
    mu().send().await.unwrap();
    assert_eq!(code(mu().send().await), "ThrottlingException");
    assert_eq!(env.emu.counters().rate_limited, 4);
    // Off.
    env.emu.set_rate_limit(0.0);
    for _ in 0..20 {
        bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
    }
    assert_eq!(env.emu.counters().rate_limited, 4);
}

#[tokio::test]
async fn a_rolling_window_gives_no_credit_for_the_time_since_a_burst() {
    let env = start_with(EmulatorConfig {
        rate_limit_per_sec: 0.01,
        rate_limit_mode: meterd_emulator::RateLimitMode::RollingWindow,
        ..config()
    })
    .await;
    // The mode survives a run-time rate change.
    env.emu.set_rate_limit(3.0);
    let start = Instant::now();
    for _ in 0..3 {
        bmu(&env.client, vec![rec("requests", 1, HOUR)]).await.unwrap();
    }
    // A token bucket has refilled 1.5 calls' worth by now; a rolling window has nothing until a second after
    // the first call.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fourth = bmu(&env.client, vec![rec("requests", 1, HOUR)]).await;
    // Only conclusive if the machine was quick enough to stay inside the first call's second.
    if start.elapsed() < Duration::from_millis(950) {
        assert_eq!(code(fourth), "ThrottlingException");
        assert_eq!(env.emu.counters().rate_limited, 1);
    }
}

#[tokio::test]
async fn sdk_standard_retries_ride_over_throttling_and_500s() {
    // The agent keeps the SDK's standard retries under its own; the SDK must classify the emulator's
    // throttles and 500s as retryable, exactly as it does AWS's.
    let env = start().await;
    let retrying = client(
        &env.handle.endpoint_url(),
        aws_sdk_marketplacemetering::config::retry::RetryConfig::standard()
            .with_max_attempts(10)
            .with_initial_backoff(Duration::from_millis(50)),
    );
    for faults in [
        Faults { throttle_probability: 1.0, ..Faults::none() },
        Faults { internal_error_probability: 1.0, ..Faults::none() },
    ] {
        env.emu.reset();
        env.emu.set_faults(faults);
        let call = tokio::spawn({
            let c = retrying.clone();
            async move { bmu(&c, vec![rec("requests", 1, HOUR)]).await }
        });
        // Clear the fault once the first attempt has been refused; a later attempt then succeeds.
        while env.emu.counters().calls_to("BatchMeterUsage") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        env.emu.set_faults(Faults::none());
        let out = call.await.unwrap().unwrap();
        assert_eq!(statuses(&out), vec![Status::Success]);
        // Every attempt before the fault was cleared was refused, the first one after it succeeded.
        let c = env.emu.counters();
        let faulted = c.injected.throttling + c.injected.internal_errors;
        assert!(faulted >= 1);
        assert_eq!(c.calls_to("BatchMeterUsage"), faulted + 1);
        assert_eq!(env.emu.ledger().len(), 1);
    }
}
