//! Bounded pages of the ledger for reports that stream: the report reads the ledger page by page from a cursor (key
//! order) instead of materialising every record and bucket ([`super::read_snapshot`]).
//!
//! sled has no snapshots, so two pages are two instants. Between them ingest only adds to buckets, and record
//! updates only change states: every row read is whole and counted once, wherever the cursor is. What can make
//! two pages disagree is a *structural* write that moves usage from one place to another — a seal (buckets →
//! records + carries), a compaction (records → compacted totals), a tenant mapping (buckets move to another
//! identity). The writer counts those ([`super::StoreCounters::structure_changes`]); each page is read on the
//! writer thread between two writes and carries the count it was read at, so a reader knows whether its pages
//! all saw the same structure.

use std::collections::BTreeSet;
use std::ops::Bound;

use super::seam::BoxFuture;
use super::{Compacted, Lost, StoreError, decode, keys};
use crate::domain::event::{Bucket, BucketKey, Identity};
use crate::domain::quantity::Micros;
use crate::domain::record::{RecordKey, SealedRecord};

/// The most entries one page reads, whatever the caller asks (a page is read on the writer thread: it must stay
/// short enough not to delay writes noticeably).
pub const MAX_PAGE: usize = 5_000;

/// One carry series: a product × customer × dimension whose fractions carry from hour to hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesKey {
    pub product: String,
    pub identity: Identity,
    pub dimension: String,
}

/// Where the next page starts. The ledger is read in three regions, each in key order: sealed records, open
/// buckets, then the carried fractions. `after: None` starts a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageCursor {
    Records { after: Option<RecordKey> },
    Buckets { after: Option<BucketKey> },
    Carries { after: Option<SeriesKey> },
}

impl PageCursor {
    pub fn start() -> Self {
        PageCursor::Records { after: None }
    }
}

/// What the report needs once, read with the last page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageTail {
    pub compacted: Compacted,
    pub lost: Lost,
    /// Fleet mode: events refused by the shared ledger because their key was counted with other content (never
    /// counted, shown beside the totals). Always 0 for a standalone store, which refuses such an event at ingest.
    pub conflicts: u64,
}

/// Where a report's pages come from: the local store ([`super::Store`], and anything implementing
/// [`super::Ledger`]), or in fleet mode the shared ledger in PostgreSQL (`crate::fleet::report`). The report's
/// reading, streaming and consistency logic ([`crate::report_stream`]) is written once against this.
pub trait PageSource: Send + Sync {
    /// One bounded page from `cursor`, carrying the structure count it was read at ([`LedgerPage::structure`]).
    fn report_page(&self, cursor: PageCursor, limit: usize) -> BoxFuture<'_, Result<LedgerPage, StoreError>>;
}

impl<T: super::Ledger + ?Sized> PageSource for T {
    fn report_page(&self, cursor: PageCursor, limit: usize) -> BoxFuture<'_, Result<LedgerPage, StoreError>> {
        super::Ledger::report_page(self, cursor, limit)
    }
}

/// One bounded page: at most the asked number of entries of one region.
#[derive(Debug, Clone, Default)]
pub struct LedgerPage {
    pub records: Vec<SealedRecord>,
    pub buckets: Vec<(BucketKey, Bucket)>,
    /// The sum of the carried fractions this page read, and how many it read.
    pub carried: Micros,
    pub carries_read: u64,
    /// Tenants of this page's records and buckets that have no marketplace identity (their usage is at risk).
    pub unmapped_tenants: BTreeSet<String>,
    /// Structural changes (seals, compactions, mapping moves) the store had made when this page was read.
    pub structure: u64,
    /// Where the next page starts; None after the last page, which also carries the tail.
    pub next: Option<PageCursor>,
    pub tail: Option<PageTail>,
}

fn corrupt(e: keys::KeyError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Every key with `prefix` after `after` (or from the start of the prefix): the range a region's page reads.
fn region(prefix: &[u8], after: Option<Vec<u8>>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut end = prefix.to_vec();
    // Prefixes are ASCII "x/": the next byte value bounds them.
    *end.last_mut().expect("non-empty prefix") += 1;
    let start = match after {
        Some(k) => Bound::Excluded(k),
        None => Bound::Included(prefix.to_vec()),
    };
    (start, Bound::Excluded(end))
}

/// Reads one page from `cursor`; consistent on its own when nothing writes meanwhile (the writer thread calls it).
pub(crate) fn read_page(
    db: &sled::Db,
    cursor: &PageCursor,
    limit: usize,
    structure: u64,
) -> Result<LedgerPage, StoreError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut page = LedgerPage { structure, ..Default::default() };
    let mut tenants = BTreeSet::new();
    match cursor {
        PageCursor::Records { after } => {
            for kv in db.range(region(keys::RECORD_PREFIX, after.as_ref().map(keys::record_key))).take(limit) {
                let r: SealedRecord = decode(&kv?.1)?;
                if let Identity::Tenant(t) = &r.key.identity {
                    tenants.insert(t.clone());
                }
                page.records.push(r);
            }
            page.next = Some(match page.records.last() {
                Some(r) if page.records.len() == limit => PageCursor::Records { after: Some(r.key.clone()) },
                _ => PageCursor::Buckets { after: None },
            });
        }
        PageCursor::Buckets { after } => {
            for kv in db.range(region(keys::BUCKET_PREFIX, after.as_ref().map(keys::encode_bucket_key))).take(limit) {
                let (k, v) = kv?;
                let key = keys::decode_bucket_key(&k).map_err(corrupt)?;
                if let Identity::Tenant(t) = &key.identity {
                    tenants.insert(t.clone());
                }
                page.buckets.push((key, decode(&v)?));
            }
            page.next = Some(match page.buckets.last() {
                Some((k, _)) if page.buckets.len() == limit => PageCursor::Buckets { after: Some(k.clone()) },
                _ => PageCursor::Carries { after: None },
            });
        }
        PageCursor::Carries { after } => {
            let after = after.as_ref().map(|s| keys::carry_key(&s.product, &s.identity, &s.dimension));
            let mut last = None;
            for kv in db.range(region(keys::CARRY_PREFIX, after)).take(limit) {
                let (k, v) = kv?;
                let m: Micros = decode(&v)?;
                page.carried = page.carried.try_add(m).map_err(|_| StoreError::Overflow("carried fractions".into()))?;
                page.carries_read += 1;
                last = Some(k);
            }
            match last {
                Some(k) if page.carries_read == limit as u64 => {
                    page.next = Some(PageCursor::Carries { after: Some(decode_series(&k)?) })
                }
                _ => {
                    page.tail = Some(PageTail {
                        compacted: db.get(keys::COMPACTED_KEY)?.map(|v| decode(&v)).transpose()?.unwrap_or_default(),
                        lost: db.get(keys::LOST_KEY)?.map(|v| decode(&v)).transpose()?.unwrap_or_default(),
                        conflicts: 0,
                    });
                }
            }
        }
    }
    for t in tenants {
        if db.get(keys::tenant_key(&t))?.is_none() {
            page.unmapped_tenants.insert(t);
        }
    }
    Ok(page)
}

/// The series of a carry key (`c/` + product + customer + dimension), decoded through the bucket key layout.
fn decode_series(carry_key: &[u8]) -> Result<SeriesKey, StoreError> {
    // A bucket key is `b/` + hour + the same series + a tag count: rebuild one to reuse its decoder.
    let mut as_bucket = keys::BUCKET_PREFIX.to_vec();
    as_bucket.extend_from_slice(&keys::hour_bytes(0));
    as_bucket.extend_from_slice(carry_key.get(keys::CARRY_PREFIX.len()..).unwrap_or_default());
    as_bucket.push(0);
    let k = keys::decode_bucket_key(&as_bucket).map_err(corrupt)?;
    Ok(SeriesKey { product: k.product, identity: k.identity, dimension: k.dimension })
}
