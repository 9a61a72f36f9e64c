//! Usage drops of the last ended hour, read from the store: the hour itself and the hours its baseline needs
//! ([`baseline_hours`], 10 with the defaults) — sealed records and, for hours not sealed yet, open buckets —
//! never the whole history. `Admin.Status`, `Admin.Report`, the dashboard and `/metrics` all call
//! [`last_ended_hour`], so they show the same drops.

use std::collections::BTreeMap;

use crate::clock::{HOUR_MS, UnixMillis, hour_start};
use crate::config::Config;
use crate::domain::quantity::Micros;
use crate::domain::silence::{SeriesKey, Settings, Usage, UsageDrop, baseline_hours, detect};
use crate::store::{Ledger, StoreError};

/// Usage of one hour per (product, dimension, customer): sealed records' recorded usage plus open buckets.
fn hour_usage(store: &(impl Ledger + ?Sized), hour_ms: UnixMillis) -> Result<BTreeMap<SeriesKey, Micros>, StoreError> {
    let mut out: BTreeMap<SeriesKey, Micros> = BTreeMap::new();
    // An hour's total that does not fit is an error, never a silently dropped term.
    let mut add = |product: &str, dimension: &str, customer: String, q: Micros| {
        let e = out
            .entry(SeriesKey { product: product.to_string(), dimension: dimension.to_string(), customer })
            .or_default();
        *e = e.try_add(q).map_err(|_| StoreError::Overflow("an hour's usage for silence detection".into()))?;
        Ok::<_, StoreError>(())
    };
    for r in store.records_of_hour(hour_ms)? {
        add(&r.key.product, &r.key.dimension, r.key.identity.label(), r.recorded)?;
    }
    for (k, b) in store.buckets_of_hour(hour_ms)? {
        add(&k.product, &k.dimension, k.identity.label(), b.total)?;
    }
    Ok(out)
}

/// The drops of the hour that ended last before `now_ms` (usage is compared as soon as the hour ends; the
/// seal does not have to have happened).
pub fn last_ended_hour(
    store: &(impl Ledger + ?Sized),
    settings: &Settings,
    now_ms: UnixMillis,
) -> Result<Vec<UsageDrop>, StoreError> {
    let hour = hour_start(now_ms) - HOUR_MS;
    let Some(known_since) = store.first_hour()? else { return Ok(Vec::new()) };
    if hour < known_since {
        return Ok(Vec::new());
    }
    let mut usage = Usage::new();
    for h in std::iter::once(hour).chain(baseline_hours(hour)).filter(|h| *h >= known_since) {
        usage.insert(h, hour_usage(store, h)?);
    }
    Ok(detect(hour, &usage, known_since, settings))
}

/// The settings from the (validated) config.
pub fn settings(config: &Config) -> Settings {
    // Validated at start; a default here would only hide a bug, but never panics on input.
    config.silence.settings().unwrap_or_default()
}

/// `meterd_usage_drops{product, dimension}`: drops (the total and its biggest customers) in the last ended
/// hour, one series per configured product × dimension, so the label set is bounded by the config.
pub struct DropsMetric {
    pub config: std::sync::Arc<Config>,
    pub store: std::sync::Arc<dyn Ledger>,
    pub clock: crate::clock::SharedClock,
}

impl crate::metrics::Collect for DropsMetric {
    fn collect(&self, out: &mut crate::metrics::Encoder) -> Result<(), String> {
        let drops = last_ended_hour(self.store.as_ref(), &settings(&self.config), self.clock.now_ms())
            .map_err(|e| e.to_string())?;
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
