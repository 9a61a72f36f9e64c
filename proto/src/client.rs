//! A thin typed client: connection by `host:port` or `unix:/path`, shared by all calls.
//!
//! Retry, idempotency-key generation and batching policy live in [`crate::sdk::Client`], built on top of this.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::v1::{admin_client::AdminClient, customers_client::CustomersClient, metering_client::MeteringClient};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget { target: String, reason: String },
    #[error("cannot connect to {target}: {source}")]
    Transport {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Where the agent listens: `127.0.0.1:7171`, `http://127.0.0.1:7171` or `unix:/run/meterd/meterd.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, ConnectError> {
        let bad = |reason: &str| ConnectError::InvalidTarget { target: s.to_string(), reason: reason.into() };
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("unix target needs a socket path, e.g. unix:/run/meterd/meterd.sock"));
            }
            return Ok(Target::Unix(path.into()));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s);
        if hostport.is_empty() || !hostport.contains(':') || hostport.contains('/') {
            return Err(bad("expected host:port or unix:/path"));
        }
        Ok(Target::Tcp(hostport.to_string()))
    }
}

/// A connection to one agent; cheap to clone (clones share the HTTP/2 connection).
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects eagerly, so a wrong address fails here rather than on the first call.
    pub async fn connect(target: &str, connect_timeout: Duration) -> Result<Self, ConnectError> {
        let parsed = Target::parse(target)?;
        let transport = |source| ConnectError::Transport { target: target.to_string(), source };
        let channel = match parsed {
            Target::Tcp(hp) => Endpoint::from_shared(format!("http://{hp}"))
                .map_err(transport)?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(4 * 1024 * 1024))
                .initial_connection_window_size(Some(16 * 1024 * 1024))
                .connect()
                .await
                .map_err(transport)?,
            Target::Unix(path) => {
                // The URI is required by the builder but unused: the connector below picks the socket.
                Endpoint::from_static("http://localhost")
                    .connect_timeout(connect_timeout)
                    .initial_stream_window_size(Some(4 * 1024 * 1024))
                    .initial_connection_window_size(Some(16 * 1024 * 1024))
                    .connect_with_connector(tower::service_fn(move |_| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                        }
                    }))
                    .await
                    .map_err(transport)?
            }
        };
        Ok(Self { channel })
    }

    /// Builds the connection without any I/O: it is made on the first call and remade after it breaks, so an
    /// agent that is not up yet (or restarts) costs a failed call, never a failed construction. Must be called
    /// inside a tokio runtime (the channel spawns its worker task there).
    pub fn connect_lazy(target: &str, connect_timeout: Duration) -> Result<Self, ConnectError> {
        let parsed = Target::parse(target)?;
        let transport = |source| ConnectError::Transport { target: target.to_string(), source };
        let channel = match parsed {
            Target::Tcp(hp) => Endpoint::from_shared(format!("http://{hp}"))
                .map_err(transport)?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(4 * 1024 * 1024))
                .initial_connection_window_size(Some(16 * 1024 * 1024))
                .connect_lazy(),
            Target::Unix(path) => Endpoint::from_static("http://localhost")
                .connect_timeout(connect_timeout)
                .initial_stream_window_size(Some(4 * 1024 * 1024))
                .initial_connection_window_size(Some(16 * 1024 * 1024))
                .connect_with_connector_lazy(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                })),
        };
        Ok(Self { channel })
    }

    pub fn metering(&self) -> MeteringClient<Channel> {
        MeteringClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    pub fn customers(&self) -> CustomersClient<Channel> {
        CustomersClient::new(self.channel.clone())
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(Target::parse("127.0.0.1:7171").unwrap(), Target::Tcp("127.0.0.1:7171".into()));
        assert_eq!(Target::parse("http://localhost:1").unwrap(), Target::Tcp("localhost:1".into()));
        assert_eq!(Target::parse("unix:/tmp/m.sock").unwrap(), Target::Unix("/tmp/m.sock".into()));
        assert_eq!(Target::parse("unix:///tmp/m.sock").unwrap(), Target::Unix("/tmp/m.sock".into()));
        assert!(Target::parse("unix:").is_err());
        assert!(Target::parse("localhost").is_err());
        assert!(Target::parse("").is_err());
    }
}
