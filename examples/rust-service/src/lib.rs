//! A tiny HTTP service (axum) that records one `api_calls` unit per request through the meterd Rust client.
//! `main.rs` serves [`router`]; the tests drive the same router in-process.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use meterd_proto::sdk::{Client, Error, Usage};

/// The service's routes, metering through `meter` (one client, shared by every request).
pub fn router(meter: Client) -> Router {
    Router::new().route("/work", get(work)).route("/usage", get(usage)).with_state(meter)
}

/// A failed metering call as an HTTP answer.
fn metering_failed(e: Error) -> (StatusCode, String) {
    match e {
        // The event breaks a rule: a bug in this service, not the customer's problem.
        Error::InvalidUsage { .. } => (StatusCode::INTERNAL_SERVER_ERROR, format!("metering bug: {e}\n")),
        // Agent down (or refusing) for longer than the retry budget: fail the request rather than give the
        // work away; the service itself keeps serving.
        e => (StatusCode::SERVICE_UNAVAILABLE, format!("metering unavailable ({}): {e}\n", e.code())),
    }
}

async fn work(State(meter): State<Client>, headers: HeaderMap) -> Result<String, (StatusCode, String)> {
    let tenant = headers.get("x-tenant").and_then(|v| v.to_str().ok()).unwrap_or("anonymous").to_string();
    // ... the billable work happens here ...
    // One line per billable unit. The key could come from a request id to make client-side retries safe too.
    let receipt = meter.record_usage(Usage::new(tenant.clone(), "api_calls", 1u32)).await.map_err(metering_failed)?;
    Ok(format!("done for {tenant}; usage recorded as {}\n", receipt.idempotency_key))
}

/// The agent's reconciliation totals, as JSON (hand-written to keep the example free of serde).
async fn usage(State(meter): State<Client>) -> Result<impl IntoResponse, (StatusCode, String)> {
    let report = meter.report().await.map_err(metering_failed)?;
    let t = report.totals.unwrap_or_default();
    let body = format!("{{\"recorded\":{:?},\"accepted\":{:?},\"open\":{:?}}}\n", t.recorded, t.accepted, t.open);
    Ok(([("content-type", "application/json")], body))
}
