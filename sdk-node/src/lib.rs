//! The Node binding of the meterd Rust client SDK (`meterd_proto::sdk`), loaded by `index.js` as
//! `meterd.node`. It only converts arguments, results, errors and async (Promises on napi's tokio runtime);
//! every behaviour (retries, keys, timeouts, batching) is the Rust client's. The JS facade (`index.js`) turns
//! plain values into these shapes and native errors into `MeterdError` subclasses.

mod admin;
mod client;
mod customers;
mod error;
mod packed;
mod report;
mod usage;
