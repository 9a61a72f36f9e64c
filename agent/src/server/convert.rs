//! The one place domain values and errors become wire values and gRPC statuses.

use meterd_proto::{Timestamp, v1};
use tonic::Status;

use crate::clock::UnixMillis;
use crate::domain::event::Receipt;
use crate::store::StoreError;

pub fn timestamp(ms: UnixMillis) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn receipt_to_wire(r: &Receipt) -> v1::Receipt {
    v1::Receipt {
        idempotency_key: r.idempotency_key.clone(),
        replayed: r.replayed,
        product: r.product.clone(),
        event_time: Some(timestamp(r.event_time_ms)),
        usage_hour: Some(timestamp(r.hour_ms)),
        recorded_at: Some(timestamp(r.recorded_at_ms)),
    }
}

/// Store failures are the agent's problem, never the caller's: UNAVAILABLE tells SDKs to retry with the same
/// idempotency key, which is safe because nothing was acknowledged.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Corrupt(_) | StoreError::UnsupportedSchema { .. } => Status::internal(e.to_string()),
        StoreError::Io(_) | StoreError::Closed | StoreError::Poisoned(_) => Status::unavailable(e.to_string()),
    }
}
