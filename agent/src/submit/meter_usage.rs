//! `MeterUsage`: how records of `identity = "deployment"` products (AMI and container products, meterd on the
//! buyer's host) reach AWS — one call per sealed record (product × dimension × hour), paced by the account's
//! same adaptive limiter as `BatchMeterUsage` (AWS's quota is 10 calls/s for each).
//!
//! Every send of a record is byte-identical: `Timestamp` is the hour start, the quantity and allocations are
//! frozen at seal, and the `ClientToken` is a digest of them (`domain::deployment::client_token`), not the
//! SDK's random default. A record is durably InFlight before the call; after a crash it is resent unchanged,
//! and AWS answers the resend with the first `MeteringRecordId` (same token and parameters, or the same
//! quantity for the hour). Outcomes:
//!
//! | answer | record |
//! |---|---|
//! | `MeteringRecordId` | Accepted |
//! | `DuplicateRequestException` (AWS holds another quantity for this dimension and hour) | first send: Rejected, counted as lost revenue; a resend: Accepted, flagged for verification |
//! | `IdempotencyConflictException`, `InvalidUsageDimensionException`, `InvalidTagException`, `InvalidUsageAllocationsException`, `TimestampOutOfBoundsException` | Rejected (this record can never succeed) |
//! | throttling, 5xx, timeouts, dropped connections | stays InFlight, resent unchanged |
//! | anything else (`CustomerNotEntitledException`, `InvalidProductCodeException`, credentials, Region) | stays InFlight; the account pauses with backoff (an operator can fix it before the deadline) |

use std::sync::atomic::Ordering;

use aws_sdk_marketplacemetering::Client;
use aws_sdk_marketplacemetering::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_marketplacemetering::operation::RequestId;
use aws_sdk_marketplacemetering::operation::meter_usage::MeterUsageError;
use aws_sdk_marketplacemetering::types::{Tag, UsageAllocation};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::DateTime;

use super::{Submitter, backoff};
use crate::domain::deployment::client_token;
use crate::domain::record::{RecordState, RejectReason, SealedRecord};
use crate::store::StoreError;

/// Exceptions that condemn this one record: resending it can only get the same answer.
const RECORD_EXCEPTIONS: &[&str] = &[
    "IdempotencyConflictException",
    "InvalidUsageDimensionException",
    "InvalidTagException",
    "InvalidUsageAllocationsException",
    "TimestampOutOfBoundsException",
];

/// What one MeterUsage call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeterOutcome {
    Accepted {
        metering_record_id: String,
        request_id: Option<String>,
    },
    /// `DuplicateRequestException`: AWS already holds a different quantity for this dimension and hour.
    Duplicate {
        request_id: Option<String>,
    },
    Rejected {
        exception: String,
        message: String,
        request_id: Option<String>,
    },
    Retryable {
        throttled: bool,
        reason: String,
    },
    AccountProblem {
        reason: String,
    },
}

/// The call for one sealed record of a deployment-mode product; `dry_run` asks AWS to check it only.
pub fn request(
    client: &Client,
    product_code: &str,
    r: &SealedRecord,
) -> aws_sdk_marketplacemetering::operation::meter_usage::builders::MeterUsageFluentBuilder {
    let mut call = client
        .meter_usage()
        .product_code(product_code)
        .timestamp(DateTime::from_secs(r.key.hour_ms.div_euclid(1000)))
        .usage_dimension(&r.key.dimension)
        .usage_quantity(r.quantity as i32)
        .client_token(client_token(product_code, r));
    for a in &r.allocations {
        let mut ab = UsageAllocation::builder().allocated_usage_quantity(a.quantity as i32);
        for (k, v) in &a.tags {
            // Key and value are set, so build() cannot fail; a failure would only drop the tag, never panic.
            if let Ok(tag) = Tag::builder().key(k).value(v).build() {
                ab = ab.tags(tag);
            }
        }
        if let Ok(alloc) = ab.build() {
            call = call.usage_allocations(alloc);
        }
    }
    call
}

pub async fn send(client: &Client, product_code: &str, r: &SealedRecord) -> MeterOutcome {
    match request(client, product_code, r).send().await {
        Ok(out) => MeterOutcome::Accepted {
            metering_record_id: out.metering_record_id().unwrap_or_default().to_string(),
            request_id: out.request_id().map(str::to_string),
        },
        Err(e) => classify(e),
    }
}

/// `DryRun = true` for one dimension at `hour_secs`: `Ok` when AWS answers `DryRunOperation` (the call would have
/// succeeded), else the exception's code and message (a missing entitlement, a wrong product code or dimension,
/// no IAM permission — `UnauthorizedException`/`AccessDeniedException` —, no credentials or Region).
pub async fn dry_run(
    client: &Client,
    product_code: &str,
    dimension: &str,
    hour_secs: i64,
) -> Result<(), (String, String)> {
    let call = client
        .meter_usage()
        .product_code(product_code)
        .timestamp(DateTime::from_secs(hour_secs))
        .usage_dimension(dimension)
        .usage_quantity(0)
        .dry_run(true);
    match call.send().await {
        // A service that ignored DryRun would have metered 0 for the hour; say so rather than call it a pass.
        Ok(_) => Err(("DryRunIgnored".into(), "MeterUsage answered as if DryRun were not set".into())),
        Err(SdkError::ServiceError(se)) => {
            let code = se.err().code().unwrap_or("Unknown").to_string();
            if code == "DryRunOperation" { Ok(()) } else { Err((code, se.err().message().unwrap_or("").to_string())) }
        }
        Err(e) => Err(("NoAnswer".into(), aws_smithy_types::error::display::DisplayErrorContext(&e).to_string())),
    }
}

fn classify(e: SdkError<MeterUsageError, HttpResponse>) -> MeterOutcome {
    match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = err.message().unwrap_or("").to_string();
            let request_id = err.meta().request_id().map(str::to_string);
            match code.as_str() {
                "ThrottlingException" => {
                    MeterOutcome::Retryable { throttled: true, reason: format!("{code}: {message}") }
                }
                "InternalServiceErrorException" => {
                    MeterOutcome::Retryable { throttled: false, reason: format!("{code}: {message}") }
                }
                "DuplicateRequestException" => MeterOutcome::Duplicate { request_id },
                c if RECORD_EXCEPTIONS.contains(&c) => MeterOutcome::Rejected { exception: code, message, request_id },
                _ if se.raw().status().is_server_error() => {
                    MeterOutcome::Retryable { throttled: false, reason: format!("{code}: {message}") }
                }
                _ => MeterOutcome::AccountProblem { reason: format!("{code}: {message}") },
            }
        }
        _ => MeterOutcome::Retryable {
            throttled: false,
            reason: format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&e)),
        },
    }
}

impl Submitter {
    /// Sends each record of `batch` (one deployment-mode product) with its own MeterUsage call, paced, and
    /// records every outcome durably. Returns how many calls were made.
    pub(super) async fn submit_meter_usage(&mut self, batch: Vec<SealedRecord>) -> Result<usize, StoreError> {
        let mut calls = 0;
        for r in batch {
            if self.stop.as_ref().is_some_and(|s| *s.borrow())
                || self.pause_until.is_some_and(|until| tokio::time::Instant::now() < until)
            {
                break;
            }
            let now = self.clock.now_ms();
            let code = self.config.products.get(&r.key.product).and_then(|p| p.product_code.clone());
            let Some(code) = code else {
                // Config validation requires it; a record of a product since removed from the config lands here.
                let state = RecordState::Rejected {
                    reason: RejectReason::Invalid(format!("product {:?} has no product_code", r.key.product)),
                    aws_request_id: None,
                    at_ms: now,
                };
                self.stats.reject("Invalid");
                self.store.update_records(vec![SealedRecord { state, ..r }]).await?;
                continue;
            };
            let sent_before = r.state.was_sent();
            let attempts = match r.state {
                RecordState::InFlight { attempts, .. } => attempts + 1,
                _ => 1,
            };
            let next_attempt_ms = now + backoff::record_retry_delay(attempts).as_millis() as i64;
            let r = SealedRecord { state: RecordState::InFlight { attempts, next_attempt_ms }, ..r };
            // Durably in flight before anything leaves the process.
            self.store.update_records(vec![r.clone()]).await?;

            let wait = self.pacer.reserve(self.pace_origin.elapsed().as_secs_f64());
            if wait > 0.0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
            }
            calls += 1;
            self.metrics.batch_size.observe(1.0);
            if sent_before {
                self.metrics.retries.fetch_add(1, Ordering::Relaxed);
            }
            let started = std::time::Instant::now();
            let outcome = send(&self.client, &code, &r).await;
            self.metrics.call_latency.observe(started.elapsed().as_secs_f64());
            let throttled = matches!(outcome, MeterOutcome::Retryable { throttled: true, .. });
            self.pacer.on_response(self.pace_origin.elapsed().as_secs_f64(), throttled);
            let now = self.clock.now_ms();
            let state = match outcome {
                MeterOutcome::Accepted { metering_record_id, request_id } => {
                    self.throttle_streak = 0;
                    self.stats.calls_ok.fetch_add(1, Ordering::Relaxed);
                    self.stats.last_success_ms.store(now, Ordering::Relaxed);
                    self.stats.records_accepted.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(record = ?r.key, %metering_record_id, request_id = request_id.as_deref().unwrap_or("-"),
                        "MeterUsage accepted");
                    RecordState::Accepted {
                        metering_record_id: Some(metering_record_id),
                        aws_request_id: request_id,
                        at_ms: now,
                        verify: false,
                    }
                }
                MeterOutcome::Duplicate { request_id } if sent_before => {
                    self.stats.calls_ok.fetch_add(1, Ordering::Relaxed);
                    self.stats.records_accepted.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(record = ?r.key, "DuplicateRequestException for a resend of this exact record: \
                        counted as accepted, flagged for verification against the seller reports");
                    RecordState::Accepted {
                        metering_record_id: None,
                        aws_request_id: request_id,
                        at_ms: now,
                        verify: true,
                    }
                }
                MeterOutcome::Duplicate { request_id } => {
                    self.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
                    self.stats.reject("DuplicateRecord");
                    tracing::error!(record = ?r.key, units = r.quantity, request_id = request_id.as_deref().unwrap_or("-"),
                        "REVENUE LOST: DuplicateRequestException on the first send: this host already metered another \
                        quantity for this dimension and hour (a second meterd on the same instance?); these units are \
                        never billed");
                    RecordState::Rejected {
                        reason: RejectReason::DuplicateRecord,
                        aws_request_id: request_id,
                        at_ms: now,
                    }
                }
                MeterOutcome::Rejected { exception, message, request_id } => {
                    self.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
                    self.stats.reject(&exception);
                    tracing::error!(record = ?r.key, %exception, %message, "MeterUsage rejected the record");
                    RecordState::Rejected {
                        reason: RejectReason::AwsException(exception),
                        aws_request_id: request_id,
                        at_ms: now,
                    }
                }
                MeterOutcome::Retryable { throttled, reason } => {
                    if throttled {
                        self.stats.calls_throttled.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%reason, calls_per_second = format!("{:.2}", self.pacer.rate()),
                            "throttled by AWS; lowered this account's send rate");
                    } else {
                        self.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(record = ?r.key, %reason, "MeterUsage failed; the record stays in flight and is resent unchanged");
                    }
                    continue;
                }
                MeterOutcome::AccountProblem { reason } => {
                    self.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
                    self.throttle_streak += 1;
                    let pause = backoff::full_jitter(self.throttle_streak);
                    self.pause_until = Some(tokio::time::Instant::now() + pause);
                    tracing::error!(account = %self.account, product = %r.key.product, %reason, ?pause,
                        "MeterUsage refused for a reason no record explains (entitlement, product code, IAM \
                         permission, Region?); records stay pending until their deadline");
                    break;
                }
            };
            self.store.update_records(vec![SealedRecord { state, ..r }]).await?;
        }
        Ok(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_reference_table() {
        use aws_smithy_runtime_api::http::{Response, StatusCode};
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;
        let outcome = |code: &str, status: u16| {
            let err = MeterUsageError::generic(ErrorMetadata::builder().code(code).message("m").build());
            let raw = Response::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
            classify(SdkError::service_error(err, raw))
        };
        assert!(matches!(outcome("ThrottlingException", 400), MeterOutcome::Retryable { throttled: true, .. }));
        assert!(matches!(
            outcome("InternalServiceErrorException", 500),
            MeterOutcome::Retryable { throttled: false, .. }
        ));
        assert!(matches!(outcome("SomethingNew", 503), MeterOutcome::Retryable { throttled: false, .. }));
        assert!(matches!(outcome("DuplicateRequestException", 400), MeterOutcome::Duplicate { .. }));
        for c in RECORD_EXCEPTIONS {
            assert!(matches!(outcome(c, 400), MeterOutcome::Rejected { .. }), "{c}");
        }
        for c in [
            "CustomerNotEntitledException",
            "InvalidProductCodeException",
            "UnauthorizedException",
            "InvalidEndpointRegionException",
        ] {
            assert!(matches!(outcome(c, 400), MeterOutcome::AccountProblem { .. }), "{c}");
        }
    }
}
