//! [`PgLedger`]: the store seam ([`Ledger`]) over the fleet's shared ledger in PostgreSQL, so the store
//! conformance suite (`agent/tests/conformance/`) runs against PostgreSQL as it runs against sled.
//!
//! Every operation is one of `meterd_fleet`'s (the same code the fleet's agents run), and every decision is the
//! agent's domain code reached through `meterd-core`: ingest is decided by `IngestGroup` with the caller's rules
//! against the shared event keys and the fleet's registry (`forward::ingest`), seals and record updates are the
//! lease holder's fenced writes (`seal::seal_at`, `seal::update_records`), mappings and lifecycle events the
//! registry's, reads are the report's keyset pages and a few views. A `PgLedger` is a writer that answers its
//! callers only after the PostgreSQL commit (as `ack = "shared"` does), so it has no spool and is no node the
//! fleet's seal waits for; it seals and updates records only while it holds the account's submitter lease.
//!
//! Retention ([`Ledger::compact`]) removes terminal records before the caller's cutoff into the kept totals
//! (`retention::compact_records`, under the lease); event keys are not forgotten by that cutoff but with their
//! day's partition on the database's clock (`partitions::drop_expired`, the lease holder's hourly pass), so a
//! compaction here reports no events. [`Ledger::reclaim_space`] has nothing to do (PostgreSQL's autovacuum
//! reclaims space; partitions are dropped whole).
//!
//! The trait's reads are synchronous (sled's are local); here they are queries. The connection lives on this
//! ledger's own small runtime, so a synchronous read blocks only the calling thread (never a runtime's only
//! worker waiting on itself) and the ledger works from any runtime or none.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use meterd_fleet::connect::Database;
use meterd_fleet::lease::{self, Lease, Terms};
use meterd_fleet::nodes::Registration;
use meterd_fleet::seal::SealRules;
use meterd_fleet::{forward, registry, report as pg, seal, views};

use crate::clock::UnixMillis;
use crate::domain::customer::{CustomerLifecycle, StatusChange, TenantMapping};
use crate::domain::event::{Bucket, BucketKey, Identity, StoredEvent, UsageEvent};
use crate::domain::ingest::{IngestOutcome, IngestRules};
use crate::domain::lifecycle::{LifecycleEvent, Subject};
use crate::domain::quantity::Micros;
use crate::domain::record::SealedRecord;
use crate::domain::seal::SealParams;
use crate::store::pages::{LedgerPage, PageCursor};
use crate::store::seam::{BoxFuture, Ledger, Result};
use crate::store::{
    AmendOutcome, Compacted, LedgerSnapshot, LifecycleOutcome, Lost, RepackOutcome, SealSummary, StoreError,
};

/// Where the ledger is and whose it is.
#[derive(Debug, Clone)]
pub struct PgLedgerConfig {
    pub database: Database,
    /// The AWS account whose submitter lease fences this ledger's seals and record updates.
    pub account: String,
    /// Names this writer in the event rows (`node_id` of `meterd_event_keys`) and in the lease.
    pub node_id: String,
    /// The account's products: a seal seals these, and every hour before `sealed_through` is sealed for all.
    pub products: Vec<String>,
    /// How long a seal waits for the fleet's live nodes (none, when this ledger is the only writer).
    pub seal_rules: SealRules,
}

struct Inner {
    cfg: PgLedgerConfig,
    me: Registration,
    client: tokio::sync::Mutex<Option<meterd_fleet::Client>>,
    lease: tokio::sync::Mutex<Option<Lease>>,
}

/// The shared ledger in PostgreSQL behind the [`Ledger`] seam (module doc).
pub struct PgLedger {
    inner: Arc<Inner>,
    /// Runs the connection and every operation; None only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

fn db_error(e: impl std::error::Error + 'static) -> StoreError {
    StoreError::Io(super::describe(&super::chain(&e)))
}

fn view_error(e: views::ViewError) -> StoreError {
    match e {
        views::ViewError::Corrupt(c) => StoreError::Corrupt(c.to_string()),
        views::ViewError::Db(e) => db_error(e),
    }
}

fn registry_error(e: registry::RegistryError) -> StoreError {
    match e {
        registry::RegistryError::Invalid { .. } | registry::RegistryError::Corrupt(_) => {
            StoreError::Corrupt(e.to_string())
        }
        registry::RegistryError::Overflow(what) => StoreError::Overflow(what),
        other => db_error(other),
    }
}

fn seal_error(e: seal::SealError) -> StoreError {
    match e {
        // As the sled store answers a refused update or an impossible record: the write is refused whole.
        seal::SealError::Refused(_)
        | seal::SealError::Unknown(_)
        | seal::SealError::Duplicate(_)
        | seal::SealError::Corrupt(_) => StoreError::Corrupt(e.to_string()),
        seal::SealError::Overflow(what) => StoreError::Overflow(what),
        other => db_error(other),
    }
}

fn forward_error(e: forward::ForwardError) -> StoreError {
    match e {
        forward::ForwardError::Corrupt(c) => StoreError::Corrupt(c.to_string()),
        forward::ForwardError::Refused { reason, .. } => StoreError::Overflow(reason),
        forward::ForwardError::NodeId(_) => StoreError::Corrupt(e.to_string()),
        forward::ForwardError::Db(e) => db_error(e),
    }
}

impl Inner {
    /// The connection, opened when there is none (or it broke).
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<meterd_fleet::Client>>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.cfg.database.connect().await.map_err(db_error)?);
        }
        Ok(guard)
    }

    /// The account's lease, renewed or taken when its local trust window ran out. Refused while another writer
    /// holds it: only the holder seals and updates records.
    async fn lease(&self, client: &meterd_fleet::Client) -> Result<Lease> {
        let mut held = self.lease.lock().await;
        let terms = Terms::default();
        if let Some(l) = held.as_mut()
            && (l.is_valid(Instant::now()) || lease::renew(client, l, terms).await.is_ok())
        {
            return Ok(l.clone());
        }
        match lease::acquire(client, &self.cfg.account, &self.me, terms).await.map_err(db_error)? {
            Some(l) => {
                *held = Some(l.clone());
                Ok(l)
            }
            None => {
                *held = None;
                Err(StoreError::Io(format!(
                    "fleet database: the submitter lease of account {:?} is held by another agent: only it seals \
                     and updates records",
                    self.cfg.account
                )))
            }
        }
    }

    async fn sealed_through(&self) -> Result<Option<UnixMillis>> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected");
        let mut through: Option<UnixMillis> = None;
        for (i, p) in self.cfg.products.iter().enumerate() {
            // Every product must be sealed through an hour for the ledger to be.
            match views::sealed_through(client, p).await.map_err(view_error)? {
                None => return Ok(None),
                Some(s) => through = Some(if i == 0 { s } else { through.map_or(s, |t| t.min(s)) }),
            }
        }
        Ok(through)
    }
}

impl PgLedger {
    /// Connects, applies the migrations, and returns the ledger. Blocks the calling thread until then.
    pub fn open(cfg: PgLedgerConfig) -> Result<Self> {
        if cfg.products.is_empty() {
            return Err(StoreError::Corrupt("products: the account needs at least one product".into()));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("meterd-pg-ledger")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("starting the PostgreSQL ledger's runtime: {e}")))?;
        let me = Registration { node_id: cfg.node_id.clone(), incarnation: uuid::Uuid::new_v4() };
        let inner = Arc::new(Inner { cfg, me, client: Default::default(), lease: Default::default() });
        let ledger = PgLedger { inner, rt: Some(rt) };
        ledger.block(|i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            meterd_fleet::migrate::migrate(client).await.map_err(db_error)?;
            Ok(())
        })?;
        Ok(ledger)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    /// Runs `f` on this ledger's runtime; the caller awaits it from any runtime.
    fn spawn<T, F, Fut>(&self, f: F) -> BoxFuture<'_, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let task = self.runtime().spawn(f(self.inner.clone()));
        Box::pin(async move { task.await.map_err(|e| StoreError::Io(format!("PostgreSQL ledger task: {e}")))? })
    }

    /// Runs `f` on this ledger's runtime and blocks the calling thread for its answer (the trait's synchronous
    /// reads).
    fn block<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(self.inner.clone());
        self.runtime().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| StoreError::Io("PostgreSQL ledger task ended without an answer".into()))?
    }
}

impl Drop for PgLedger {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which a caller inside another runtime may not do.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One read-only snapshot: pages and their stamp agree (as `fleet::report` reads them).
async fn snapshot_of(client: &mut meterd_fleet::Client) -> Result<LedgerSnapshot> {
    let tx = pg::snapshot(client).await.map_err(db_error)?;
    let records = pg::records_after(&tx, None, i64::MAX).await.map_err(view_error)?;
    let buckets = pg::buckets_after(&tx, None, i64::MAX).await.map_err(view_error)?;
    let carries = pg::carries_after(&tx, None, i64::MAX).await.map_err(view_error)?;
    let mappings = registry::mappings(&tx).await.map_err(registry_error)?;
    let (lost_records, units) = pg::lost(&tx).await.map_err(view_error)?;
    let compacted = meterd_fleet::retention::compacted(&tx).await.map_err(view_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(LedgerSnapshot {
        records,
        buckets,
        carries: carries.into_iter().map(|c| c.carried).collect(),
        mappings,
        compacted,
        lost: Lost { records: lost_records, units },
    })
}

impl Ledger for PgLedger {
    fn ingest(
        &self,
        events: Vec<UsageEvent>,
        received_ms: UnixMillis,
        rules: IngestRules,
    ) -> BoxFuture<'_, Result<Vec<IngestOutcome>>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            forward::ingest(client, &i.cfg.node_id, &events, received_ms, rules).await.map_err(forward_error)
        })
    }

    fn seal(&self, params: SealParams) -> BoxFuture<'_, Result<SealSummary>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            let lease = i.lease(client).await?;
            let s =
                seal::seal_at(client, &lease, &i.cfg.products, &params, i.cfg.seal_rules).await.map_err(seal_error)?;
            Ok(SealSummary {
                buckets: s.buckets,
                records: s.records,
                carried_only: s.carried_only,
                sealed_through: s.sealed_through,
            })
        })
    }

    fn update_records(&self, records: Vec<SealedRecord>) -> BoxFuture<'_, Result<()>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            let lease = i.lease(client).await?;
            seal::update_records(client, &lease, &records).await.map_err(seal_error)
        })
    }

    fn put_mapping(&self, mapping: TenantMapping, now_ms: UnixMillis) -> BoxFuture<'_, Result<u64>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            Ok(registry::put_mapping(client, &mapping, now_ms).await.map_err(registry_error)?.moved)
        })
    }

    fn remove_mapping(&self, tenant_id: String) -> BoxFuture<'_, Result<bool>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            registry::remove_mapping(client, &tenant_id).await.map_err(registry_error)
        })
    }

    /// The registry's write, then — when the customer just left — its open hours sealed under the lease with
    /// the caller's clock. Two transactions, not one as in sled: should the second not happen (a crash), the
    /// account's lease holder seals them on its next tick (`registry::seal_leaving`), as for every agent's events.
    fn apply_lifecycle(&self, event: LifecycleEvent, params: SealParams) -> BoxFuture<'_, Result<LifecycleOutcome>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            let applied = registry::apply_lifecycle(client, &event, params.now_ms).await.map_err(registry_error)?;
            let mut records_sealed = 0;
            if let (true, Some(key)) = (applied.leaves, &applied.customer) {
                let lease = i.lease(client).await?;
                let sealed = registry::seal_customer_left(client, &lease, &i.cfg.products, key, &params)
                    .await
                    .map_err(seal_error)?;
                records_sealed = sealed.records;
            }
            Ok(LifecycleOutcome {
                applied: applied.applied,
                status: applied.status,
                records_sealed,
                unknown_agreement: applied.unknown_agreement,
            })
        })
    }

    fn amend_lifecycle(
        &self,
        subject: Subject,
        entry: StatusChange,
        reinstate: bool,
    ) -> BoxFuture<'_, Result<Option<AmendOutcome>>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            let a = registry::amend_lifecycle(client, &subject, entry, reinstate).await.map_err(registry_error)?;
            Ok(a.map(|a| AmendOutcome { previous: a.previous, lifecycle: a.lifecycle, changed: a.changed }))
        })
    }

    fn note_not_subscribed(&self, identity: Identity, at_ms: UnixMillis) -> BoxFuture<'_, Result<()>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            registry::note_not_subscribed(client, &identity, at_ms).await.map_err(registry_error)
        })
    }

    fn compact(&self, cutoff_ms: UnixMillis) -> BoxFuture<'_, Result<Compacted>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            let lease = i.lease(client).await?;
            meterd_fleet::retention::compact_records(client, &lease, &i.cfg.products, cutoff_ms)
                .await
                .map_err(seal_error)
        })
    }

    fn reclaim_space(&self, _ratio: f64) -> BoxFuture<'_, Result<Option<RepackOutcome>>> {
        // PostgreSQL's autovacuum reclaims dead rows; expired event keys go as whole partitions.
        Box::pin(async { Ok(None) })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<LedgerSnapshot>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            snapshot_of(guard.as_mut().expect("connected")).await
        })
    }

    fn report_page(&self, cursor: PageCursor, limit: usize) -> BoxFuture<'_, Result<LedgerPage>> {
        self.spawn(move |i| async move {
            let mut guard = i.client().await?;
            let client = guard.as_mut().expect("connected");
            let limit = limit.clamp(1, crate::store::pages::MAX_PAGE);
            let mut page = super::report::read_page(client, &cursor, limit).await?;
            let tenants: BTreeSet<String> = page
                .records
                .iter()
                .map(|r| &r.key.identity)
                .chain(page.buckets.iter().map(|(k, _)| &k.identity))
                .filter_map(|i| match i {
                    Identity::Tenant(t) => Some(t.clone()),
                    _ => None,
                })
                .collect();
            for t in tenants {
                // At risk: held under a tenant the fleet's registry has no mapping for.
                if registry::mapping(&*client, &t).await.map_err(registry_error)?.is_none() {
                    page.unmapped_tenants.insert(t);
                }
            }
            Ok(page)
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        // Every write committed before it returned; giving the lease up lets the next holder seal at once.
        self.spawn(move |i| async move {
            let held = i.lease.lock().await.take();
            if let Some(l) = held {
                let guard = i.client().await?;
                lease::resign(guard.as_ref().expect("connected"), &l).await.map_err(db_error)?;
            }
            Ok(())
        })
    }

    fn sealed_through(&self) -> Result<Option<UnixMillis>> {
        self.block(|i| async move { i.sealed_through().await })
    }

    fn pending_records(&self, limit: usize) -> Result<Vec<SealedRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            seal::pending_records(conn, limit).await.map_err(seal_error)
        })
    }

    fn records(&self) -> Result<Vec<SealedRecord>> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            pg::records_after(conn, None, i64::MAX).await.map_err(view_error)
        })
    }

    fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            pg::buckets_after(conn, None, i64::MAX).await.map_err(view_error)
        })
    }

    fn records_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            views::records_of_hour(conn, hour_ms).await.map_err(view_error)
        })
    }

    fn buckets_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<(BucketKey, Bucket)>> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            views::buckets_of_hour(conn, hour_ms).await.map_err(view_error)
        })
    }

    fn first_hour(&self) -> Result<Option<UnixMillis>> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            views::first_hour(conn).await.map_err(view_error)
        })
    }

    fn carries(&self) -> Result<Vec<Micros>> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            views::carries(conn).await.map_err(view_error)
        })
    }

    fn event(&self, idempotency_key: &str) -> Result<Option<StoredEvent>> {
        let key = idempotency_key.to_string();
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            views::event(conn, &key).await.map_err(view_error)
        })
    }

    fn mapping(&self, tenant_id: &str) -> Result<Option<TenantMapping>> {
        let tenant = tenant_id.to_string();
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            registry::mapping(conn, &tenant).await.map_err(registry_error)
        })
    }

    fn mappings(&self) -> Result<Vec<TenantMapping>> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            registry::mappings(conn).await.map_err(registry_error)
        })
    }

    fn lifecycle(&self, identity: &Identity) -> Result<Option<CustomerLifecycle>> {
        let Some(key) = registry::customer_key(identity) else { return Ok(None) };
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            registry::lifecycle(conn, &key).await.map_err(registry_error)
        })
    }

    fn lifecycles(&self) -> Result<Vec<CustomerLifecycle>> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            registry::lifecycles(conn).await.map_err(registry_error)
        })
    }

    fn compacted(&self) -> Result<Compacted> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            meterd_fleet::retention::compacted(conn).await.map_err(view_error)
        })
    }

    fn lost(&self) -> Result<Lost> {
        self.block(move |i| async move {
            let guard = i.client().await?;
            let conn = guard.as_ref().expect("connected");
            pg::lost(conn).await.map(|(records, units)| Lost { records, units }).map_err(view_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_without_products_is_refused_before_connecting() {
        let cfg = PgLedgerConfig {
            // Nothing listens here: the refusal must come first.
            database: Database::parse("postgres://meterd@127.0.0.1:1/none?sslmode=disable", None).unwrap(),
            account: "111122223333".into(),
            node_id: "n".into(),
            products: vec![],
            seal_rules: SealRules {
                down_after: std::time::Duration::from_secs(60),
                max_wait: std::time::Duration::from_secs(3600),
            },
        };
        let e = PgLedger::open(cfg).err().expect("refused");
        assert!(e.to_string().contains("products: the account needs at least one product"), "{e}");
    }
}
