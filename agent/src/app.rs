//! Wiring: config → store → services → listeners, and an orderly shutdown.

use std::future::Future;
use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::server::{self, Listeners};
use crate::store::Store;

/// A running agent's addresses, printed once at start so scripts and tests can find it.
pub struct Ready {
    pub tcp: Option<std::net::SocketAddr>,
    /// The marketplace HTTP endpoints, when configured.
    pub http: Option<std::net::SocketAddr>,
    /// The admin listener (`/metrics`), when configured.
    pub admin: Option<std::net::SocketAddr>,
    pub unix: Option<std::path::PathBuf>,
    pub emulator_url: Option<String>,
}

impl Ready {
    pub fn line(&self) -> String {
        let mut s = String::from("meterd ready");
        if let Some(a) = self.tcp {
            s.push_str(&format!(" tcp={a}"));
        }
        if let Some(p) = &self.unix {
            s.push_str(&format!(" unix={}", p.display()));
        }
        if let Some(a) = self.http {
            s.push_str(&format!(" http={a}"));
        }
        if let Some(a) = self.admin {
            s.push_str(&format!(" admin={a}"));
        }
        if let Some(u) = &self.emulator_url {
            s.push_str(&format!(" emulator={u}"));
        }
        s
    }
}

/// Runs the agent until `shutdown` resolves: stop accepting, finish in-flight calls, fsync, return.
pub async fn run(
    config: Config,
    clock: SharedClock,
    emulator_url: Option<String>,
    on_ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let options = crate::store::StoreOptions {
        cache_bytes: config.storage.cache_mb * 1024 * 1024,
        min_free: config.storage.min_free,
        seal_chunk: config.storage.seal_chunk,
        dedupe_keep_ms: (config.storage.dedupe_window + config.ingest.max_future_skew).as_millis() as i64,
        stuck_after: Some(config.storage.stuck_after).filter(|d| !d.is_zero()),
    };
    // In fleet mode the local store is a spool (its outbox keeps what is not yet in the shared ledger).
    let open = if config.fleet.is_some() { Store::open_spool } else { Store::open_with };
    let store = open(&config.storage.data_dir, options)
        .map_err(|e| anyhow::anyhow!("storage.data_dir {}: {e}", config.storage.data_dir.display()))?;
    let node = match &config.fleet {
        Some(f) => Some(Arc::new(crate::fleet::join(f, &store).await?)),
        None => None,
    };
    let security = server::TcpSecurity::from_config(&config)?;
    let listeners = Listeners::bind(&config).await?;
    let mut ready = Ready {
        http: None,
        admin: None,
        tcp: listeners.tcp.as_ref().map(|(_, a)| *a),
        unix: listeners.unix.as_ref().map(|(_, p)| p.clone()),
        emulator_url,
    };
    // Each component registers the metrics it owns as it is built.
    let metrics = Arc::new(crate::metrics::Registry::default());
    metrics.register(Arc::new(crate::store::metrics::LedgerMetrics { store: store.clone(), clock: clock.clone() }));
    metrics.register(security.refused.clone());
    // The pipeline and the customer registry need only the seam; status and the admin views still read the
    // sled store's own counters.
    let ledger: Arc<dyn crate::store::Ledger> = Arc::new(store.clone());
    let fleet_view = node.clone();
    let (pipeline, running, fleet) = match node {
        None => {
            let (p, r) =
                crate::pipeline::Pipeline::start(config.clone(), ledger.clone(), clock.clone(), &metrics).await?;
            (p, r, None)
        }
        Some(node) => {
            let submit = Arc::new(crate::submit::SubmitMetrics::default());
            let (fleet, stats) = crate::fleet::start(
                node.clone(),
                config.clone(),
                store.clone(),
                clock.clone(),
                submit.clone(),
                &metrics,
            )
            .await?;
            let (p, r) = crate::pipeline::Pipeline::spool(
                config.clone(),
                ledger.clone(),
                clock.clone(),
                &metrics,
                crate::pipeline::SpoolParts {
                    metrics: submit,
                    submit_stats: stats,
                    deployment: fleet.deployment.clone(),
                    node,
                },
            );
            (p, r, Some(fleet))
        }
    };
    // In fleet mode the customer registry is the fleet's (PostgreSQL), its copy in the spool.
    let registry_ledger: Arc<dyn crate::store::Ledger> = match &fleet {
        Some(f) => Arc::new(crate::fleet::registry::FleetLedger { spool: store.clone(), registry: f.registry.clone() }),
        None => ledger.clone(),
    };
    let customers =
        crate::customers::Customers::new(config.clone(), registry_ledger, clock.clone(), pipeline.clone(), &metrics)
            .await?;
    let (routes, health) =
        server::routes(config.clone(), store.clone(), clock.clone(), pipeline.clone(), customers.clone(), &metrics);
    // In fleet mode the usage is in the shared ledger, not in this agent's spool.
    let drops: Arc<dyn crate::silence::DropSource> = match &fleet_view {
        Some(node) => {
            Arc::new(crate::fleet::hours::FleetDrops { db: node.db.clone(), handle: tokio::runtime::Handle::current() })
        }
        None => Arc::new(crate::silence::LocalDrops(ledger.clone())),
    };
    metrics.register(Arc::new(crate::silence::DropsMetric {
        config: config.clone(),
        source: drops,
        clock: clock.clone(),
    }));
    let admin = match &config.admin {
        Some(a) => {
            let source = server::status::Source {
                config: config.clone(),
                store: store.clone(),
                clock: clock.clone(),
                pipeline: pipeline.clone(),
                started_at_ms: clock.now_ms(),
            };
            // Loopback is protected by the host; any other address by the gRPC listener's token.
            let token = if a.is_loopback() { None } else { security.token.clone() };
            let extra = match &fleet_view {
                Some(node) => crate::fleet::view::routes(node.clone(), store.clone(), clock.clone()),
                None => axum::Router::new(),
            };
            let app = server::admin_http::router(source, metrics.clone(), token, security.refused.clone(), extra);
            Some(HttpServer::start("admin.listen", &a.listen, app).await?)
        }
        None => None,
    };
    let http = match &config.marketplace {
        Some(m) => {
            let product =
                m.product.clone().or_else(|| config.default_product().map(str::to_string)).unwrap_or_default();
            if let Some(why) = m.events_off_reason() {
                tracing::warn!("{why}");
            }
            let app = server::marketplace_http::MarketplaceHttp::from_config(m, customers, product, &metrics)?.router();
            Some(HttpServer::start("marketplace.listen", &m.listen, app).await?)
        }
        None => None,
    };
    let http_addr = http.as_ref().map(|h| h.addr);
    let admin_addr = admin.as_ref().map(|h| h.addr);
    tracing::info!(
        tcp = ?ready.tcp,
        unix = ?ready.unix,
        data_dir = %config.storage.data_dir.display(),
        products = %config.product_names(),
        "meterd started"
    );
    ready.http = http_addr;
    ready.admin = admin_addr;
    on_ready(&ready);
    let served = server::serve(routes, health, listeners, security, shutdown).await;
    tracing::info!("listeners closed; stopping the pipeline and flushing the store");
    running.stop().await;
    if let Some(fleet) = fleet {
        fleet.stop().await;
    }
    for server in [http, admin].into_iter().flatten() {
        server.stop().await;
    }
    store.close().await?;
    served?;
    tracing::info!("meterd stopped cleanly");
    Ok(())
}

/// A plain-HTTP side listener (admin, marketplace) with graceful shutdown.
struct HttpServer {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    async fn start(key: &str, listen: &str, app: axum::Router) -> anyhow::Result<Self> {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {listen}: {e}"))?;
        let addr = l.local_addr()?;
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Peer addresses reach the handlers (the marketplace endpoints rate limit per client).
            let _ = axum::serve(l, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self { addr, stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed by this call, not when the future is first
/// polled: a SIGTERM sent right after the ready line (before serving starts) must stop the agent cleanly, not
/// kill it with the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    }
}
