//! The store seam: the operations the pipeline needs from a durable ledger, and nothing about how they are kept.
//!
//! Shaped like the OpenTelemetry Collector's persistent queue over its storage client: the business rules run
//! above (ingest decisions, seal arithmetic, lifecycle and record transitions are pure functions in `domain/`),
//! and a backend only has to make each operation atomic and durable. sled ([`super::Store`]) implements it today;
//! a shared PostgreSQL ledger for fleets implements the same trait and must pass the same conformance suite
//! (`agent/tests/conformance/`). Every write returns only once it is durable; every read sees only durable,
//! whole writes (never half a group).
//!
//! Dyn-compatible (boxed futures), so the agent can hold an `Arc<dyn Ledger>` and pick the backend at start.

use std::future::Future;
use std::pin::Pin;

use super::{AmendOutcome, Compacted, LifecycleOutcome, Lost, SealSummary, StoreError};
use crate::clock::UnixMillis;
use crate::domain::customer::{CustomerLifecycle, StatusChange, TenantMapping};
use crate::domain::event::{Bucket, BucketKey, Identity, StoredEvent, UsageEvent};
use crate::domain::ingest::{IngestOutcome, IngestRules};
use crate::domain::lifecycle::{LifecycleEvent, Subject};
use crate::domain::quantity::Micros;
use crate::domain::record::SealedRecord;
use crate::domain::seal::SealParams;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type Result<T> = std::result::Result<T, StoreError>;

pub trait Ledger: Send + Sync {
    // Writes: each one atomic (all or nothing) and durable before it returns.

    /// Decides every event with [`crate::domain::ingest::IngestGroup`] against the ledger and applies the
    /// group's writes (event keys + bucket totals) atomically. One outcome per event, in order.
    fn ingest(
        &self,
        events: Vec<UsageEvent>,
        received_ms: UnixMillis,
        rules: IngestRules,
    ) -> BoxFuture<'_, Result<Vec<IngestOutcome>>>;
    /// Seals every hour before `params.cutoff_hour_ms` into frozen records, carries fractions, moves the watermark.
    fn seal(&self, params: SealParams) -> BoxFuture<'_, Result<SealSummary>>;
    /// New states of sealed records (content frozen, terminal states final: [`crate::domain::record::check_update`]).
    fn update_records(&self, records: Vec<SealedRecord>) -> BoxFuture<'_, Result<()>>;
    /// Maps a tenant and moves its open usage to the identity; held records take their AWS key or are merged.
    fn put_mapping(&self, mapping: TenantMapping, now_ms: UnixMillis) -> BoxFuture<'_, Result<u64>>;
    fn remove_mapping(&self, tenant_id: String) -> BoxFuture<'_, Result<bool>>;
    /// Applies a lifecycle event; a customer that leaves has its open hours sealed in the same write.
    fn apply_lifecycle(&self, event: LifecycleEvent, params: SealParams) -> BoxFuture<'_, Result<LifecycleOutcome>>;
    fn amend_lifecycle(
        &self,
        subject: Subject,
        entry: StatusChange,
        reinstate: bool,
    ) -> BoxFuture<'_, Result<Option<AmendOutcome>>>;
    fn note_not_subscribed(&self, identity: Identity, at_ms: UnixMillis) -> BoxFuture<'_, Result<()>>;
    /// Retention: drops terminal history before `cutoff_ms`, folding its totals into [`Compacted`].
    fn compact(&self, cutoff_ms: UnixMillis) -> BoxFuture<'_, Result<Compacted>>;
    /// Gives back space the backend no longer needs, when `ratio` says it is worth it (sled: a repack into a
    /// fresh generation when the files hold more than `ratio` × the live bytes). A backend with nothing to do
    /// answers None.
    fn reclaim_space(&self, ratio: f64) -> BoxFuture<'_, Result<Option<super::RepackOutcome>>>;
    /// Everything the report reads, at one instant between two writes (never half a group, never a seal half seen).
    fn snapshot(&self) -> BoxFuture<'_, Result<super::LedgerSnapshot>>;
    /// One bounded page of what the report reads, from `cursor` in key order, taken between two writes; it carries
    /// the count of structural writes (seals, compactions, mapping moves) made so far, so a reader of many pages
    /// knows whether they all saw the same structure ([`super::pages`]).
    fn report_page(
        &self,
        cursor: super::pages::PageCursor,
        limit: usize,
    ) -> BoxFuture<'_, Result<super::pages::LedgerPage>>;
    /// Stops taking writes once those in progress are durable.
    fn close(&self) -> BoxFuture<'_, Result<()>>;

    // Reads of durable state.

    /// Every hour before this is sealed; None while nothing is.
    fn sealed_through(&self) -> Result<Option<UnixMillis>>;
    /// Pending records (Sealed or InFlight), most urgent deadline first, at most `limit`.
    fn pending_records(&self, limit: usize) -> Result<Vec<SealedRecord>>;
    /// Every sealed record, hour first.
    fn records(&self) -> Result<Vec<SealedRecord>>;
    /// Every open bucket with its running total, hour first.
    fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>>;
    /// The sealed records of one hour, reading nothing outside it (silence detection reads ~10 hours, never the
    /// whole history).
    fn records_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>>;
    /// The open buckets of one hour, reading nothing outside it.
    fn buckets_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<(BucketKey, Bucket)>>;
    /// The hour of the oldest sealed record or open bucket still kept (None when there is none).
    fn first_hour(&self) -> Result<Option<UnixMillis>>;
    /// Usage of one hour per product × dimension with its biggest sealed records ([`super::hour_totals`]). sled
    /// keeps them in the same writes as the usage; this default computes them from the hour's records and buckets.
    fn hour_summaries(&self, hour_ms: UnixMillis) -> Result<Vec<super::hour_totals::HourSummary>> {
        Ok(super::hour_totals::summarise(&self.records_of_hour(hour_ms)?, &self.buckets_of_hour(hour_ms)?))
    }
    /// One series' usage in one hour: its record's recorded usage plus its open buckets.
    fn series_usage(&self, hour_ms: UnixMillis, product: &str, identity: &Identity, dimension: &str) -> Result<Micros> {
        let mut total = Micros::ZERO;
        for r in self.records_of_hour(hour_ms)? {
            if r.key.product == product && r.key.identity == *identity && r.key.dimension == dimension {
                total = Micros(total.0.saturating_add(r.recorded.0));
            }
        }
        for (k, b) in self.buckets_of_hour(hour_ms)? {
            if k.product == product && k.identity == *identity && k.dimension == dimension {
                total = Micros(total.0.saturating_add(b.total.0));
            }
        }
        Ok(total)
    }
    fn carries(&self) -> Result<Vec<Micros>>;
    fn event(&self, idempotency_key: &str) -> Result<Option<StoredEvent>>;
    fn mapping(&self, tenant_id: &str) -> Result<Option<TenantMapping>>;
    fn mappings(&self) -> Result<Vec<TenantMapping>>;
    fn lifecycle(&self, identity: &Identity) -> Result<Option<CustomerLifecycle>>;
    fn lifecycles(&self) -> Result<Vec<CustomerLifecycle>>;
    fn compacted(&self) -> Result<Compacted>;
    fn lost(&self) -> Result<Lost>;
}

impl Ledger for super::Store {
    fn ingest(
        &self,
        events: Vec<UsageEvent>,
        received_ms: UnixMillis,
        rules: IngestRules,
    ) -> BoxFuture<'_, Result<Vec<IngestOutcome>>> {
        Box::pin(super::Store::ingest(self, events, received_ms, rules))
    }
    fn seal(&self, params: SealParams) -> BoxFuture<'_, Result<SealSummary>> {
        Box::pin(super::Store::seal(self, params))
    }
    fn reclaim_space(&self, ratio: f64) -> BoxFuture<'_, Result<Option<super::RepackOutcome>>> {
        Box::pin(super::Store::repack_if_bloated(self, ratio, super::REPACK_MIN_BYTES))
    }
    fn update_records(&self, records: Vec<SealedRecord>) -> BoxFuture<'_, Result<()>> {
        Box::pin(super::Store::update_records(self, records))
    }
    fn put_mapping(&self, mapping: TenantMapping, now_ms: UnixMillis) -> BoxFuture<'_, Result<u64>> {
        Box::pin(super::Store::put_mapping(self, mapping, now_ms))
    }
    fn remove_mapping(&self, tenant_id: String) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move { super::Store::remove_mapping(self, &tenant_id).await })
    }
    fn apply_lifecycle(&self, event: LifecycleEvent, params: SealParams) -> BoxFuture<'_, Result<LifecycleOutcome>> {
        Box::pin(super::Store::apply_lifecycle(self, event, params))
    }
    fn amend_lifecycle(
        &self,
        subject: Subject,
        entry: StatusChange,
        reinstate: bool,
    ) -> BoxFuture<'_, Result<Option<AmendOutcome>>> {
        Box::pin(super::Store::amend_lifecycle(self, subject, entry, reinstate))
    }
    fn note_not_subscribed(&self, identity: Identity, at_ms: UnixMillis) -> BoxFuture<'_, Result<()>> {
        Box::pin(super::Store::note_not_subscribed(self, identity, at_ms))
    }
    fn compact(&self, cutoff_ms: UnixMillis) -> BoxFuture<'_, Result<Compacted>> {
        Box::pin(super::Store::compact(self, cutoff_ms))
    }
    fn snapshot(&self) -> BoxFuture<'_, Result<super::LedgerSnapshot>> {
        Box::pin(super::Store::snapshot(self))
    }
    fn report_page(
        &self,
        cursor: super::pages::PageCursor,
        limit: usize,
    ) -> BoxFuture<'_, Result<super::pages::LedgerPage>> {
        Box::pin(super::Store::report_page(self, cursor, limit))
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(super::Store::close(self))
    }
    fn sealed_through(&self) -> Result<Option<UnixMillis>> {
        super::Store::sealed_through(self)
    }
    fn pending_records(&self, limit: usize) -> Result<Vec<SealedRecord>> {
        super::Store::pending_records(self, limit)
    }
    fn records(&self) -> Result<Vec<SealedRecord>> {
        super::Store::records(self)
    }
    fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>> {
        super::Store::buckets(self)
    }
    fn records_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>> {
        super::Store::records_of_hour(self, hour_ms)
    }
    fn buckets_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<(BucketKey, Bucket)>> {
        super::Store::buckets_of_hour(self, hour_ms)
    }
    fn first_hour(&self) -> Result<Option<UnixMillis>> {
        super::Store::first_hour(self)
    }
    fn hour_summaries(&self, hour_ms: UnixMillis) -> Result<Vec<super::hour_totals::HourSummary>> {
        super::Store::hour_summaries(self, hour_ms)
    }
    fn series_usage(&self, hour_ms: UnixMillis, product: &str, identity: &Identity, dimension: &str) -> Result<Micros> {
        super::Store::series_usage(self, hour_ms, product, identity, dimension)
    }
    fn carries(&self) -> Result<Vec<Micros>> {
        super::Store::carries(self)
    }
    fn event(&self, idempotency_key: &str) -> Result<Option<StoredEvent>> {
        super::Store::event(self, idempotency_key)
    }
    fn mapping(&self, tenant_id: &str) -> Result<Option<TenantMapping>> {
        super::Store::mapping(self, tenant_id)
    }
    fn mappings(&self) -> Result<Vec<TenantMapping>> {
        super::Store::mappings(self)
    }
    fn lifecycle(&self, identity: &Identity) -> Result<Option<CustomerLifecycle>> {
        super::Store::lifecycle(self, identity)
    }
    fn lifecycles(&self) -> Result<Vec<CustomerLifecycle>> {
        super::Store::lifecycles(self)
    }
    fn compacted(&self) -> Result<Compacted> {
        super::Store::compacted(self)
    }
    fn lost(&self) -> Result<Lost> {
        super::Store::lost(self)
    }
}
