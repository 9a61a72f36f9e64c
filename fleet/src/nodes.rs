//! The node registry: every agent of the fleet, under a unique `node_id`.
//!
//! A node registers at start with a fresh incarnation (a random UUID) and then heartbeats. Registering an id whose
//! row has a recent heartbeat from another incarnation is refused: two processes with one id would each believe
//! they own that node's spool and watermark. An id whose heartbeat is older than `stale_after` is free again (its
//! process is gone), so a node that restarts — or is replaced after its host died — takes its id back.

use std::time::Duration;

use tokio_postgres::Client;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "fleet.node_id {node_id:?} is held by another live agent (its last heartbeat was {age_ms} ms ago): give \
         each agent its own node_id"
    )]
    InUse { node_id: String, age_ms: i64 },
    #[error(
        "fleet.node_id {node_id:?} was taken over by another agent (incarnation changed): this agent must stop \
         acting as that node"
    )]
    Replaced { node_id: String },
    #[error("fleet database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// This process's claim on a node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub node_id: String,
    pub incarnation: Uuid,
}

/// A row of the registry, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: String,
    pub incarnation: Uuid,
    pub version: String,
    /// Milliseconds since the last heartbeat, by the database's clock.
    pub heartbeat_age_ms: i64,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Claims `node_id` for a new incarnation of this process.
pub async fn register(
    client: &Client,
    node_id: &str,
    version: &str,
    stale_after: Duration,
) -> Result<Registration, NodeError> {
    let incarnation = Uuid::new_v4();
    // One statement: insert, or take the row over when its holder is silent; a live holder leaves it untouched.
    let taken = client
        .query_opt(
            "INSERT INTO meterd_nodes (node_id, incarnation, version) VALUES ($1, $2, $3)
             ON CONFLICT (node_id) DO UPDATE
                 SET incarnation = excluded.incarnation, started_at = now(), heartbeat_at = now(),
                     version = excluded.version
                 WHERE meterd_nodes.heartbeat_at < now() - make_interval(secs => $4::float8 / 1000.0)
             RETURNING node_id",
            &[&node_id, &incarnation, &version, &millis(stale_after)],
        )
        .await?;
    if taken.is_some() {
        return Ok(Registration { node_id: node_id.to_string(), incarnation });
    }
    let age_ms: f64 = client
        .query_one(
            "SELECT extract(epoch FROM now() - heartbeat_at)::float8 * 1000 FROM meterd_nodes WHERE node_id = $1",
            &[&node_id],
        )
        .await?
        .get(0);
    Err(NodeError::InUse { node_id: node_id.to_string(), age_ms: age_ms as i64 })
}

/// Records that this incarnation is alive. Fails with `Replaced` when another process has taken the id over
/// (this one was silent for longer than `stale_after`, e.g. paused).
pub async fn heartbeat(client: &Client, me: &Registration) -> Result<(), NodeError> {
    let n = client
        .execute(
            "UPDATE meterd_nodes SET heartbeat_at = now() WHERE node_id = $1 AND incarnation = $2",
            &[&me.node_id, &me.incarnation],
        )
        .await?;
    if n == 1 { Ok(()) } else { Err(NodeError::Replaced { node_id: me.node_id.clone() }) }
}

/// Every node, by id.
pub async fn list(client: &Client) -> Result<Vec<NodeRow>, NodeError> {
    let rows = client
        .query(
            "SELECT node_id, incarnation, version,
                    (extract(epoch FROM now() - heartbeat_at)::float8 * 1000)::bigint
             FROM meterd_nodes ORDER BY node_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| NodeRow { node_id: r.get(0), incarnation: r.get(1), version: r.get(2), heartbeat_age_ms: r.get(3) })
        .collect())
}

/// Marks `incarnation` of `node_id` as gone, so the id can be registered again at once. For a process that KNOWS
/// the previous incarnation is dead: the agent keeps its incarnation in its data dir, which only one process can
/// open, so after a crash-restart the new process takes its own id back without waiting `stale_after`. A row
/// held by any other incarnation is left untouched.
pub async fn release(client: &Client, node_id: &str, incarnation: Uuid) -> Result<bool, NodeError> {
    let n = client
        .execute(
            "UPDATE meterd_nodes SET heartbeat_at = 'epoch'::timestamptz WHERE node_id = $1 AND incarnation = $2",
            &[&node_id, &incarnation],
        )
        .await?;
    Ok(n == 1)
}
