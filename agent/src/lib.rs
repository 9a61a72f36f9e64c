//! meterd: a host agent that records SaaS usage durably and turns it into AWS Marketplace metering records.
//!
//! Layout (see docs/ARCHITECTURE.md): `domain` (pure rules), `store` (durable state, the only sled user),
//! `ingest` (validate + store), `server` (gRPC transport), `app` (wiring), `cli` (the `meterd` command).

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod customers;
pub mod domain;
pub mod import;
pub mod ingest;
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
