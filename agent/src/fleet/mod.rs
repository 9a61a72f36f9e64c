//! Fleet mode (`[fleet]`, `docs/fleet.md`): this agent's local sled store becomes a spool of acknowledged events
//! ([`crate::store::outbox`]); a [`forwarder`] ships it to the shared ledger in PostgreSQL; the agent elected in
//! PostgreSQL for an account seals the shared ledger and submits its records ([`leader`]).

pub mod flush;
pub mod forwarder;
pub mod leader;
pub mod report;
pub mod shared_ack;
pub mod status;
pub mod status_view;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use meterd_fleet::connect::Database;
use meterd_fleet::nodes::{self, NodeError, Registration};
use tokio::sync::watch;

use self::status::FleetStatus;
use crate::clock::SharedClock;
use crate::config::fleet::{self as config, FleetConfig};
use crate::store::Store;

/// An error of the fleet database as one line, naming the database once.
pub(crate) fn describe(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    if text.starts_with("fleet database") { text } else { format!("fleet database: {text}") }
}

/// Formats an error with its sources: tokio-postgres says only "db error" and keeps the server's message in its
/// source, which is what an operator needs ("the database system is starting up", ...).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        next = cause.source();
    }
    s
}

/// This agent as a member of the fleet.
pub struct Node {
    pub db: Database,
    pub me: Registration,
    pub config: FleetConfig,
    pub status: Arc<FleetStatus>,
    /// One forward of the spool at a time (the forwarder, a flush, `ack = "shared"`): two at once would send
    /// the same page twice (harmless replays, but wasted work and misleading counters).
    pub forwarding: tokio::sync::Mutex<()>,
    /// Wakes this agent's submitter campaigns (a flush asked for a seal).
    pub wake: tokio::sync::Notify,
}

/// Joins the fleet: connects, applies the schema migrations, and registers `fleet.node_id`. Waits (retrying)
/// while the database is unreachable; refuses when another live agent holds the node id. A previous incarnation
/// of this same data dir (a crash-restart) is released first: the data dir is this process's alone.
pub async fn join(cfg: &FleetConfig, store: &Store) -> anyhow::Result<Node> {
    let db = Database::parse(cfg.database_url(), cfg.database_password_file.as_deref())?;
    let node_id = cfg.node_id();
    let mut delay = Duration::from_millis(500);
    loop {
        match try_join(&db, &node_id, cfg, store).await {
            Ok(me) => {
                store.set_fleet_incarnation(*me.incarnation.as_bytes())?;
                tracing::info!(%node_id, incarnation = %me.incarnation, "joined the fleet");
                return Ok(Node {
                    db,
                    me,
                    config: cfg.clone(),
                    status: Arc::default(),
                    forwarding: Default::default(),
                    wake: Default::default(),
                });
            }
            Err(JoinError::InUse(e)) => anyhow::bail!("{e}"),
            Err(JoinError::Other(e)) => {
                tracing::warn!(error = %e, ?delay, "cannot reach the fleet database yet; retrying before serving");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

enum JoinError {
    InUse(NodeError),
    Other(anyhow::Error),
}

async fn try_join(db: &Database, node_id: &str, cfg: &FleetConfig, store: &Store) -> Result<Registration, JoinError> {
    let other = |e: &(dyn std::error::Error + 'static)| JoinError::Other(anyhow::anyhow!("{}", chain(e)));
    let mut client = db.connect().await.map_err(|e| other(&e))?;
    meterd_fleet::migrate::migrate(&mut client).await.map_err(|e| other(&e))?;
    if let Some(previous) = store.fleet_incarnation().map_err(|e| other(&e))? {
        nodes::release(&client, node_id, uuid::Uuid::from_bytes(previous)).await.map_err(|e| other(&e))?;
    }
    match nodes::register(&client, node_id, env!("CARGO_PKG_VERSION"), cfg.down_after).await {
        Ok(me) => Ok(me),
        Err(e @ NodeError::InUse { .. }) => Err(JoinError::InUse(e)),
        Err(e) => Err(other(&e)),
    }
}

/// The fleet's tasks: the forwarder and one lease campaign per account.
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the forwarder and, per configured account, a submitter that acts only while it holds the lease.
/// Returns the submitters' counters (for status and metrics).
pub async fn start(
    node: Arc<Node>,
    config: Arc<crate::config::Config>,
    store: Store,
    clock: SharedClock,
    metrics: Arc<crate::submit::SubmitMetrics>,
    registry: &crate::metrics::Registry,
) -> anyhow::Result<(Running, Vec<(String, Arc<crate::submit::SubmitStats>)>)> {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    registry.register(Arc::new(status::FleetMetrics {
        status: node.status.clone(),
        store: store.clone(),
        clock: clock.clone(),
    }));
    if node.config.ack == config::Ack::Shared {
        store.set_ack_gate(Arc::new(shared_ack::SharedAck::new(node.clone(), store.clone(), clock.clone())));
    }
    tasks.spawn(forwarder::run(node.clone(), store.clone(), clock.clone(), stop_rx.clone()));
    let mut stats = Vec::new();
    for account in config.accounts.keys() {
        let queue = Arc::new(leader::FleetQueue::new(node.clone(), store.clone(), Default::default()));
        let submitter =
            crate::submit::Submitter::new(account, config.clone(), queue.clone(), clock.clone(), metrics.clone())
                .await?;
        stats.push((account.clone(), submitter.stats.clone()));
        tasks.spawn(leader::run(
            account.clone(),
            node.clone(),
            queue,
            submitter,
            config.clone(),
            clock.clone(),
            stop_rx.clone(),
        ));
    }
    Ok((Running { stop, tasks }, stats))
}
