//! The customer registry in fleet mode: mappings, lifecycle events, reinstatements and AWS's
//! CustomerNotSubscribed answers are written to PostgreSQL (`meterd_fleet::registry`, decided there by the same
//! domain rules), so one posted to any agent applies everywhere; every agent follows the registry's revisions
//! into its spool's copy ([`crate::store::mirror`]), which its ingest gate, `Customers.Get/List` and the
//! submitter's mapping of held records read.
//!
//! [`FleetLedger`] is the seam the customer registry (`crate::customers`) is given in fleet mode: its registry
//! writes go to PostgreSQL (then the copy catches up before the call returns, so the caller reads its own write);
//! everything else is the spool's.

use std::sync::Arc;
use std::time::Duration;

use meterd_fleet::registry::{self, Changes, RegistryError};
use tokio::sync::watch;

use super::Node;
use crate::clock::UnixMillis;
use crate::domain::customer::{CustomerLifecycle, StatusChange, TenantMapping};
use crate::domain::event::{Bucket, BucketKey, Identity, StoredEvent, UsageEvent};
use crate::domain::ingest::{CustomerRef, IngestOutcome, IngestRules};
use crate::domain::lifecycle::{LifecycleEvent, Subject};
use crate::domain::quantity::Micros;
use crate::domain::record::SealedRecord;
use crate::domain::seal::SealParams;
use crate::store::mirror::RegistryCopy;
use crate::store::seam::{BoxFuture, Ledger, Result};
use crate::store::{AmendOutcome, Compacted, LifecycleOutcome, Lost, SealSummary, Store, StoreError};

fn unavailable(e: RegistryError) -> StoreError {
    match e {
        // Refused input is the caller's (the agent validates first, so this is a bug's guard, not a path).
        RegistryError::Invalid { .. } => StoreError::Corrupt(e.to_string()),
        RegistryError::Corrupt(c) => StoreError::Corrupt(c.to_string()),
        other => StoreError::Io(super::describe(&super::chain(&other))),
    }
}

/// This agent's link to the fleet's registry: one connection for its writes and the revision its copy is at.
pub struct FleetRegistry {
    node: Arc<Node>,
    local: Store,
    client: tokio::sync::Mutex<Option<meterd_fleet::Client>>,
    /// The revision the spool's copy is at; guarded with the connection so two catch-ups never interleave.
    revision: tokio::sync::Mutex<i64>,
}

impl FleetRegistry {
    pub fn new(node: Arc<Node>, local: Store) -> Self {
        FleetRegistry { node, local, client: Default::default(), revision: tokio::sync::Mutex::new(0) }
    }

    /// Runs `f` on the connection (opened when there is none; dropped after a failure so the next call
    /// reconnects).
    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&mut meterd_fleet::Client) -> std::result::Result<T, RegistryError>,
    ) -> Result<T> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let c = self.node.db.connect().await.map_err(|e| StoreError::Io(super::describe(&super::chain(&e))))?;
            *guard = Some(c);
        }
        let out = f(guard.as_mut().expect("connected")).await;
        if matches!(out, Err(RegistryError::Db(_))) {
            *guard = None;
        }
        out.map_err(unavailable)
    }

    /// Brings the spool's copy up to the registry's latest revision. Returns how many entries changed.
    pub async fn catch_up(&self) -> Result<usize> {
        let mut revision = self.revision.lock().await;
        let after = *revision;
        let changes = self.with_client(async |c| registry::changes_since(c, after).await).await?;
        let copy = copy_of(&changes)?;
        let n = copy.mappings.len() + copy.customers.len() + copy.agreements.len();
        if !copy.is_empty() {
            self.local.mirror_registry(copy).await?;
        }
        *revision = changes.revision;
        Ok(n)
    }

    /// A registry write, then the copy catches up (a failure to catch up is retried by the loop; the write stands).
    async fn write<T>(
        &self,
        f: impl AsyncFnOnce(&mut meterd_fleet::Client) -> std::result::Result<T, RegistryError>,
    ) -> Result<T> {
        let out = self.with_client(f).await?;
        if let Err(e) = self.catch_up().await {
            tracing::warn!(error = %e, "registry written; this agent's copy catches up on its next pass");
        }
        Ok(out)
    }

    pub async fn note_not_subscribed(&self, identity: Identity, at_ms: UnixMillis) -> Result<()> {
        self.write(async |c| registry::note_not_subscribed(c, &identity, at_ms).await).await
    }
}

fn copy_of(c: &Changes) -> Result<RegistryCopy> {
    let agreements = c
        .agreements
        .iter()
        .map(|(a, key)| {
            let customer = match key.split_at_checked(1) {
                Some(("l", arn)) => CustomerRef::License(arn.to_string()),
                Some(("g", id)) => CustomerRef::Legacy(id.to_string()),
                _ => {
                    return Err(StoreError::Corrupt(format!("fleet registry: agreement {a:?} names customer {key:?}")));
                }
            };
            Ok((a.clone(), customer))
        })
        .collect::<Result<_>>()?;
    Ok(RegistryCopy {
        mappings: c.mappings.clone(),
        customers: c.customers.iter().map(|(_, l)| l.clone()).collect(),
        agreements,
    })
}

/// Follows the registry: catches up every `forward_interval` (backing off 1 s … 10 s while the database is
/// unreachable), so an event posted to another agent gates this agent's ingest within about that interval.
pub async fn run(registry: Arc<FleetRegistry>, mut stop: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    loop {
        match registry.catch_up().await {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(entries = n, "customer registry copy caught up");
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "customer registry: cannot follow the fleet's; will retry");
                }
            }
        }
        let wait = if failures == 0 {
            registry.node.config.forward_interval
        } else {
            Duration::from_millis((500u64 << failures.min(5)).min(10_000))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

/// The ledger the customer registry is given in fleet mode (module doc).
pub struct FleetLedger {
    pub spool: Store,
    pub registry: Arc<FleetRegistry>,
}

impl Ledger for FleetLedger {
    fn put_mapping(&self, mapping: TenantMapping, now_ms: UnixMillis) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let put = self.registry.write(async |c| registry::put_mapping(c, &mapping, now_ms).await).await?;
            Ok(put.moved)
        })
    }
    fn remove_mapping(&self, tenant_id: String) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move { self.registry.write(async |c| registry::remove_mapping(c, &tenant_id).await).await })
    }
    /// The event applies fleet-wide; a leaving customer's open hours are sealed by the account's submitter on
    /// its next tick (`registry::seal_leaving`), so none are sealed by this call.
    fn apply_lifecycle(&self, event: LifecycleEvent, params: SealParams) -> BoxFuture<'_, Result<LifecycleOutcome>> {
        Box::pin(async move {
            let out = self.registry.write(async |c| registry::apply_lifecycle(c, &event, params.now_ms).await).await?;
            Ok(LifecycleOutcome {
                applied: out.applied,
                status: out.status,
                records_sealed: 0,
                unknown_agreement: out.unknown_agreement,
            })
        })
    }
    fn amend_lifecycle(
        &self,
        subject: Subject,
        entry: StatusChange,
        reinstate: bool,
    ) -> BoxFuture<'_, Result<Option<AmendOutcome>>> {
        Box::pin(async move {
            let out =
                self.registry.write(async |c| registry::amend_lifecycle(c, &subject, entry, reinstate).await).await?;
            Ok(out.map(|a| AmendOutcome { previous: a.previous, lifecycle: a.lifecycle, changed: a.changed }))
        })
    }
    fn note_not_subscribed(&self, identity: Identity, at_ms: UnixMillis) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.registry.note_not_subscribed(identity, at_ms))
    }

    // The spool's own.
    fn ingest(
        &self,
        events: Vec<UsageEvent>,
        received_ms: UnixMillis,
        rules: IngestRules,
    ) -> BoxFuture<'_, Result<Vec<IngestOutcome>>> {
        Ledger::ingest(&self.spool, events, received_ms, rules)
    }
    fn seal(&self, params: SealParams) -> BoxFuture<'_, Result<SealSummary>> {
        Ledger::seal(&self.spool, params)
    }
    fn update_records(&self, records: Vec<SealedRecord>) -> BoxFuture<'_, Result<()>> {
        Ledger::update_records(&self.spool, records)
    }
    fn compact(&self, cutoff_ms: UnixMillis) -> BoxFuture<'_, Result<Compacted>> {
        Ledger::compact(&self.spool, cutoff_ms)
    }
    fn reclaim_space(&self, ratio: f64) -> BoxFuture<'_, Result<Option<crate::store::RepackOutcome>>> {
        Ledger::reclaim_space(&self.spool, ratio)
    }
    fn snapshot(&self) -> BoxFuture<'_, Result<crate::store::LedgerSnapshot>> {
        Ledger::snapshot(&self.spool)
    }
    fn report_page(
        &self,
        cursor: crate::store::pages::PageCursor,
        limit: usize,
    ) -> BoxFuture<'_, Result<crate::store::pages::LedgerPage>> {
        Ledger::report_page(&self.spool, cursor, limit)
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Ledger::close(&self.spool)
    }
    fn sealed_through(&self) -> Result<Option<UnixMillis>> {
        Ledger::sealed_through(&self.spool)
    }
    fn pending_records(&self, limit: usize) -> Result<Vec<SealedRecord>> {
        Ledger::pending_records(&self.spool, limit)
    }
    fn records(&self) -> Result<Vec<SealedRecord>> {
        Ledger::records(&self.spool)
    }
    fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>> {
        Ledger::buckets(&self.spool)
    }
    fn records_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>> {
        Ledger::records_of_hour(&self.spool, hour_ms)
    }
    fn buckets_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<(BucketKey, Bucket)>> {
        Ledger::buckets_of_hour(&self.spool, hour_ms)
    }
    fn first_hour(&self) -> Result<Option<UnixMillis>> {
        Ledger::first_hour(&self.spool)
    }
    fn carries(&self) -> Result<Vec<Micros>> {
        Ledger::carries(&self.spool)
    }
    fn event(&self, idempotency_key: &str) -> Result<Option<StoredEvent>> {
        Ledger::event(&self.spool, idempotency_key)
    }
    fn mapping(&self, tenant_id: &str) -> Result<Option<TenantMapping>> {
        Ledger::mapping(&self.spool, tenant_id)
    }
    fn mappings(&self) -> Result<Vec<TenantMapping>> {
        Ledger::mappings(&self.spool)
    }
    fn lifecycle(&self, identity: &Identity) -> Result<Option<CustomerLifecycle>> {
        Ledger::lifecycle(&self.spool, identity)
    }
    fn lifecycles(&self) -> Result<Vec<CustomerLifecycle>> {
        Ledger::lifecycles(&self.spool)
    }
    fn compacted(&self) -> Result<Compacted> {
        Ledger::compacted(&self.spool)
    }
    fn lost(&self) -> Result<Lost> {
        Ledger::lost(&self.spool)
    }
}
