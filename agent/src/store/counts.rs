//! Counts `status` and `/metrics` show, kept in the same atomic write as what they count instead of a scan per
//! read: the open buckets (`m/open_buckets`: 900,000 keys to count at the end of a large hour) and the customers
//! per lifecycle status (`m/customers`). A store written before them has them counted once at open, as the queue's
//! totals are ([`super::pending`]).

use std::collections::BTreeMap;

use super::{StoreError, decode, encode, keys};
use crate::domain::customer::CustomerLifecycle;

/// Customers tracked (`s/` keys) per status name, and how many AWS answered CustomerNotSubscribed for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerCounts {
    pub by_status: BTreeMap<String, u64>,
    pub not_subscribed: u64,
}

impl CustomerCounts {
    fn add(&mut self, l: &CustomerLifecycle) {
        *self.by_status.entry(l.status.name().to_string()).or_default() += 1;
        self.not_subscribed += u64::from(l.not_subscribed_at_ms.is_some());
    }

    fn remove(&mut self, l: &CustomerLifecycle) {
        let name = l.status.name();
        if let Some(n) = self.by_status.get_mut(name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_status.remove(name);
            }
        }
        self.not_subscribed = self.not_subscribed.saturating_sub(u64::from(l.not_subscribed_at_ms.is_some()));
    }
}

/// The open buckets (`m/open_buckets`), as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenBuckets(pub u64);

/// Open buckets and customers per status.
pub type Counts = (u64, CustomerCounts);

pub fn customers(db: &sled::Db) -> Result<CustomerCounts, StoreError> {
    Ok(db.get(keys::CUSTOMER_COUNTS_KEY)?.map(|v| decode(&v)).transpose()?.unwrap_or_default())
}

/// A customer's lifecycle written in `batch` (`before`: as stored, None for a new customer): its count moves in
/// the same batch. One lifecycle per write: each write that changes one reads the counts first.
pub fn customer_written(
    db: &sled::Db,
    batch: &mut super::batch::Batch,
    before: Option<&CustomerLifecycle>,
    after: &CustomerLifecycle,
) -> Result<(), StoreError> {
    let mut c = customers(db)?;
    if let Some(b) = before {
        c.remove(b);
    }
    c.add(after);
    batch.insert(keys::CUSTOMER_COUNTS_KEY, encode(&c));
    Ok(())
}

/// Several customers' lifecycles written in one `batch` (each `(before, after)` as in [`customer_written`], every
/// customer at most once): their counts move together in the same batch.
pub fn customers_written<'a>(
    db: &sled::Db,
    batch: &mut super::batch::Batch,
    changes: impl IntoIterator<Item = (Option<CustomerLifecycle>, &'a CustomerLifecycle)>,
) -> Result<(), StoreError> {
    let mut c = customers(db)?;
    for (before, after) in changes {
        if let Some(b) = &before {
            c.remove(b);
        }
        c.add(after);
    }
    batch.insert(keys::CUSTOMER_COUNTS_KEY, encode(&c));
    Ok(())
}

pub fn open_buckets(db: &sled::Db) -> Result<u64, StoreError> {
    Ok(db.get(keys::OPEN_BUCKETS_KEY)?.map(|v| decode::<OpenBuckets>(&v)).transpose()?.unwrap_or_default().0)
}

/// Buckets opened and closed (sealed, or moved away by a mapping) by a write, in its batch.
pub fn buckets_changed(
    db: &sled::Db,
    batch: &mut super::batch::Batch,
    opened: u64,
    closed: u64,
) -> Result<(), StoreError> {
    if opened == closed {
        return Ok(());
    }
    let n = open_buckets(db)?.saturating_add(opened).saturating_sub(closed);
    batch.insert(keys::OPEN_BUCKETS_KEY, encode(&OpenBuckets(n)));
    Ok(())
}

/// Both counts by a full scan: once at open for a store without them, and by the tests.
pub fn recount(db: &sled::Db) -> Result<Counts, StoreError> {
    let mut c = CustomerCounts::default();
    for kv in db.scan_prefix(keys::LIFECYCLE_PREFIX) {
        c.add(&decode(&kv?.1)?);
    }
    Ok((db.scan_prefix(keys::BUCKET_PREFIX).count() as u64, c))
}

/// Counts them once for a store written before they were kept; true if it did.
pub fn count_once(db: &sled::Db) -> Result<bool, StoreError> {
    if db.get(keys::OPEN_BUCKETS_KEY)?.is_some() && db.get(keys::CUSTOMER_COUNTS_KEY)?.is_some() {
        return Ok(false);
    }
    let (buckets, customers) = recount(db)?;
    let mut batch = super::batch::Batch::default();
    batch.insert(keys::OPEN_BUCKETS_KEY, encode(&OpenBuckets(buckets)));
    batch.insert(keys::CUSTOMER_COUNTS_KEY, encode(&customers));
    batch.apply_unlogged(db)?;
    Ok(true)
}
