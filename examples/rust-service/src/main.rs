//! A tiny HTTP service (axum) that records one `api_calls` unit per request through the meterd Rust client.
//!
//!     cargo run --release -p meterd -- run --simulate     # terminal 1: the agent (prints its tcp= address)
//!     METERD_TARGET=127.0.0.1:7171 cargo run -p meterd-example-rust-service   # terminal 2
//!     curl -H 'x-tenant: acme' localhost:8080/work        # terminal 3

use std::net::SocketAddr;

use meterd_proto::sdk::{Client, ClientOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::var("METERD_TARGET").unwrap_or_else(|_| "127.0.0.1:7171".into());
    let listen: SocketAddr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into()).parse()?;
    let meter = Client::new(&target, ClientOptions::default())?; // one client, shared by every request
    let app = meterd_example_rust_service::router(meter);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{listen} (meterd at {target})");
    axum::serve(listener, app).await?;
    Ok(())
}
