//! Usage drops of the last ended hour, read from the store's kept hour summaries ([`crate::store::hour_totals`]):
//! the hour itself and the hours its baseline needs ([`baseline_hours`], 10 with the defaults), a few small
//! values each, never the records of those hours (4-5 s for a 900,000-record hour before). `Admin.Status`,
//! `Admin.Report`, the dashboard and `/metrics` all call [`last_ended_hour`], so they show the same drops.
//!
//! **Product × dimension totals** are exact: each summary's total is what a scan of the hour would sum, kept in
//! the same writes as the usage.
//!
//! **Customers.** The customers considered are those among the `TOP_PER_HOUR`(crate::store::hour_totals::TOP_PER_HOUR) biggest sealed records of at
//! least one baseline hour, plus any customer with open buckets in a baseline hour (an hour not sealed yet, which
//! a day later only happens while the sealer catches up). Each of them gets its exact usage in every hour read
//! (from the lists, or a point read of its record where a list is not complete), so its baseline is exact; the
//! `silence.top_customers` biggest by baseline are watched, as [`crate::domain::silence::detect`] would pick them
//! over every customer. The two differ only if a customer that would be among those biggest was outranked by
//! `TOP_PER_HOUR` others in every one of its baseline hours — impossible while an hour has at most
//! `TOP_PER_HOUR` records of the product × dimension (the lists are then complete), and otherwise only when more
//! than `TOP_PER_HOUR` customers each beat it in every baseline hour.

use std::collections::BTreeMap;

use crate::clock::{HOUR_MS, UnixMillis, hour_start};
use crate::config::Config;
use crate::domain::event::Identity;
use crate::domain::event::{Bucket, BucketKey};
use crate::domain::quantity::Micros;
use crate::domain::record::SealedRecord;
use crate::domain::silence::{SeriesUsage, Settings, UsageDrop, baseline_hours, detect_series, watched};
use crate::store::hour_totals::HourSummary;
use crate::store::{Ledger, StoreError};

type Pd = (String, String);

/// What the detection reads of a ledger, hour by hour: every [`Ledger`] (the sled store's kept summaries), and the
/// fleet's shared ledger in PostgreSQL (`fleet::hours`), so both detect drops with this one code.
pub trait HourReads {
    fn first_hour(&self) -> Result<Option<UnixMillis>, StoreError>;
    fn hour_summaries(&self, hour_ms: UnixMillis) -> Result<Vec<HourSummary>, StoreError>;
    fn buckets_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<(BucketKey, Bucket)>, StoreError>;
    fn series_usage(
        &self,
        hour_ms: UnixMillis,
        product: &str,
        identity: &Identity,
        dimension: &str,
    ) -> Result<Micros, StoreError>;
    /// Every record of the hour: only the scan reference ([`last_ended_hour_by_scan`]) reads it.
    fn records_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>, StoreError>;
}

impl<L: Ledger + ?Sized> HourReads for L {
    fn first_hour(&self) -> Result<Option<UnixMillis>, StoreError> {
        Ledger::first_hour(self)
    }
    fn hour_summaries(&self, hour_ms: UnixMillis) -> Result<Vec<HourSummary>, StoreError> {
        Ledger::hour_summaries(self, hour_ms)
    }
    fn buckets_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<(BucketKey, Bucket)>, StoreError> {
        Ledger::buckets_of_hour(self, hour_ms)
    }
    fn series_usage(
        &self,
        hour_ms: UnixMillis,
        product: &str,
        identity: &Identity,
        dimension: &str,
    ) -> Result<Micros, StoreError> {
        Ledger::series_usage(self, hour_ms, product, identity, dimension)
    }
    fn records_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>, StoreError> {
        Ledger::records_of_hour(self, hour_ms)
    }
}

fn add(to: &mut Micros, q: Micros) {
    *to = Micros(to.0.saturating_add(q.0));
}

/// One baseline hour of one product × dimension as its summary lists it.
#[derive(Default)]
struct Listed {
    complete: bool,
    top: BTreeMap<String, Micros>,
}

/// The drops of the hour that ended last before `now_ms` (usage is compared as soon as the hour ends; the
/// seal does not have to have happened).
pub fn last_ended_hour(
    store: &(impl HourReads + ?Sized),
    settings: &Settings,
    now_ms: UnixMillis,
) -> Result<Vec<UsageDrop>, StoreError> {
    let hour = hour_start(now_ms) - HOUR_MS;
    let Some(known_since) = store.first_hour()? else { return Ok(Vec::new()) };
    if hour < known_since {
        return Ok(Vec::new());
    }
    let baseline: Vec<UnixMillis> = baseline_hours(hour).into_iter().filter(|h| *h >= known_since).collect();
    let mut usage = SeriesUsage::default();
    // The customers that can be watched, by label (the detection's name for them), with their identity.
    let mut candidates: BTreeMap<Pd, BTreeMap<String, Identity>> = BTreeMap::new();
    let mut listed: BTreeMap<(Pd, UnixMillis), Listed> = BTreeMap::new();
    for h in std::iter::once(hour).chain(baseline.iter().copied()) {
        for s in store.hour_summaries(h)? {
            let pd = (s.product, s.dimension);
            usage.totals.entry(pd.clone()).or_default().insert(h, s.total);
            if h == hour {
                continue;
            }
            let who = candidates.entry(pd.clone()).or_default();
            let l = listed.entry((pd, h)).or_default();
            l.complete = s.complete;
            for (identity, q) in s.top {
                let label = identity.label();
                l.top.insert(label.clone(), q);
                who.insert(label, identity);
            }
        }
    }
    // Open buckets of baseline hours: none once they are sealed (a day after they ended, normally).
    let mut open: BTreeMap<(Pd, UnixMillis), BTreeMap<String, Micros>> = BTreeMap::new();
    for &h in &baseline {
        for (k, b) in store.buckets_of_hour(h)? {
            let label = k.identity.label();
            let pd = (k.product, k.dimension);
            add(open.entry((pd.clone(), h)).or_default().entry(label.clone()).or_default(), b.total);
            candidates.entry(pd).or_default().insert(label, k.identity);
        }
    }
    // Every candidate's exact usage in every baseline hour.
    for (pd, who) in &candidates {
        let by_customer = usage.customers.entry(pd.clone()).or_default();
        for (label, identity) in who {
            let per_hour = by_customer.entry(label.clone()).or_default();
            for &h in &baseline {
                let key = (pd.clone(), h);
                let opened = open.get(&key).and_then(|o| o.get(label)).copied().unwrap_or(Micros::ZERO);
                let q = match listed.get(&key) {
                    Some(l) => match l.top.get(label) {
                        Some(q) => Micros(q.0.saturating_add(opened.0)),
                        None if l.complete => opened,
                        // Pushed out of a full list: its record (and open buckets) read directly.
                        None => store.series_usage(h, &pd.0, identity, &pd.1)?,
                    },
                    // No summary: no usage sealed in that hour for this product × dimension.
                    None => opened,
                };
                if q != Micros::ZERO {
                    per_hour.insert(h, q);
                }
            }
        }
    }
    // The watched customers' usage in the hour itself (the choice depends only on the hours before it).
    let mut observed = Vec::new();
    for (pd, by_customer) in &usage.customers {
        for (_, label, _) in watched(by_customer, hour, known_since, settings) {
            let identity = &candidates[pd][label];
            observed.push((pd.clone(), label.to_string(), store.series_usage(hour, &pd.0, identity, &pd.1)?));
        }
    }
    for (pd, label, q) in observed {
        if q != Micros::ZERO
            && let Some(per_hour) = usage.customers.get_mut(&pd).and_then(|c| c.get_mut(&label))
        {
            per_hour.insert(hour, q);
        }
    }
    Ok(detect_series(hour, &usage, known_since, settings))
}

/// The drops of the last ended hour computed from every record and bucket of the hours read (the detection
/// before hour summaries were kept): the reference [`last_ended_hour`] is tested against.
pub fn last_ended_hour_by_scan(
    store: &(impl HourReads + ?Sized),
    settings: &Settings,
    now_ms: UnixMillis,
) -> Result<Vec<UsageDrop>, StoreError> {
    use crate::domain::silence::{SeriesKey, Usage, detect};
    let hour = hour_start(now_ms) - HOUR_MS;
    let Some(known_since) = store.first_hour()? else { return Ok(Vec::new()) };
    if hour < known_since {
        return Ok(Vec::new());
    }
    let mut usage = Usage::new();
    for h in std::iter::once(hour).chain(baseline_hours(hour)).filter(|h| *h >= known_since) {
        let mut out: BTreeMap<SeriesKey, Micros> = BTreeMap::new();
        let mut put = |product: &str, dimension: &str, customer: String, q: Micros| {
            let k = SeriesKey { product: product.to_string(), dimension: dimension.to_string(), customer };
            add(out.entry(k).or_default(), q);
        };
        for r in store.records_of_hour(h)? {
            put(&r.key.product, &r.key.dimension, r.key.identity.label(), r.recorded);
        }
        for (k, b) in store.buckets_of_hour(h)? {
            put(&k.product, &k.dimension, k.identity.label(), b.total);
        }
        usage.insert(h, out);
    }
    Ok(detect(hour, &usage, known_since, settings))
}

/// The settings from the (validated) config.
pub fn settings(config: &Config) -> Settings {
    // Validated at start; a default here would only hide a bug, but never panics on input.
    config.silence.settings().unwrap_or_default()
}

/// Where `meterd_usage_drops` reads the last ended hour's drops: this agent's ledger, or in fleet mode the shared
/// one (`crate::fleet::hours::FleetDrops`: a spool holds no usage).
pub trait DropSource: Send + Sync {
    /// `Ok(None)`: not readable now (the fleet database is unreachable): the family is left out of that scrape and
    /// the rest is served, so the metrics an outage needs most (spool depth) are not lost with it.
    fn drops(&self, settings: &Settings, now_ms: UnixMillis) -> Result<Option<Vec<UsageDrop>>, String>;
}

/// The drops of this agent's own ledger.
pub struct LocalDrops(pub std::sync::Arc<dyn Ledger>);

impl DropSource for LocalDrops {
    fn drops(&self, settings: &Settings, now_ms: UnixMillis) -> Result<Option<Vec<UsageDrop>>, String> {
        last_ended_hour(self.0.as_ref(), settings, now_ms).map(Some).map_err(|e| e.to_string())
    }
}

/// `meterd_usage_drops{product, dimension}`: drops (the total and its biggest customers) in the last ended
/// hour, one series per configured product × dimension, so the label set is bounded by the config.
pub struct DropsMetric {
    pub config: std::sync::Arc<Config>,
    pub source: std::sync::Arc<dyn DropSource>,
    pub clock: crate::clock::SharedClock,
}

impl crate::metrics::Collect for DropsMetric {
    fn collect(&self, out: &mut crate::metrics::Encoder) -> Result<(), String> {
        let Some(drops) = self.source.drops(&settings(&self.config), self.clock.now_ms())? else { return Ok(()) };
        let name = "meterd_usage_drops";
        out.family(
            name,
            "gauge",
            "Series (the product x dimension total and its biggest customers) whose last ended hour fell below silence.drop_below_percent of its baseline",
        );
        for (product, p) in &self.config.products {
            for dim in &p.dimensions {
                let n = drops.iter().filter(|d| &d.product == product && &d.dimension == dim).count();
                out.sample(name, &[("product", product), ("dimension", dim)], n);
            }
        }
        Ok(())
    }
}
