//! A tiny HTTP service (axum) that records one `api_calls` unit per request through the meterd Rust client.
//!
//!     cargo run --release -p meterd -- run --simulate     # terminal 1: the agent (prints its tcp= address)
//!     METERD_TARGET=127.0.0.1:7171 cargo run -p meterd-example-rust-service   # terminal 2
//!     curl -H 'x-tenant: acme' localhost:8080/work        # terminal 3

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use meterd_proto::sdk::{Client, ClientOptions, Error, Usage};

async fn work(State(meter): State<Client>, headers: HeaderMap) -> Result<String, (StatusCode, String)> {
    let tenant = headers.get("x-tenant").and_then(|v| v.to_str().ok()).unwrap_or("anonymous").to_string();
    // ... the billable work happens here ...
    // One line per billable unit. The key could come from a request id to make client-side retries safe too.
    match meter.record_usage(Usage::new(tenant.clone(), "api_calls", 1u32)).await {
        Ok(receipt) => Ok(format!("done for {tenant}; usage recorded as {}\n", receipt.idempotency_key)),
        // The event breaks a rule: a bug in this service, not the customer's problem.
        Err(e @ Error::InvalidUsage { .. }) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("metering bug: {e}\n"))),
        // Agent down for longer than the retry budget: fail the request rather than give the work away.
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, format!("metering unavailable ({}): {e}\n", e.code()))),
    }
}

/// The agent's reconciliation totals, as JSON (hand-written to keep the example free of serde).
async fn usage(State(meter): State<Client>) -> Result<impl IntoResponse, (StatusCode, String)> {
    let report = meter.report().await.map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let t = report.totals.unwrap_or_default();
    let body = format!("{{\"recorded\":{:?},\"accepted\":{:?},\"open\":{:?}}}\n", t.recorded, t.accepted, t.open);
    Ok(([("content-type", "application/json")], body))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::var("METERD_TARGET").unwrap_or_else(|_| "127.0.0.1:7171".into());
    let listen: SocketAddr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into()).parse()?;
    let meter = Client::new(&target, ClientOptions::default())?; // one client, shared by every request
    let app = Router::new().route("/work", get(work)).route("/usage", get(usage)).with_state(meter);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{listen} (meterd at {target})");
    axum::serve(listener, app).await?;
    Ok(())
}
