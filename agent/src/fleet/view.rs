//! `GET /fleet` on the admin listener: this node's spool and forwarder, and the fleet as PostgreSQL sees it
//! (every node's heartbeat, watermark and forward lag, who submits for each account). JSON, for operators and
//! scripts; `status` and `report` over gRPC still show the local store (docs/fleet.md).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;

use super::Node;
use crate::clock::SharedClock;
use crate::store::Store;

#[derive(Clone)]
struct ViewState {
    node: Arc<Node>,
    store: Store,
    clock: SharedClock,
}

#[derive(Debug, Serialize)]
pub struct FleetView {
    pub node_id: String,
    /// This node: events acknowledged and not yet in the shared ledger, and the oldest one's age.
    pub spool_events: u64,
    pub spool_oldest_age_ms: Option<i64>,
    pub watermark_ms: i64,
    pub database_up: bool,
    pub last_error: Option<String>,
    /// The fleet, from PostgreSQL (absent when it cannot be reached: see `database_error`).
    pub nodes: Vec<NodeView>,
    pub submitters: Vec<SubmitterView>,
    pub event_keys: Option<i64>,
    pub conflicts: Option<usize>,
    pub database_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node_id: String,
    pub version: String,
    pub heartbeat_age_ms: i64,
    pub watermark_ms: Option<i64>,
    /// How far the node's watermark is behind this agent's clock.
    pub forward_lag_ms: Option<i64>,
    pub forwarded: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct SubmitterView {
    pub account: String,
    pub node_id: String,
    pub epoch: i64,
    /// Negative once expired (a follower takes it at its next campaign).
    pub lease_expires_in_ms: i64,
}

pub fn routes(node: Arc<Node>, store: Store, clock: SharedClock) -> axum::Router {
    axum::Router::new().route("/fleet", get(fleet)).with_state(ViewState { node, store, clock })
}

async fn fleet(State(s): State<ViewState>) -> (StatusCode, Json<FleetView>) {
    let now = s.clock.now_ms();
    let depth = s.store.outbox_depth().unwrap_or_default();
    let st = &s.node.status;
    let mut view = FleetView {
        node_id: s.node.me.node_id.clone(),
        spool_events: depth.entries,
        spool_oldest_age_ms: depth.oldest_received_ms.map(|t| (now - t).max(0)),
        watermark_ms: st.watermark_ms.load(Ordering::Relaxed),
        database_up: st.database_up.load(Ordering::Relaxed),
        last_error: st.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        nodes: Vec::new(),
        submitters: Vec::new(),
        event_keys: None,
        conflicts: None,
        database_error: None,
    };
    match tokio::time::timeout(Duration::from_secs(5), read_fleet(&s.node, now, &mut view)).await {
        Ok(Ok(())) => (StatusCode::OK, Json(view)),
        Ok(Err(e)) => {
            view.database_error = Some(e);
            (StatusCode::SERVICE_UNAVAILABLE, Json(view))
        }
        Err(_) => {
            view.database_error = Some("fleet database: no answer within 5 s".into());
            (StatusCode::SERVICE_UNAVAILABLE, Json(view))
        }
    }
}

async fn read_fleet(node: &Node, now: i64, view: &mut FleetView) -> Result<(), String> {
    let client = node.db.connect().await.map_err(|e| super::chain(&e))?;
    let watermarks = meterd_fleet::views::watermarks(&client).await.map_err(|e| super::chain(&e))?;
    for n in meterd_fleet::nodes::list(&client).await.map_err(|e| super::chain(&e))? {
        let w = watermarks.iter().find(|(id, _, _)| *id == n.node_id);
        view.nodes.push(NodeView {
            watermark_ms: w.map(|w| w.1),
            forward_lag_ms: w.map(|w| (now - w.1).max(0)),
            forwarded: w.map(|w| w.2),
            node_id: n.node_id,
            version: n.version,
            heartbeat_age_ms: n.heartbeat_age_ms,
        });
    }
    for (account, node_id, epoch, left) in meterd_fleet::lease::holders(&client).await.map_err(|e| super::chain(&e))? {
        view.submitters.push(SubmitterView { account, node_id, epoch, lease_expires_in_ms: left });
    }
    view.event_keys = Some(meterd_fleet::views::event_keys(&client).await.map_err(|e| super::chain(&e))?);
    view.conflicts = Some(meterd_fleet::views::conflicts(&client).await.map_err(|e| super::chain(&e))?.len());
    Ok(())
}
