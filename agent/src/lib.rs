//! meterd: a host agent that records SaaS usage durably and turns it into AWS Marketplace metering records.
//!
//! Layout (see docs/ARCHITECTURE.md): `domain` (pure rules), `store` (durable state, the only sled user),
//! `ingest` (validate + store), `server` (gRPC transport), `app` (wiring), `cli` (the `meterd` command).

pub mod app;
/// The pure core lives in its own crate (`core/`, shared with the fleet backend); re-exported so every path
/// `crate::domain::…` / `crate::clock::…` stays as it was.
pub use meterd_core::{clock, domain};
pub mod cli;
pub mod config;
pub mod customers;
pub mod fleet;
pub mod import;
pub mod ingest;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod report;
pub mod report_cli;
pub mod report_stream;
pub mod server;
pub mod silence;
#[cfg(feature = "simulate")]
pub mod simulate;
pub mod store;
pub mod submit;
pub mod verify;
