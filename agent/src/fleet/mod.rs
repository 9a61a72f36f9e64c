//! Fleet mode (`[fleet]`, `docs/fleet.md`): this agent's local sled store becomes a spool of acknowledged events
//! ([`crate::store::outbox`]); a [`forwarder`] ships it to the shared ledger in PostgreSQL; the agent elected in
//! PostgreSQL for an account seals the shared ledger and submits its records ([`leader`]).

pub mod flush;
pub mod forwarder;
pub mod hours;
pub mod leader;
pub mod pg_ledger;
pub mod registry;
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

/// The fleet database as configured. With `iam_auth`, every new connection authenticates with a fresh RDS IAM
/// token signed with the standard AWS credential chain (the environment, a web identity such as EKS IRSA, the
/// container or instance role, a profile), for `aws_region`.
pub async fn database(cfg: &FleetConfig) -> Result<Database, meterd_fleet::connect::ConnectError> {
    let db = Database::parse(cfg.database_url(), cfg.database_password_file.as_deref())?;
    if !cfg.iam_auth {
        return Ok(db);
    }
    let region = cfg.aws_region.clone().unwrap_or_default();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.clone()))
        .load()
        .await;
    let credentials = sdk
        .credentials_provider()
        .ok_or_else(|| meterd_fleet::iam::IamError::Credentials("the AWS SDK found no credential provider".into()))?;
    db.with_iam(meterd_fleet::iam::IamAuth::new(region, credentials))
}

/// Joins the fleet: connects, applies the schema migrations, and registers `fleet.node_id`. Waits (retrying)
/// while the database is unreachable; refuses when another live agent holds the node id. A previous incarnation
/// of this same data dir (a crash-restart) is released first: the data dir is this process's alone.
pub async fn join(cfg: &FleetConfig, store: &Store) -> anyhow::Result<Node> {
    let db = database(cfg).await?;
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
            Err(JoinError::Fatal(e)) => anyhow::bail!("{e}"),
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
    /// Waiting cannot fix it (a wrong password, a missing database, no privilege, a newer schema): refuse to start.
    Fatal(String),
    Other(anyhow::Error),
}

/// Whether a database error is one that waiting for the database cannot fix: authentication (SQLSTATE class
/// 28), a database that does not exist (3D000), a missing privilege (42501, e.g. CREATE for the migrations).
fn is_fatal(e: &meterd_fleet::PgError) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("28") || c.code() == "3D000" || c.code() == "42501")
}

/// Classifies a join step's error: fatal ones name the setting and the database, the rest are waited out.
fn join_error(db: &Database, e: &(dyn std::error::Error + 'static)) -> JoinError {
    let mut fatal = false;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = next {
        if let Some(pg) = cause.downcast_ref::<meterd_fleet::PgError>() {
            fatal |= is_fatal(pg);
        }
        fatal |= matches!(
            cause.downcast_ref::<meterd_fleet::migrate::MigrateError>(),
            Some(meterd_fleet::migrate::MigrateError::TooNew { .. })
        );
        fatal |= matches!(
            cause.downcast_ref::<meterd_fleet::connect::ConnectError>(),
            Some(meterd_fleet::connect::ConnectError::Config { .. })
        );
        next = cause.source();
    }
    if fatal {
        JoinError::Fatal(format!("fleet.database_url ({}): {}", db.location(), describe(&chain(e))))
    } else {
        JoinError::Other(anyhow::anyhow!("{}", chain(e)))
    }
}

async fn try_join(db: &Database, node_id: &str, cfg: &FleetConfig, store: &Store) -> Result<Registration, JoinError> {
    let other = |e: &(dyn std::error::Error + 'static)| join_error(db, e);
    let mut client = db.connect().await.map_err(|e| other(&e))?;
    meterd_fleet::migrate::migrate(&mut client).await.map_err(|e| other(&e))?;
    if let Some(previous) = store.fleet_incarnation().map_err(|e| JoinError::Other(e.into()))? {
        nodes::release(&client, node_id, uuid::Uuid::from_bytes(previous)).await.map_err(|e| other(&e))?;
    }
    match nodes::register(&client, node_id, env!("CARGO_PKG_VERSION"), cfg.down_after).await {
        Ok(me) => Ok(me),
        Err(e @ NodeError::InUse { .. }) => Err(JoinError::InUse(e)),
        Err(e) => Err(other(&e)),
    }
}

/// `check-config --fleet`: whether the fleet database is reachable and migrated to this meterd's schema. Ok: a
/// line saying so; Err: a line saying precisely what is wrong. Reads only (the agent migrates at start).
pub async fn check_database(cfg: &FleetConfig) -> Result<String, String> {
    let db = database(cfg).await.map_err(|e| e.to_string())?;
    let at = db.location();
    let client = match tokio::time::timeout(Duration::from_secs(10), db.connect()).await {
        Err(_) => return Err(format!("fleet.database_url: cannot connect to {at}: no answer within 10 s")),
        Ok(Err(e)) => return Err(format!("fleet.database_url: cannot connect to {at}: {}", chain(&e))),
        Ok(Ok(c)) => c,
    };
    let found = meterd_fleet::migrate::schema_version(&client)
        .await
        .map_err(|e| format!("fleet.database_url: {at}: cannot read the schema version: {}", chain(&e)))?;
    let known = meterd_fleet::migrate::current();
    match found {
        v if v == known => Ok(format!("{at} reachable; schema at version {v} (this meterd's)")),
        0 => Err(format!(
            "{at} is reachable but not migrated (no meterd schema): an agent applies the migrations when it starts              (its database user needs CREATE on the database)"
        )),
        v if v < known => Err(format!(
            "{at} is reachable but its schema is at version {v}, this meterd needs {known}: an agent of this              version applies the missing migrations when it starts"
        )),
        v => Err(format!(
            "{at}: the schema is at version {v}, newer than this meterd knows ({known}): upgrade this agent"
        )),
    }
}

/// The fleet's tasks: the forwarder and one lease campaign per account.
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    /// The fleet-wide customer registry (the customer service writes through it).
    pub registry: Arc<registry::FleetRegistry>,
    /// This agent's start-up checks of deployment-mode products (for status and metrics).
    pub deployment: Arc<crate::submit::register::DeploymentChecks>,
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
    let registry = Arc::new(registry::FleetRegistry::new(node.clone(), store.clone()));
    // Serve with the fleet's registry copied in (a spool that was down missed events); the loop retries.
    if let Err(e) = registry.catch_up().await {
        tracing::warn!(error = %e, "customer registry: not caught up with the fleet's yet");
    }
    tasks.spawn(registry::run(registry.clone(), stop_rx.clone()));
    let mut stats = Vec::new();
    let deployment = Arc::new(crate::submit::register::DeploymentChecks::default());
    for account in config.accounts.keys() {
        let queue =
            Arc::new(leader::FleetQueue::new(node.clone(), store.clone(), registry.clone(), Default::default()));
        let submitter =
            crate::submit::Submitter::new(account, config.clone(), queue.clone(), clock.clone(), metrics.clone())
                .await?;
        stats.push((account.clone(), submitter.stats.clone()));
        // Every agent, not only the submitting one: RegisterUsage is each container's own call at launch, and a
        // DryRun proves this host's credentials, permission and entitlement before it may have to submit.
        if !crate::submit::register::deployment_products(&config, account).is_empty() {
            tasks.spawn(crate::submit::register::run(
                submitter.client(),
                config.clone(),
                account.clone(),
                clock.clone(),
                deployment.clone(),
                stop_rx.clone(),
            ));
        }
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
    Ok((Running { stop, tasks, registry, deployment }, stats))
}
