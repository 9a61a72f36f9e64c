//! The gRPC transport: listeners (loopback TCP, Unix socket), the services, health and reflection.

mod admin;
pub mod admin_http;
pub mod auth;
pub mod codec_status;
pub mod convert;
mod customers;
pub mod dashboard;
pub mod health;
pub mod marketplace_http;
mod metering;
pub mod rate_limit;
pub mod report_stream;
mod request_id;
pub mod sns;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meterd_proto::v1::{admin_server::AdminServer, customers_server::CustomersServer, metering_server::MeteringServer};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::ingest::Ingest;
use crate::store::Store;

pub use admin::AdminService;
pub use metering::MeteringService;

/// Largest request accepted: a 100k-event batch with long tags fits.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// All gRPC services of the agent, ready to be served on any number of listeners, and the health state
/// [`serve`] flips to NOT_SERVING when shutdown begins.
pub fn routes(
    config: Arc<Config>,
    store: Store,
    clock: SharedClock,
    pipeline: crate::pipeline::Pipeline,
    registry: crate::customers::Customers,
    metrics: &crate::metrics::Registry,
) -> (Routes, health::Health) {
    let health = health::Health::new();
    // Both reflection versions: grpcurl and current tools speak v1, grpcio-reflection's client and older
    // grpcurl builds only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meterd_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("descriptor sets are valid");
    let reflection_v1alpha = reflection().build_v1alpha().expect("descriptor sets are valid");
    let started_at_ms = clock.now_ms();
    let ingest =
        Ingest::new(Arc::new(config.catalog()), Arc::new(store.clone()), store.stamps(), clock.clone(), metrics);
    let metering = MeteringServer::new(MeteringService { ingest, max_batch_events: config.ingest.max_batch_events })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServer::new(AdminService { config, store, clock, pipeline, started_at_ms });
    let mut builder = Routes::builder();
    let customers = CustomersServer::new(customers::CustomersService { customers: registry });
    builder
        .add_service(metering)
        .add_service(admin)
        .add_service(customers)
        .add_service(health.service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    (builder.routes(), health)
}

/// Bound listeners, so callers (and tests) know the real addresses before serving starts.
pub struct Listeners {
    pub tcp: Option<(TcpListener, SocketAddr)>,
    pub unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let tcp = match &config.server.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("server.listen: cannot listen on {addr}: {e}"))?;
                let local = l.local_addr()?;
                Some((l, local))
            }
            None => None,
        };
        let unix = match &config.server.unix_socket {
            Some(path) => Some((bind_unix(path)?, path.clone())),
            None => None,
        };
        Ok(Self { tcp, unix })
    }
}

fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let key = "server.unix_socket";
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // A socket left by a previous run (kill -9) would make bind fail; anything else is not ours to delete.
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)
                .map_err(|e| anyhow::anyhow!("{key}: cannot remove stale {}: {e}", path.display()))?;
        } else {
            anyhow::bail!("{key}: {} exists and is not a socket", path.display());
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("{key}: cannot create {}: {e}", parent.display()))?;
    }
    let l = UnixListener::bind(path).map_err(|e| anyhow::anyhow!("{key}: cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

type BaseLayers = tower::layer::util::Stack<
    codec_status::CodecStatusLayer,
    tower::layer::util::Stack<request_id::RequestIdLayer, tower::layer::util::Identity>,
>;

/// Large windows let a 1,000-event batch (~110 KB) arrive without waiting for window updates.
fn server_builder() -> tonic::transport::Server<BaseLayers> {
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .layer(request_id::RequestIdLayer)
        .layer(codec_status::CodecStatusLayer)
}

/// Serves `routes` on every bound listener until `shutdown` resolves, then lets in-flight calls finish.
/// What protects the TCP listener: TLS (optionally mTLS) and a bearer token. The Unix socket relies on its
/// file permissions.
#[derive(Default)]
pub struct TcpSecurity {
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    pub token: Option<String>,
    /// Calls refused for the token; the admin listener counts into it too.
    pub refused: std::sync::Arc<auth::Refused>,
}

impl TcpSecurity {
    /// Reads the certificate, key, client CA and token files named in the config; errors name the key.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let read = |key: &str, p: &Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("{key}: cannot read {}: {e}", p.display()))
        };
        let tls = match &config.server.tls {
            Some(t) => {
                let identity = tonic::transport::Identity::from_pem(
                    read("server.tls.cert_file", &t.cert_file)?,
                    read("server.tls.key_file", &t.key_file)?,
                );
                let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
                if let Some(ca) = &t.client_ca_file {
                    tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
                        "server.tls.client_ca_file",
                        ca,
                    )?));
                }
                Some(tls)
            }
            None => None,
        };
        let token = match &config.server.token_file {
            Some(p) => {
                let raw = read("server.token_file", p)?;
                let token = String::from_utf8(raw)
                    .map_err(|_| anyhow::anyhow!("server.token_file: {} is not UTF-8", p.display()))?
                    .trim()
                    .to_string();
                if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    anyhow::bail!(
                        "server.token_file: the token must be at least 16 printable characters without spaces"
                    );
                }
                Some(token)
            }
            None => None,
        };
        Ok(Self { tls, token, refused: Default::default() })
    }
}

pub async fn serve(
    routes: Routes,
    health: health::Health,
    listeners: Listeners,
    security: TcpSecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // Ends open health watches first: graceful shutdown waits for every open call.
        health.stopping();
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some((l, _)) = listeners.tcp {
        let routes = routes.clone();
        let stop = stopped(stop_rx.clone());
        // Without TCP_NODELAY, HTTP/2 window updates meet delayed ACKs and a large batch waits ~40 ms.
        let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
        let mut builder = server_builder();
        if let Some(tls) = security.tls {
            builder = builder.tls_config(tls).map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
        }
        let mut builder = builder.layer(auth::AuthLayer::new(security.token, security.refused));
        let server = builder.add_routes(routes);
        tasks.spawn(async move { server.serve_with_incoming_shutdown(incoming, stop).await });
    }
    if let Some((l, path)) = listeners.unix {
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            let r = server_builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(UnixListenerStream::new(l), stop)
                .await;
            let _ = std::fs::remove_file(&path);
            r
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}
