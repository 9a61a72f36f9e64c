//! `meterd.v1.Metering` over gRPC: converts wire types and maps refusals to status codes.

use meterd_proto::v1::{self, metering_server::Metering};
use tonic::{Code, Request, Response, Status};

use super::convert::{receipt_into_wire, refusal_code, store_status};
use crate::domain::ingest::IngestOutcome;
use crate::ingest::Ingest;

pub struct MeteringService {
    pub ingest: Ingest,
    /// `ingest.max_batch_events`.
    pub max_batch_events: usize,
}

/// A refused event's status code, field path (`events[3].quantity`) and message (`events[3].quantity: ...`).
fn refusal(prefix: &str, outcome: &IngestOutcome) -> Option<(Code, String, String)> {
    let (kind, f) = outcome.refusal()?;
    let path = if f.field.is_empty() { prefix.to_string() } else { format!("{prefix}.{}", f.field) };
    Some((refusal_code(kind), path.clone(), format!("{path}: {}", f.message)))
}

#[tonic::async_trait]
impl Metering for MeteringService {
    async fn record_usage(
        &self,
        request: Request<v1::RecordUsageRequest>,
    ) -> Result<Response<v1::RecordUsageResponse>, Status> {
        let event = request.into_inner().event.ok_or_else(|| Status::invalid_argument("event: is required"))?;
        let mut results = self.ingest.record(vec![super::convert::raw_event(event)]).await.map_err(store_status)?;
        let outcome = results.pop().expect("one result per event");
        if let IngestOutcome::Stored(r) | IngestOutcome::Replayed(r) = outcome {
            tracing::debug!(key = %r.idempotency_key, replayed = r.replayed, "usage recorded");
            return Ok(Response::new(v1::RecordUsageResponse { receipt: Some(receipt_into_wire(r)) }));
        }
        let (code, _, message) = refusal("event", &outcome).expect("neither stored nor replayed");
        tracing::debug!(?code, %message, "usage refused");
        Err(Status::new(code, message))
    }

    async fn record_usage_batch(
        &self,
        request: Request<v1::RecordUsageBatchRequest>,
    ) -> Result<Response<v1::RecordUsageBatchResponse>, Status> {
        let events = request.into_inner().events;
        let max = self.max_batch_events;
        if events.is_empty() {
            return Err(Status::invalid_argument("events: at least one event is required"));
        }
        if events.len() > max {
            return Err(Status::invalid_argument(format!(
                "events: {} events exceed ingest.max_batch_events ({max}); split the batch",
                events.len()
            )));
        }
        let n = events.len();
        let results = self
            .ingest
            .record(events.into_iter().map(super::convert::raw_event).collect())
            .await
            .map_err(store_status)?;
        // Receipts are moved, not copied, and a refusal's field path is formatted only for a refusal: per event,
        // this is on the batch path's every call.
        let results = results
            .into_iter()
            .enumerate()
            .map(|(i, o)| v1::EventResult {
                outcome: Some(match o {
                    IngestOutcome::Stored(r) | IngestOutcome::Replayed(r) => {
                        v1::event_result::Outcome::Receipt(receipt_into_wire(r))
                    }
                    refused => {
                        let (code, field, message) =
                            refusal(&format!("events[{i}]"), &refused).expect("an outcome is a receipt or a refusal");
                        v1::event_result::Outcome::Error(v1::EventError { code: code as i32, field, message })
                    }
                }),
            })
            .collect();
        tracing::debug!(events = n, "usage batch recorded");
        Ok(Response::new(v1::RecordUsageBatchResponse { results }))
    }
}
