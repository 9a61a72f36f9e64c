//! `meterd flush` in fleet mode: forward this agent's spool now, then ask each account's submitter — the lease
//! holder, whichever agent that is — to seal every ended hour of the shared ledger, and wait (bounded) to see it.
//!
//! The agent never seals here itself: sealing is only done by the lease holder, fenced by its epoch inside the
//! seal's transaction, so a flush on any agent cannot make a second sealer. The request is a row in PostgreSQL
//! ([`meterd_fleet::seal_requests`]), read by the holder at its next tick (at once when the holder is this agent),
//! and honoured by the next holder after a takeover.

use std::sync::Arc;
use std::time::Duration;

use meterd_fleet::seal_requests;

use super::Node;
use crate::clock::{SharedClock, UnixMillis, hour_start};
use crate::config::Config;
use crate::store::{Store, StoreError};

/// How long a flush waits for the holder's seal before answering with what it saw (and who it waits for).
pub const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetFlush {
    pub forwarded: u64,
    /// Records of the hours sealed while the flush waited (to submit, and fraction-only).
    pub records: u64,
    pub carried_only: u64,
    /// Every hour before this is sealed fleet-wide for all the accounts' products (None: nothing yet).
    pub sealed_through: Option<UnixMillis>,
    /// Live nodes whose watermark is short of the flush's cutoff, when the wait ended before the seal.
    pub waiting_for: Vec<String>,
}

fn unavailable(e: impl std::error::Error + 'static) -> StoreError {
    StoreError::Io(super::describe(&super::chain(&e)))
}

/// How long the forward of the spool and the database's answers may take on top of `wait` (a database that
/// stopped answering fails the flush with UNAVAILABLE instead of holding the call).
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(30);

/// Forwards the spool, requests the seal of every hour before the current one, waits up to `wait`.
pub async fn flush(
    node: &Arc<Node>,
    store: &Store,
    clock: &SharedClock,
    config: &Config,
    wait: Duration,
) -> Result<FleetFlush, StoreError> {
    match tokio::time::timeout(wait + DATABASE_TIMEOUT, flush_within(node, store, clock, config, wait)).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Io(format!(
            "fleet database: the flush got no answer within {} s",
            (wait + DATABASE_TIMEOUT).as_secs()
        ))),
    }
}

async fn flush_within(
    node: &Arc<Node>,
    store: &Store,
    clock: &SharedClock,
    config: &Config,
    wait: Duration,
) -> Result<FleetFlush, StoreError> {
    let mut client = node.db.connect().await.map_err(unavailable)?;
    let mut out = FleetFlush::default();
    // The spool first: what this agent acknowledged must be in the shared ledger before its hours are sealed.
    loop {
        let sent = super::forwarder::forward_page(node, store, clock, &mut client)
            .await
            .map_err(|e| StoreError::Io(super::describe(&super::chain(&e))))?;
        out.forwarded += sent as u64;
        if sent < node.config.forward_batch {
            break;
        }
    }
    let cutoff = hour_start(clock.now_ms());
    let mut accounts = Vec::new();
    let mut products = Vec::new();
    for account in config.accounts.keys() {
        let mine: Vec<String> =
            config.products.keys().filter(|p| config.account_of(p) == Some(account.as_str())).cloned().collect();
        if !mine.is_empty() {
            accounts.push(account);
            products.extend(mine);
        }
    }
    // The marks before the request: the holder may seal as soon as it sees it.
    let before = marks(&client, &products).await?;
    for account in accounts {
        seal_requests::request(&client, account, cutoff, &node.me.node_id).await.map_err(unavailable)?;
    }
    node.wake.notify_waiters();
    let deadline = tokio::time::Instant::now() + wait;
    let mut after = before.clone();
    loop {
        if after.iter().all(|m| m.is_some_and(|m| m >= cutoff)) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = marks(&client, &products).await?;
    }
    for ((product, from), to) in products.iter().zip(&before).zip(&after) {
        if let Some(to) = to {
            let (records, carried) = seal_requests::sealed_between(&client, product, from.unwrap_or(i64::MIN), *to)
                .await
                .map_err(unavailable)?;
            out.records += records;
            out.carried_only += carried;
        }
    }
    out.sealed_through = after.iter().copied().min().flatten();
    if !after.iter().all(|m| m.is_some_and(|m| m >= cutoff)) {
        out.waiting_for = seal_requests::lagging(&client, cutoff, node.config.down_after).await.map_err(unavailable)?;
    }
    Ok(out)
}

async fn marks(client: &meterd_fleet::Client, products: &[String]) -> Result<Vec<Option<UnixMillis>>, StoreError> {
    let mut out = Vec::with_capacity(products.len());
    for p in products {
        out.push(meterd_fleet::views::sealed_through(client, p).await.map_err(unavailable)?);
    }
    Ok(out)
}
