//! The meterd v1 API: message types and services generated from `meterd/v1/*.proto`, [`client::Client`] (the
//! connection), and [`sdk::Client`], the Rust client SDK (timeouts, retries, idempotency keys, batching) that the
//! Python and Node packages wrap.

pub mod client;
pub mod sdk;

/// Generated types and services of package `meterd.v1`.
pub mod v1 {
    tonic::include_proto!("meterd.v1");

    /// Encoded `FileDescriptorSet` of the v1 API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("meterd_v1_descriptor");
}

pub use prost::Message;
pub use prost_types::Timestamp;
