//! Usage per hour × product × dimension (`h/`), kept in the same atomic write as the usage it sums, so the
//! usage-drop check (`silence.rs`) reads ~11 small values instead of every record and bucket of ~11 hours
//! (4-5 s with a 900,000-record hour).
//!
//! Each summary holds:
//! - `total`: exactly what a scan of the hour would sum for the product × dimension — its sealed records'
//!   `recorded` usage plus its open buckets' totals. Ingest adds each bucket's growth; a seal moves usage from
//!   buckets to records (same sum: nothing to change); a mapping moves a bucket's total from one hour to another;
//!   retention subtracts the records it removes.
//! - `top`: the [`TOP_PER_HOUR`] biggest sealed records of the hour by `recorded` usage (largest first, then by
//!   identity), written by the seal chunk that freezes them. Open buckets are not in it. `complete` says
//!   whether every sealed record with usage is in it (false once one was pushed out). Records are frozen, so the
//!   list is exact for the records it holds; what it cannot promise in bounded space is that a customer pushed out
//!   of every hour's list is not among the biggest by baseline (see `silence.rs`).
//!
//! A store written before the summaries existed has them counted once at open ([`recompute`]), as the queue's
//! totals are ([`super::pending`]).

use std::collections::BTreeMap;

use super::{StoreError, decode, encode, keys};
use crate::clock::UnixMillis;
use crate::domain::event::{Bucket, Identity};
use crate::domain::quantity::Micros;
use crate::domain::record::SealedRecord;

/// Records kept per hour × product × dimension in [`HourSummary::top`]: `silence.top_customers` is at most 100
/// (config.rs), so the candidates always cover the customers watched, whatever the setting.
pub const TOP_PER_HOUR: usize = 100;

/// One hour of one product × dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourSummary {
    pub hour_ms: UnixMillis,
    pub product: String,
    pub dimension: String,
    /// Sealed records' recorded usage plus open buckets' totals. Saturates (a comparison, not a ledger).
    pub total: Micros,
    /// The biggest sealed records: (customer, recorded usage), largest first, then by identity.
    pub top: Vec<(Identity, Micros)>,
    /// Every sealed record with usage is in `top`.
    pub complete: bool,
}

impl HourSummary {
    pub fn new(hour_ms: UnixMillis, product: &str, dimension: &str) -> Self {
        HourSummary {
            hour_ms,
            product: product.to_string(),
            dimension: dimension.to_string(),
            total: Micros::ZERO,
            top: Vec::new(),
            complete: true,
        }
    }

    fn add(&mut self, q: Micros) {
        self.total = Micros(self.total.0.saturating_add(q.0));
    }

    fn sub(&mut self, q: Micros) {
        self.total = Micros(self.total.0.saturating_sub(q.0));
    }

    /// A sealed record enters the list (replacing the customer's entry, should the record be written again).
    /// Runs once per sealed record (900,000 an hour at the ceiling): no allocation unless it enters the list.
    pub fn add_record(&mut self, identity: &Identity, recorded: Micros) {
        self.top.retain(|(i, _)| i != identity);
        if recorded == Micros::ZERO {
            return;
        }
        // Largest first, ties by identity: any fixed order gives the same top records, whatever order they arrive in.
        let after = |(i, q): &(Identity, Micros)| *q < recorded || (*q == recorded && i > identity);
        if self.top.len() >= TOP_PER_HOUR && !self.top.last().is_some_and(after) {
            self.complete = false;
            return;
        }
        let at = self.top.iter().position(after).unwrap_or(self.top.len());
        self.top.insert(at, (identity.clone(), recorded));
        if self.top.len() > TOP_PER_HOUR {
            self.top.truncate(TOP_PER_HOUR);
            self.complete = false;
        }
    }

    fn is_empty(&self) -> bool {
        self.total == Micros::ZERO && self.top.is_empty()
    }
}

/// Changes to the summaries within one write: read once each, written into the write's batch by [`Edits::write`].
pub struct Edits<'a> {
    db: &'a sled::Db,
    changed: BTreeMap<Vec<u8>, HourSummary>,
}

impl<'a> Edits<'a> {
    pub fn new(db: &'a sled::Db) -> Self {
        Edits { db, changed: BTreeMap::new() }
    }

    fn get(&mut self, hour_ms: UnixMillis, product: &str, dimension: &str) -> Result<&mut HourSummary, StoreError> {
        let key = keys::hour_totals_key(hour_ms, product, dimension);
        if !self.changed.contains_key(&key) {
            let s = match self.db.get(&key)? {
                Some(v) => decode(&v)?,
                None => HourSummary::new(hour_ms, product, dimension),
            };
            self.changed.insert(key.clone(), s);
        }
        Ok(self.changed.get_mut(&key).expect("inserted above"))
    }

    /// Usage added to an open bucket (ingest, or a bucket moved in by a mapping).
    pub fn add_usage(
        &mut self,
        hour_ms: UnixMillis,
        product: &str,
        dimension: &str,
        q: Micros,
    ) -> Result<(), StoreError> {
        if q != Micros::ZERO {
            self.get(hour_ms, product, dimension)?.add(q);
        }
        Ok(())
    }

    /// Usage leaving an hour (a bucket moved out by a mapping).
    pub fn remove_usage(
        &mut self,
        hour_ms: UnixMillis,
        product: &str,
        dimension: &str,
        q: Micros,
    ) -> Result<(), StoreError> {
        if q != Micros::ZERO {
            self.get(hour_ms, product, dimension)?.sub(q);
        }
        Ok(())
    }

    /// A record sealed from its buckets: the hour's total is unchanged (the same usage, now sealed), the record
    /// enters the biggest-records list.
    pub fn sealed(&mut self, r: &SealedRecord) -> Result<(), StoreError> {
        if r.recorded != Micros::ZERO {
            self.get(r.key.hour_ms, &r.key.product, &r.key.dimension)?.add_record(&r.key.identity, r.recorded);
        }
        Ok(())
    }

    /// A record removed by retention.
    pub fn removed(&mut self, r: &SealedRecord) -> Result<(), StoreError> {
        let s = self.get(r.key.hour_ms, &r.key.product, &r.key.dimension)?;
        s.sub(r.recorded);
        s.top.retain(|(i, _)| *i != r.key.identity);
        Ok(())
    }

    /// Puts every changed summary into `batch` (an empty one is removed).
    pub fn write(self, batch: &mut super::batch::Batch) {
        for (k, s) in self.changed {
            if s.is_empty() {
                batch.remove(k);
            } else {
                batch.insert(k, encode(&s));
            }
        }
    }
}

/// The summaries of one hour, one per product × dimension that has usage (a prefix scan of a few keys).
pub fn of_hour(db: &sled::Db, hour_ms: UnixMillis) -> Result<Vec<HourSummary>, StoreError> {
    db.scan_prefix(keys::hour_totals_hour_prefix(hour_ms)).map(|kv| decode(&kv?.1)).collect()
}

/// The summaries computed from records and buckets (what the kept ones must equal), in key order.
pub fn summarise(records: &[SealedRecord], buckets: &[(crate::domain::event::BucketKey, Bucket)]) -> Vec<HourSummary> {
    // By store key, so the order is the kept summaries' order.
    type Out = BTreeMap<Vec<u8>, HourSummary>;
    fn entry<'o>(out: &'o mut Out, h: UnixMillis, p: &str, d: &str) -> &'o mut HourSummary {
        out.entry(keys::hour_totals_key(h, p, d)).or_insert_with(|| HourSummary::new(h, p, d))
    }
    let mut out = Out::new();
    for r in records {
        let s = entry(&mut out, r.key.hour_ms, &r.key.product, &r.key.dimension);
        s.add(r.recorded);
        s.add_record(&r.key.identity, r.recorded);
    }
    for (k, b) in buckets {
        entry(&mut out, k.hour_ms, &k.product, &k.dimension).add(b.total);
    }
    out.into_values().filter(|s| !s.is_empty()).collect()
}

/// Every summary by a full scan of the records and buckets, in key order: once at open for a store written
/// before they were kept, and by the tests that check the kept ones against it. Reads one hour at a time.
pub fn recompute(db: &sled::Db) -> Result<Vec<HourSummary>, StoreError> {
    let mut hours = std::collections::BTreeSet::new();
    for prefix in [keys::RECORD_PREFIX, keys::BUCKET_PREFIX] {
        // Keys are hour first: jump from one hour to the next instead of visiting every key.
        let mut from = prefix.to_vec();
        while let Some(kv) = db.range(from.clone()..).next() {
            let (k, _) = kv?;
            let Some(h) = k.strip_prefix(prefix).and_then(|rest| rest.get(..8)) else { break };
            let hour_ms = (u64::from_be_bytes(h.try_into().expect("8 bytes")) ^ (1 << 63)) as i64;
            hours.insert(hour_ms);
            from = [prefix, &keys::hour_bytes(hour_ms + crate::clock::HOUR_MS)[..]].concat();
        }
    }
    let mut out = Vec::new();
    for hour_ms in hours {
        let records: Vec<SealedRecord> =
            db.scan_prefix(keys::record_hour_prefix(hour_ms)).map(|kv| decode(&kv?.1)).collect::<Result<_, _>>()?;
        let buckets = db
            .range(keys::bucket_hour_bound(hour_ms)..keys::bucket_hour_bound(hour_ms + crate::clock::HOUR_MS))
            .map(|kv| {
                let (k, v) = kv?;
                let key = keys::decode_bucket_key(&k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((key, decode(&v)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.extend(summarise(&records, &buckets));
    }
    Ok(out)
}

/// Every kept summary, in key order.
pub fn kept(db: &sled::Db) -> Result<Vec<HourSummary>, StoreError> {
    db.scan_prefix(keys::HOUR_TOTALS_PREFIX).map(|kv| decode(&kv?.1)).collect()
}

/// Counts the summaries once for a store written before they were kept; from then on every write keeps them.
pub fn count_once(db: &sled::Db) -> Result<Option<usize>, StoreError> {
    if db.get(keys::HOUR_TOTALS_KEPT_KEY)?.is_some() {
        return Ok(None);
    }
    let all = recompute(db)?;
    let mut batch = super::batch::Batch::default();
    // Leftovers of a count a crash cut short are replaced, not added to.
    for kv in db.scan_prefix(keys::HOUR_TOTALS_PREFIX) {
        batch.remove(kv?.0);
    }
    for s in &all {
        batch.insert(keys::hour_totals_key(s.hour_ms, &s.product, &s.dimension), encode(s));
    }
    batch.insert(keys::HOUR_TOTALS_KEPT_KEY, &[][..]);
    batch.apply_unlogged(db)?;
    Ok(Some(all.len()))
}

/// One series' usage in one hour: its sealed record's recorded usage plus its open buckets (a point read and a
/// range scan of the series' tag sets).
pub fn series_usage(
    db: &sled::Db,
    hour_ms: UnixMillis,
    product: &str,
    identity: &Identity,
    dimension: &str,
) -> Result<Micros, StoreError> {
    let rk = keys::record_key(&crate::domain::record::RecordKey {
        hour_ms,
        product: product.to_string(),
        identity: identity.clone(),
        dimension: dimension.to_string(),
    });
    let mut total = match db.get(rk)? {
        Some(v) => decode::<SealedRecord>(&v)?.recorded,
        None => Micros::ZERO,
    };
    for kv in db.scan_prefix(keys::record_prefix(hour_ms, product, identity, dimension)) {
        let b: Bucket = decode(&kv?.1)?;
        total = Micros(total.0.saturating_add(b.total.0));
    }
    Ok(total)
}
