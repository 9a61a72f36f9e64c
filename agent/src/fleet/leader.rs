//! One submitter per AWS account, fleet-wide: the agent holding the account's lease in PostgreSQL seals the
//! shared ledger and submits its records with the ordinary [`Submitter`], over a [`FleetQueue`] whose every
//! write is fenced by the lease epoch. When the holder dies its lease expires (`Terms::ttl`) and another agent
//! takes over; its first pass resends the records left InFlight at once, unchanged (content is frozen at seal).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use meterd_fleet::lease::{self, Lease, LeaseError, Terms};
use meterd_fleet::seal::{self, SealError, SealRules};
use tokio::sync::watch;

use super::Node;
use crate::clock::{HOUR_MS, SharedClock, UnixMillis, hour_start};
use crate::config::Config;
use crate::domain::customer::TenantMapping;
use crate::domain::event::Identity;
use crate::domain::record::SealedRecord;
use crate::store::seam::BoxFuture;
use crate::store::{Store, StoreError};
use crate::submit::{Queue, Submitter};

fn unavailable(e: impl std::error::Error + 'static) -> StoreError {
    StoreError::Io(super::describe(&super::chain(&e)))
}

/// The shared ledger's records, as a submitter's queue, under this node's lease of the account.
pub struct FleetQueue {
    node: Arc<Node>,
    client: tokio::sync::Mutex<Option<meterd_fleet::Client>>,
    lease: Mutex<Option<(Lease, Instant)>>,
    terms: Terms,
    /// This agent's copy of the fleet-wide registry (held records go out as their tenant's mapping).
    local: Store,
    /// The fleet-wide registry, where AWS's CustomerNotSubscribed answers are kept.
    registry: Arc<super::registry::FleetRegistry>,
}

impl FleetQueue {
    pub fn new(node: Arc<Node>, local: Store, registry: Arc<super::registry::FleetRegistry>, terms: Terms) -> Self {
        FleetQueue { node, client: Default::default(), lease: Mutex::new(None), terms, local, registry }
    }

    fn lease(&self) -> Option<Lease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(l, _)| l.clone())
    }

    fn set_lease(&self, lease: Option<Lease>) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease.map(|l| (l, Instant::now()));
    }

    /// A connection, opened when there is none.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<meterd_fleet::Client>>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.node.db.connect().await.map_err(unavailable)?);
        }
        Ok(guard)
    }

    /// Renews the held lease when a third of its term has passed, inside a long pass (many calls, paced): the
    /// pass keeps the lease instead of losing it to a follower midway and flapping.
    async fn renew_if_due(&self, client: &meterd_fleet::Client) -> Result<(), StoreError> {
        let held = self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((mut l, renewed)) = held
            && renewed.elapsed() >= self.terms.ttl / 3
        {
            match lease::renew(client, &mut l, self.terms).await {
                Ok(()) => self.set_lease(Some(l)),
                Err(e) => {
                    self.set_lease(None);
                    return Err(unavailable(e));
                }
            }
        }
        Ok(())
    }

    /// Holds (acquires or renews) the lease. Some(true) when it was just acquired (a takeover or a start).
    async fn hold(&self, account: &str) -> Result<Option<bool>, StoreError> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let held = self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let result = match held {
            Some((mut l, renewed)) if l.is_valid(Instant::now()) => {
                // Renewed at a third of its term: a pass between two ticks keeps it well inside the window.
                if renewed.elapsed() < self.terms.ttl / 3 {
                    return Ok(Some(false));
                }
                match lease::renew(client, &mut l, self.terms).await {
                    Ok(()) => {
                        self.set_lease(Some(l));
                        Ok(Some(false))
                    }
                    Err(LeaseError::Fenced { .. }) => {
                        self.set_lease(None);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            _ => match lease::acquire(client, account, &self.node.me, self.terms).await {
                Ok(Some(l)) => {
                    self.set_lease(Some(l));
                    Ok(Some(true))
                }
                Ok(None) => {
                    self.set_lease(None);
                    Ok(None)
                }
                Err(e) => Err(e),
            },
        };
        result.map_err(|e| {
            *guard = None;
            self.set_lease(None);
            unavailable(e)
        })
    }

    /// Seals the account's hours before `cutoff`, or before a flush's request (`meterd flush` on any agent,
    /// [`meterd_fleet::seal_requests`]) when that reaches further — never past the current hour's start.
    async fn seal(
        &self,
        account: &str,
        products: &[String],
        cutoff: UnixMillis,
        now_ms: UnixMillis,
        config: &Config,
    ) -> Result<(), StoreError> {
        let Some(lease) = self.lease() else { return Ok(()) };
        let rules = SealRules { down_after: self.node.config.down_after, max_wait: self.node.config.max_wait };
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let requested = match meterd_fleet::seal_requests::requested(client, account).await {
            Ok(r) => r,
            Err(e) => {
                *guard = None;
                return Err(unavailable(e));
            }
        };
        let policy = config.seal_policy();
        // Customers that left (a lifecycle event posted to any agent): their final hour goes out now.
        match meterd_fleet::registry::seal_leaving(client, &lease, products, &policy.params(0, cutoff)).await {
            Ok(s) if s.records > 0 => {
                tracing::info!(records = s.records, "sealed the final hour of customers that stopped accepting usage");
            }
            Ok(_) => {}
            Err(e) => return Err(self.failed(&mut guard, e)),
        }
        let cutoff = requested.map_or(cutoff, |r| cutoff.max(r.min(hour_start(now_ms))));
        match seal::seal(client, &lease, products, cutoff, &policy, rules).await {
            Ok(s) => {
                if let (Some(r), Some(through)) = (requested, s.sealed_through)
                    && through >= r
                    && let Err(e) = meterd_fleet::seal_requests::done(client, account, through).await
                {
                    tracing::warn!(%account, error = %e, "could not clear a satisfied seal request; cleared next tick");
                }
                if s.records + s.carried_only > 0 {
                    tracing::info!(records = s.records, carried_only = s.carried_only,
                        sealed_through = %s.sealed_through.map(crate::clock::rfc3339).unwrap_or_default(),
                        "sealed ended hours of the shared ledger");
                }
                for w in &s.waiting_for {
                    tracing::debug!(node = %w.node_id, watermark = ?w.watermark_ms, "seal waits for a node's forward");
                }
                Ok(())
            }
            Err(e) => Err(self.failed(&mut guard, e)),
        }
    }

    /// The shared ledger's retention pass (`meterd_fleet::retention`), run by the lease holder about once an
    /// hour: terminal records of the account's products whose hour is before `cutoff` leave in fenced batches, and
    /// the day partitions of event keys older than `dedupe_window` are dropped, both folded into the kept totals.
    async fn retention(
        &self,
        products: &[String],
        cutoff: UnixMillis,
        dedupe_window: std::time::Duration,
    ) -> Result<(), StoreError> {
        let Some(lease) = self.lease() else { return Ok(()) };
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let removed = match meterd_fleet::retention::compact_records(client, &lease, products, cutoff).await {
            Ok(c) => c,
            Err(e) => return Err(self.failed(&mut guard, e)),
        };
        let dropped = match meterd_fleet::partitions::drop_expired(client, dedupe_window).await {
            Ok(d) => d,
            Err(e) => {
                *guard = None;
                return Err(unavailable(e));
            }
        };
        if removed.records > 0 || !dropped.days.is_empty() {
            tracing::info!(records = removed.records, days = ?dropped.days, events = dropped.events,
                conflicts = dropped.conflicts, "retention compacted the shared ledger's old history");
        }
        Ok(())
    }

    fn failed(&self, guard: &mut Option<meterd_fleet::Client>, e: SealError) -> StoreError {
        match e {
            SealError::Fenced(e) => {
                self.set_lease(None);
                unavailable(e)
            }
            SealError::Db(e) => {
                *guard = None;
                unavailable(e)
            }
            SealError::Refused(e) => StoreError::Corrupt(e.to_string()),
            other => unavailable(other),
        }
    }
}

impl Queue for FleetQueue {
    fn pending_records(&self, limit: usize) -> BoxFuture<'_, Result<Vec<SealedRecord>, StoreError>> {
        Box::pin(async move {
            if self.lease().is_none() {
                return Ok(Vec::new());
            }
            let mut guard = self.client().await?;
            let client = guard.as_mut().expect("connected");
            match seal::pending_records(client, limit as i64).await {
                Ok(r) => Ok(r),
                Err(e) => Err(self.failed(&mut guard, e)),
            }
        })
    }

    fn update_records(&self, records: Vec<SealedRecord>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            let lease =
                self.lease().ok_or_else(|| StoreError::Io("this agent no longer holds the submitter lease".into()))?;
            let mut guard = self.client().await?;
            let client = guard.as_mut().expect("connected");
            self.renew_if_due(client).await?;
            // The renewal may have moved the lease's term, not its epoch: the fence checks the epoch.
            let lease = self.lease().unwrap_or(lease);
            match seal::update_records(client, &lease, &records).await {
                Ok(()) => Ok(()),
                Err(e) => Err(self.failed(&mut guard, e)),
            }
        })
    }

    fn mapping(&self, tenant_id: &str) -> Result<Option<TenantMapping>, StoreError> {
        self.local.mapping(tenant_id)
    }

    fn note_not_subscribed(&self, identity: Identity, at_ms: UnixMillis) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.registry.note_not_subscribed(identity, at_ms))
    }
}

/// Campaigns for `account`'s lease every tick; while holding it, seals the shared ledger's ended hours and
/// submits. Resigns at shutdown so a follower need not wait for the lease to expire.
pub async fn run(
    account: String,
    node: Arc<Node>,
    queue: Arc<FleetQueue>,
    mut submitter: Submitter,
    config: Arc<Config>,
    clock: SharedClock,
    mut stop: watch::Receiver<bool>,
) {
    let products: Vec<String> =
        config.products.keys().filter(|p| config.account_of(p) == Some(account.as_str())).cloned().collect();
    submitter.stop_on(stop.clone());
    // Consecutive failures to reach the database: the campaign backs off (1 s … 10 s) instead of logging a
    // warning every tick through an outage.
    let mut failures: u32 = 0;
    // When this agent last ran the retention pass (its clock): hourly while it holds the lease, as a single
    // agent compacts its own store (`pipeline.rs`).
    let mut last_retention: Option<UnixMillis> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        match queue.hold(&account).await {
            Ok(Some(acquired)) => {
                failures = 0;
                if acquired {
                    let epoch = queue.lease().map(|l| l.epoch);
                    tracing::info!(%account, ?epoch, "this agent now submits for the account (submitter lease)");
                    node.status.lead(&account, epoch);
                    submitter.recover();
                }
                let grace = config.pipeline.seal_grace.as_millis() as i64;
                let now = clock.now_ms();
                let cutoff = hour_start(now - grace - HOUR_MS) + HOUR_MS;
                if let Err(e) = queue.seal(&account, &products, cutoff, now, &config).await {
                    tracing::warn!(%account, error = %e, "fleet seal failed; will retry");
                }
                if queue.lease().is_some()
                    && let Err(e) = submitter.pass().await
                {
                    tracing::warn!(%account, error = %e, "fleet submitter pass failed; will retry");
                }
                if queue.lease().is_some() && last_retention.is_none_or(|t| now - t >= HOUR_MS) {
                    last_retention = Some(now);
                    let cutoff = now - config.storage.retention.as_millis() as i64;
                    if let Err(e) = queue.retention(&products, cutoff, config.storage.dedupe_window).await {
                        tracing::error!(%account, error = %e, "fleet retention failed; will retry in an hour");
                    }
                }
            }
            Ok(None) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(%account, error = %e, "submitter lease: fleet database unreachable; will retry")
            }
        }
        if queue.lease().is_none() {
            node.status.lead(&account, None);
        }
        let wait = if failures == 0 {
            config.pipeline.tick
        } else {
            std::time::Duration::from_millis((500u64 << failures.min(5)).min(10_000))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A flush on this agent: its seal request is read at once instead of at the next tick.
            _ = node.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(l) = queue.lease() {
        let guard = queue.client.lock().await;
        if let Some(c) = guard.as_ref() {
            let _ = lease::resign(c, &l).await;
        }
    }
}
