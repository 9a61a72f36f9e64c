//! `meterd.v1.Metering` over gRPC: converts wire types and maps refusals to status codes.

use meterd_proto::v1::{self, metering_server::Metering};
use tonic::{Code, Request, Response, Status};

use super::convert::{receipt_to_wire, store_status};
use crate::domain::echo::echo;
use crate::domain::validate::FieldError;
use crate::ingest::{EventRefusal, Ingest};

pub struct MeteringService {
    pub ingest: Ingest,
}

fn refusal(prefix: &str, key: &str, r: &EventRefusal) -> (Code, String, String) {
    match r {
        EventRefusal::Invalid(FieldError { field, message }) => {
            let path = if field.is_empty() { prefix.to_string() } else { format!("{prefix}.{field}") };
            (Code::InvalidArgument, path.clone(), format!("{path}: {message}"))
        }
        EventRefusal::Conflict { existing } => (
            Code::AlreadyExists,
            format!("{prefix}.idempotency_key"),
            format!(
                "{prefix}.idempotency_key: {} was already used for a different event (recorded at {} for hour {} of product {:?}); \
                 a retry must resend identical content, a new event needs a new key",
                echo(key),
                crate::clock::rfc3339(existing.recorded_at_ms),
                crate::clock::rfc3339(existing.hour_ms),
                existing.product
            ),
        ),
        EventRefusal::LateRejected { hour_ms } => (
            Code::FailedPrecondition,
            format!("{prefix}.timestamp"),
            format!(
                "{prefix}.timestamp: the hour {} is already sealed for submission and pipeline.late_usage is \"reject\"; \
                 late usage is not counted",
                crate::clock::rfc3339(*hour_ms)
            ),
        ),
        EventRefusal::TooLate { event_time_ms, max_lateness } => (
            Code::FailedPrecondition,
            format!("{prefix}.timestamp"),
            format!(
                "{prefix}.timestamp: {} is older than pipeline.max_lateness ({}): usage that late is not billed \
                 (AWS refuses it, and counting it now would bill the wrong period)",
                crate::clock::rfc3339(*event_time_ms),
                humantime::format_duration(*max_lateness)
            ),
        ),
        EventRefusal::NotActive { message } => {
            (Code::FailedPrecondition, format!("{prefix}.customer"), format!("{prefix}.customer: {message}"))
        }
        EventRefusal::Overflow => (
            Code::OutOfRange,
            format!("{prefix}.quantity"),
            format!("{prefix}.quantity: the hourly total of this bucket would overflow"),
        ),
    }
}

#[tonic::async_trait]
impl Metering for MeteringService {
    async fn record_usage(
        &self,
        request: Request<v1::RecordUsageRequest>,
    ) -> Result<Response<v1::RecordUsageResponse>, Status> {
        let event = request.into_inner().event.ok_or_else(|| Status::invalid_argument("event: is required"))?;
        let mut results = self.ingest.record(std::slice::from_ref(&event)).await.map_err(store_status)?;
        match results.pop().expect("one result per event") {
            Ok(r) => {
                tracing::debug!(key = %r.idempotency_key, replayed = r.replayed, "usage recorded");
                Ok(Response::new(v1::RecordUsageResponse { receipt: Some(receipt_to_wire(&r)) }))
            }
            Err(e) => {
                let (code, _, message) = refusal("event", &event.idempotency_key, &e);
                tracing::debug!(?code, %message, "usage refused");
                Err(Status::new(code, message))
            }
        }
    }

    async fn record_usage_batch(
        &self,
        request: Request<v1::RecordUsageBatchRequest>,
    ) -> Result<Response<v1::RecordUsageBatchResponse>, Status> {
        let events = request.into_inner().events;
        let max = self.ingest.config().ingest.max_batch_events;
        if events.is_empty() {
            return Err(Status::invalid_argument("events: at least one event is required"));
        }
        if events.len() > max {
            return Err(Status::invalid_argument(format!(
                "events: {} events exceed ingest.max_batch_events ({max}); split the batch",
                events.len()
            )));
        }
        let results = self.ingest.record(&events).await.map_err(store_status)?;
        let results = results
            .iter()
            .zip(&events)
            .enumerate()
            .map(|(i, (r, ev))| v1::EventResult {
                outcome: Some(match r {
                    Ok(receipt) => v1::event_result::Outcome::Receipt(receipt_to_wire(receipt)),
                    Err(e) => {
                        let (code, field, message) = refusal(&format!("events[{i}]"), &ev.idempotency_key, e);
                        v1::event_result::Outcome::Error(v1::EventError { code: code as i32, field, message })
                    }
                }),
            })
            .collect();
        tracing::debug!(events = events.len(), "usage batch recorded");
        Ok(Response::new(v1::RecordUsageBatchResponse { results }))
    }
}
