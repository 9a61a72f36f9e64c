//! `meterd emulator --listen ADDR --config FILE`: the emulator as its own process, for sellers' test suites.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::{Emulator, EmulatorConfig, SystemClock};

/// Serves until SIGINT/SIGTERM. Prints exactly one line to stdout once bound,
/// `meterd-emulator listening on http://IP:PORT` (so a harness can start it on port 0 and read the port);
/// everything else goes to the tracing subscriber. Without a config file it serves [`EmulatorConfig::demo`].
pub async fn run_standalone(listen: SocketAddr, config_path: Option<&Path>) -> anyhow::Result<()> {
    serve_standalone(listen, config_path, std::io::stdout(), shutdown_signal()).await
}

/// [`run_standalone`] with the announcement written to `out` and a caller-chosen stop condition.
pub async fn serve_standalone(
    listen: SocketAddr,
    config_path: Option<&Path>,
    mut out: impl Write,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = match config_path {
        Some(p) => EmulatorConfig::from_file(p)?,
        None => {
            tracing::info!("no emulator config given; serving the demo catalog (product demo-product)");
            EmulatorConfig::demo()
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let emulator = Emulator::new(config, Arc::new(SystemClock));
    let handle = emulator.start(listener).await?;
    writeln!(out, "meterd-emulator listening on {}", handle.endpoint_url())?;
    out.flush()?;
    tracing::info!(addr = %handle.addr(), "emulator serving");
    shutdown.await;
    tracing::info!("emulator stopping");
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
