//! `Admin.Status` in fleet mode: the queue is the shared ledger's (what the fleet still has to send, whichever
//! agent submits it), and the fleet itself — every node's heartbeat, watermark and forward lag, and who holds
//! each account's submitter lease — is listed. The queue figures, revenue lost, open buckets, events stored and
//! late events are the fleet's kept totals (`meterd_fleet::totals`: a row per product, node and held tenant, and
//! one entry of the pending index, read in one snapshot), so a call reads a few rows whatever the ledger holds,
//! as the sled store's status does. The disk figures stay this agent's (its spool); `fleet.nodes` lists each
//! node.

use std::sync::Arc;
use std::time::Duration;

use meterd_proto::v1;

use super::Node;
use crate::clock::UnixMillis;
use crate::config::Config;
use crate::config::fleet::Ack;
use crate::server::convert::timestamp;
use crate::store::Store;

/// How long status waits for the database before answering with this agent's part only.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Replaces the local spool's queue figures in `status` by the shared ledger's and adds the fleet. When the
/// database cannot be read, the queue figures are zero and `fleet.database_error` says why.
pub async fn fill(
    node: &Arc<Node>,
    store: &Store,
    config: &Config,
    now_ms: UnixMillis,
    send_rate: f64,
    status: &mut v1::StatusResponse,
) {
    let depth = store.outbox_depth().unwrap_or_default();
    let mut fleet = v1::FleetStatus {
        node_id: node.me.node_id.clone(),
        spool_events: depth.entries,
        spool_oldest_age_seconds: depth.oldest_received_ms.map_or(0, |t| (now_ms - t).max(0) / 1000),
        ack: match node.config.ack {
            Ack::Local => "local",
            Ack::Shared => "shared",
        }
        .to_string(),
        ..Default::default()
    };
    status.pending_records = 0;
    status.pending_in_flight = 0;
    status.pending_units = 0;
    status.records_at_risk = 0;
    status.units_at_risk = 0;
    status.oldest_pending_age_seconds = 0;
    status.most_urgent_deadline = None;
    status.sealed_through = None;
    status.projected_drain_seconds = 0;
    status.open_buckets = 0;
    status.records_lost = 0;
    status.units_lost = 0;
    status.events_stored = 0;
    status.late_events = 0;
    status.usage_drops.clear();
    let read = read(node, config, now_ms, depth.entries, status, &mut fleet);
    match tokio::time::timeout(TIMEOUT, read).await {
        Ok(Ok(())) => {
            status.projected_drain_seconds = crate::domain::backlog::Backlog::drain_seconds(
                status.pending_records,
                crate::submit::MAX_RECORDS_PER_CALL,
                send_rate,
            )
            .unwrap_or(0);
        }
        Ok(Err(e)) => fleet.database_error = e,
        Err(_) => fleet.database_error = format!("fleet database: no answer within {} s", TIMEOUT.as_secs()),
    }
    status.fleet = Some(fleet);
}

async fn read(
    node: &Node,
    config: &Config,
    now_ms: UnixMillis,
    my_spool: u64,
    status: &mut v1::StatusResponse,
    fleet: &mut v1::FleetStatus,
) -> Result<(), String> {
    let e = |e: &(dyn std::error::Error + 'static)| super::describe(&super::chain(e));
    let mut client = node.db.connect().await.map_err(|x| e(&x))?;
    let t = {
        let snapshot = meterd_fleet::report::snapshot(&mut client).await.map_err(|x| e(&x))?;
        let t = meterd_fleet::totals::kept(&snapshot).await.map_err(|x| e(&x))?;
        snapshot.commit().await.map_err(|x| e(&x))?;
        t
    };
    let backlog = crate::domain::backlog::Backlog {
        pending: t.records,
        at_risk: t.at_risk_records,
        oldest_pending_hour_ms: t.first_hour_ms,
        most_urgent_deadline_ms: t.first_deadline_ms,
    };
    status.pending_records = t.records;
    status.pending_in_flight = t.in_flight;
    status.pending_units = t.units;
    status.oldest_pending_age_seconds = backlog.oldest_pending_age_seconds(now_ms);
    status.most_urgent_deadline = t.first_deadline_ms.map(timestamp);
    // At risk by the fleet's mappings (the sled store's rule: held, and the tenant unmapped now).
    status.records_at_risk = t.at_risk_records;
    status.units_at_risk = t.at_risk_units;
    status.records_lost = t.lost_records;
    status.units_lost = t.lost_units;
    status.open_buckets = t.open_buckets;
    status.events_stored = t.events_stored;
    status.late_events = t.late_events;
    // Every hour before the earliest mark of the configured products is sealed fleet-wide.
    let mut sealed: Option<Option<UnixMillis>> = None;
    for product in config.products.keys() {
        let m = meterd_fleet::views::sealed_through(&client, product).await.map_err(|x| e(&x))?;
        sealed = Some(match sealed {
            None => m,
            Some(s) => s.min(m),
        });
    }
    status.sealed_through = sealed.flatten().map(timestamp);
    fleet.conflicts = meterd_fleet::report::conflict_count(&client).await.map_err(|x| e(&x))?;
    let watermarks = meterd_fleet::views::watermarks(&client).await.map_err(|x| e(&x))?;
    let down_after_ms = node.config.down_after.as_millis() as i64;
    for n in meterd_fleet::nodes::list(&client).await.map_err(|x| e(&x))? {
        let w = watermarks.iter().find(|(id, _, _)| *id == n.node_id);
        let me = n.node_id == node.me.node_id;
        fleet.nodes.push(v1::FleetNode {
            last_heartbeat: Some(timestamp(now_ms - n.heartbeat_age_ms.max(0))),
            live: n.heartbeat_age_ms < down_after_ms,
            watermark: w.map(|w| timestamp(w.1)),
            forward_lag_seconds: w.map_or(0, |w| (now_ms - w.1).max(0) / 1000),
            events_forwarded: w.map_or(0, |w| w.2.max(0) as u64),
            spool_events: me.then_some(my_spool),
            node_id: n.node_id,
            version: n.version,
        });
    }
    for (account, node_id, epoch, left_ms) in meterd_fleet::lease::holders(&client).await.map_err(|x| e(&x))? {
        fleet.submitters.push(v1::FleetSubmitter {
            account,
            node_id,
            epoch,
            lease_expires: Some(timestamp(now_ms + left_ms)),
        });
    }
    // The fleet's usage drops (this agent's spool holds no usage to compare).
    let drops =
        super::hours::last_ended_hour(client, crate::silence::settings(config), now_ms).await.map_err(|x| e(&x))?;
    status.usage_drops = drops.iter().map(crate::server::convert::drop_to_wire).collect();
    Ok(())
}

fn rfc(t: &Option<meterd_proto::Timestamp>) -> String {
    t.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000 + i64::from(t.nanos / 1_000_000))).unwrap_or_default()
}

/// The fleet part of `meterd status` (text).
pub fn text(f: &v1::FleetStatus) -> String {
    let mut out = format!(
        "  fleet          node {} (ack = {}), spool {} event(s), oldest {} s; {} conflict(s) recorded\n",
        f.node_id, f.ack, f.spool_events, f.spool_oldest_age_seconds, f.conflicts
    );
    if !f.database_error.is_empty() {
        out.push_str(&format!("  FLEET DATABASE {} (queue figures above are not the fleet's)\n", f.database_error));
    }
    for n in &f.nodes {
        out.push_str(&format!(
            "  node {}: {}, heartbeat {}, watermark {}, forward lag {} s, forwarded {}{} (v{})\n",
            n.node_id,
            if n.live { "live" } else { "DOWN" },
            rfc(&n.last_heartbeat),
            if n.watermark.is_some() { rfc(&n.watermark) } else { "none yet".into() },
            n.forward_lag_seconds,
            n.events_forwarded,
            n.spool_events.map(|s| format!(", spool {s}")).unwrap_or_default(),
            n.version
        ));
    }
    for s in &f.submitters {
        out.push_str(&format!(
            "  submitter {}: node {} (lease epoch {}, until {})\n",
            s.account,
            s.node_id,
            s.epoch,
            rfc(&s.lease_expires)
        ));
    }
    out
}

/// The fleet part of `meterd status --json` and the dashboard's status.
pub fn json(f: &v1::FleetStatus) -> serde_json::Value {
    serde_json::json!({
        "node_id": f.node_id,
        "ack": f.ack,
        "spool_events": f.spool_events,
        "spool_oldest_age_seconds": f.spool_oldest_age_seconds,
        "database_error": (!f.database_error.is_empty()).then_some(&f.database_error),
        "conflicts": f.conflicts,
        "nodes": f.nodes.iter().map(|n| serde_json::json!({
            "node_id": n.node_id,
            "version": n.version,
            "last_heartbeat": rfc(&n.last_heartbeat),
            "live": n.live,
            "watermark": n.watermark.is_some().then(|| rfc(&n.watermark)),
            "forward_lag_seconds": n.forward_lag_seconds,
            "events_forwarded": n.events_forwarded,
            "spool_events": n.spool_events,
        })).collect::<Vec<_>>(),
        "submitters": f.submitters.iter().map(|s| serde_json::json!({
            "account": s.account,
            "node_id": s.node_id,
            "epoch": s.epoch,
            "lease_expires": rfc(&s.lease_expires),
        })).collect::<Vec<_>>(),
    })
}
