//! The forwarder: ships the spool's outbox to the shared ledger, oldest first, in pages of
//! `fleet.forward_batch`, each in one PostgreSQL transaction ([`meterd_fleet::forward::forward`]); marks a page
//! forwarded only after its commit; moves the node's watermark and heartbeats. While PostgreSQL is unreachable the agent
//! goes on acknowledging into the spool, and the forwarder retries with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meterd_fleet::forward::{Acked, ForwardError, forward};
use meterd_fleet::nodes::{self, NodeError};
use tokio::sync::watch;

use super::Node;
use crate::clock::{SharedClock, UnixMillis};
use crate::store::outbox::{Page, Reorder};
use crate::store::{Store, StoreError};

/// How far the outbox's order (the order of writes) may stray from the order of the stamps it holds, for entries
/// an earlier process wrote (this process measures its own: [`Reorder`]). Used only when a page was full. An
/// event slower than this is not lost: it is counted late, in the open hour.
pub const REORDER_MARGIN_MS: i64 = 60_000;

/// A wall clock stepped back (NTP) can stamp a call below a low water already read; the watermark stays this far
/// behind it. A call stamped further back than this counts late, not lost.
pub const CLOCK_STEP_MARGIN_MS: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// The watermark after forwarding a page read just after the stamps' low water was `low_water_ms`
/// ([`crate::store::stamps`]), with the spool's reorder depth read just after the page: everything acknowledged
/// before it is forwarded.
///
/// A call not written yet holds a stamp at or above the low water. A page that was not full held every entry the
/// outbox had, so the low water (less a clock step) is the claim. A full page leaves entries waiting, written
/// after its last one (`last`: sequence, stamp) and so stamped at least that stamp less the reorder depth, when
/// this process wrote them all; entries an earlier process wrote get the fixed [`REORDER_MARGIN_MS`].
pub fn watermark_after(
    low_water_ms: UnixMillis,
    page_full: bool,
    last: Option<(u64, UnixMillis)>,
    reorder: Option<Reorder>,
) -> UnixMillis {
    let drained = low_water_ms - CLOCK_STEP_MARGIN_MS;
    match (page_full, last) {
        (true, Some((seq, last_ms))) => match reorder {
            Some(r) if seq >= r.first_seq => drained.min(last_ms - r.depth_ms),
            _ => last_ms.min(low_water_ms) - REORDER_MARGIN_MS,
        },
        _ => drained,
    }
}

/// The outbox's oldest `batch` entries and the watermark they let the node claim once forwarded.
pub fn next_page(store: &Store, clock: &SharedClock, batch: usize) -> Result<(Page, UnixMillis), StoreError> {
    // Read before the page: a call stamped below it was written before the read.
    let low_water_ms = store.stamps().low_water(clock);
    let page = store.outbox_page(batch)?;
    // Read after the page: it covers every entry the page read could see.
    let reorder = store.outbox_reorder();
    let full = page.entries.len() >= batch;
    let last = page.entries.last().map(|(seq, e)| (*seq, e.received_ms));
    Ok((page, watermark_after(low_water_ms, full, last, reorder)))
}

/// How long a stopping agent keeps forwarding its spool (its listeners are closed: nothing new arrives). A
/// Deployment's pod on an ephemeral disk loses what is left after this (see docs/fleet.md, failures).
pub const DRAIN_AT_STOP: Duration = Duration::from_secs(20);

pub async fn run(node: Arc<Node>, store: Store, clock: SharedClock, stop: watch::Receiver<bool>) {
    let mut client = None;
    forward_until(&node, &store, &clock, &mut client, stop).await;
    // Stopping: ship what is left, for a bounded time.
    let drained = tokio::time::timeout(DRAIN_AT_STOP, async {
        loop {
            if client.is_none() {
                client = Some(node.db.connect().await.map_err(|e| super::chain(&e))?);
            }
            match step(&node, &store, &clock, client.as_mut().expect("connected")).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return Err(super::chain(&e)),
            }
        }
    })
    .await;
    match drained {
        Ok(Ok(())) => tracing::info!("spool forwarded before stopping"),
        Ok(Err(e)) => tracing::warn!(error = %e, "stopping with events still in the spool; forwarded at next start"),
        Err(_) => tracing::warn!(?DRAIN_AT_STOP, "stopping with events still in the spool; forwarded at next start"),
    }
}

async fn forward_until(
    node: &Node,
    store: &Store,
    clock: &SharedClock,
    client: &mut Option<meterd_fleet::Client>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut more = false;
        if client.is_none() {
            match node.db.connect().await {
                Ok(c) => *client = Some(c),
                Err(e) => {
                    node.status.failed(&super::chain(&e));
                    failures += 1;
                }
            }
        }
        if let Some(c) = client.as_mut() {
            match step(node, store, clock, c).await {
                Ok(full) => {
                    failures = 0;
                    more = full;
                }
                Err(StepError::Node(NodeError::Replaced { node_id })) => {
                    tracing::error!(%node_id, "another agent took this node id over: this agent stops forwarding; \
                        its spool is kept (restart it with its own fleet.node_id to forward it)");
                    node.status.failed("node id taken over by another agent");
                    return;
                }
                Err(e) => {
                    let e = super::chain(&e);
                    tracing::warn!(error = %e, "forwarding to the fleet database failed; the spool keeps \
                        acknowledged events and the forward is retried");
                    node.status.failed(&e.to_string());
                    *client = None;
                    failures += 1;
                }
            }
        }
        let wait = if more {
            Duration::ZERO
        } else if failures > 0 {
            // 1 s, 2 s, 4 s … at most 10 s: a restarted PostgreSQL is found again within seconds.
            Duration::from_millis((500u64 << failures.min(5)).min(10_000))
        } else {
            node.config.forward_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One page: heartbeat, forward, remove. Ok(true) when the page was full (more is waiting).
pub(crate) async fn step(
    node: &Node,
    store: &Store,
    clock: &SharedClock,
    client: &mut meterd_fleet::Client,
) -> Result<bool, StepError> {
    Ok(forward_page(node, store, clock, client).await? >= node.config.forward_batch)
}

/// [`step`], answering how many events the page held.
pub(crate) async fn forward_page(
    node: &Node,
    store: &Store,
    clock: &SharedClock,
    client: &mut meterd_fleet::Client,
) -> Result<usize, StepError> {
    let _one_at_a_time = node.forwarding.lock().await;
    nodes::heartbeat(client, &node.me).await?;
    let (page, watermark) = next_page(store, clock, node.config.forward_batch)?;
    let events = page.entries.len();
    // Moved, not copied: the page is only its blocks' sequences once read.
    let acked: Vec<Acked> = page
        .entries
        .into_iter()
        .map(|(_, e)| {
            let received_ms = e.received_ms;
            Acked { event: e.into_event(), received_ms }
        })
        .collect();
    let done = forward(client, &node.me.node_id, &acked, watermark).await?;
    // Only now is the page in the shared ledger: a crash before this line resends it, and it replays.
    store.outbox_remove(&page.blocks)?;
    for c in &done.conflicts {
        tracing::warn!(key = %c.idempotency_key, counted_by = %c.existing_node_id,
            "an event reused an idempotency key with other content on another agent: recorded as a conflict in \
             the shared ledger (meterd_conflicts), not counted");
    }
    let s = &node.status;
    s.forwarded.fetch_add(done.stored, Ordering::Relaxed);
    s.replayed.fetch_add(done.replayed, Ordering::Relaxed);
    s.conflicts.fetch_add(done.conflicts.len() as u64, Ordering::Relaxed);
    s.late.fetch_add(done.late, Ordering::Relaxed);
    s.watermark_ms.fetch_max(watermark, Ordering::Relaxed);
    s.ok(clock.now_ms());
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_never_claims_what_may_still_be_written_or_waiting() {
        let mine = Some(Reorder { first_seq: 100, depth_ms: 2_500 });
        // Drained: the stamps' low water, less the clock-step margin.
        assert_eq!(watermark_after(1_000_000, false, Some((150, 900_000)), mine), 1_000_000 - CLOCK_STEP_MARGIN_MS);
        assert_eq!(watermark_after(1_000_000, false, None, None), 1_000_000 - CLOCK_STEP_MARGIN_MS);
        // A full page of this process's entries: no further than its last stamp less the measured reorder depth,
        // nor past the low water.
        assert_eq!(watermark_after(1_000_000, true, Some((150, 900_000)), mine), 900_000 - 2_500);
        assert_eq!(watermark_after(898_000, true, Some((150, 900_000)), mine), 898_000 - CLOCK_STEP_MARGIN_MS);
        // Entries an earlier process wrote (below first_seq), or no depth known: the fixed margin.
        assert_eq!(watermark_after(1_000_000, true, Some((99, 900_000)), mine), 900_000 - REORDER_MARGIN_MS);
        assert_eq!(watermark_after(800_000, true, Some((150, 900_000)), None), 800_000 - REORDER_MARGIN_MS);
    }
}
