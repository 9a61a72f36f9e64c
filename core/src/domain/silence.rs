//! Silence detection: the failure no pipeline sees by itself — the product stops *calling* meterd (a code path
//! lost its `record_usage`, a deploy broke a worker). Nothing fails, nothing is rejected; usage just stops.
//!
//! Each ended hour is compared with its own recent baseline, per product × dimension and per customer among the
//! biggest. The baseline is robust to daily and weekly cycles:
//!
//! - **daily**: the lower median of the same hour on the previous [`DAYS`] days (needs [`MIN_DAILY_SAMPLES`]
//!   of them: no baseline for a series younger than that);
//! - **weekly**: the lower median of the same hour on the same weekday of the previous [`WEEKS`] weeks.
//!
//! The baseline is the *lower* of the two, so a quiet weekend compared with last weekend is not a drop even
//! though the daily median (mostly weekdays) is high; and a product that grew since last week is compared with
//! its recent days. A drop is an hour below `drop_below_percent` of a baseline of at least `min_baseline`
//! (small series would flap). Hours before the first hour the store knows are unknown, not zero: they are left
//! out of the medians, so a new install does not read its own start as history.
//!
//! Pure: the caller reads the usage of exactly [`baseline_hours`] plus the hour itself.

use std::collections::BTreeMap;

use super::quantity::Micros;
use crate::clock::{HOUR_MS, UnixMillis};

const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;
/// Same hour on this many previous days.
pub const DAYS: i64 = 7;
/// Same hour and weekday on this many previous weeks.
pub const WEEKS: i64 = 4;
/// Days of history a series needs before it has a baseline.
pub const MIN_DAILY_SAMPLES: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// An hour below this share of its baseline is a drop (default 20).
    pub drop_below_percent: u32,
    /// Baselines below this (usage per hour) are never flagged.
    pub min_baseline: Micros,
    /// Per product × dimension, how many customers (the biggest by baseline) are watched one by one.
    pub top_customers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { drop_below_percent: 20, min_baseline: Micros::from_units(10), top_customers: 10 }
    }
}

/// One series' usage in one hour: (product, dimension, customer label).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub product: String,
    pub dimension: String,
    pub customer: String,
}

/// Usage per hour start, per series. Hours (or series) absent from it had no usage.
pub type Usage = BTreeMap<UnixMillis, BTreeMap<SeriesKey, Micros>>;

/// An hour far below its baseline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageDrop {
    pub hour_ms: UnixMillis,
    pub product: String,
    pub dimension: String,
    /// `None`: the product × dimension as a whole; `Some`: one of its biggest customers.
    pub customer: Option<String>,
    pub observed: Micros,
    pub baseline: Micros,
}

/// The hours a baseline for `hour_ms` reads, newest first, without duplicates (the same hour a week ago is
/// both the 7th day and the 1st week): 10 hours with the defaults.
pub fn baseline_hours(hour_ms: UnixMillis) -> Vec<UnixMillis> {
    let mut hours: Vec<_> =
        (1..=DAYS).map(|d| hour_ms - d * DAY_MS).chain((1..=WEEKS).map(|w| hour_ms - w * WEEK_MS)).collect();
    hours.sort_unstable_by(|a, b| b.cmp(a));
    hours.dedup();
    hours
}

/// The lower median: with an even count, the smaller middle value (a baseline errs low, never flags more).
fn lower_median(mut v: Vec<Micros>) -> Option<Micros> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[(v.len() - 1) / 2])
}

/// The baseline of one series for `hour_ms`, from its usage per hour; `None` without enough known history.
pub fn baseline(
    per_hour: &BTreeMap<UnixMillis, Micros>,
    hour_ms: UnixMillis,
    known_since: UnixMillis,
) -> Option<Micros> {
    let sample = |h: UnixMillis| (h >= known_since).then(|| per_hour.get(&h).copied().unwrap_or(Micros::ZERO));
    let daily: Vec<_> = (1..=DAYS).filter_map(|d| sample(hour_ms - d * DAY_MS)).collect();
    if daily.len() < MIN_DAILY_SAMPLES {
        return None;
    }
    let weekly: Vec<_> = (1..=WEEKS).filter_map(|w| sample(hour_ms - w * WEEK_MS)).collect();
    let daily = lower_median(daily)?;
    Some(match lower_median(weekly) {
        Some(w) => daily.min(w),
        None => daily,
    })
}

fn is_drop(observed: Micros, baseline: Micros, s: &Settings) -> bool {
    baseline >= s.min_baseline
        && baseline > Micros::ZERO
        && observed.0.saturating_mul(100) < baseline.0.saturating_mul(u128::from(s.drop_below_percent))
}

/// One series' usage per hour start.
pub type PerHour = BTreeMap<UnixMillis, Micros>;

/// Usage per product × dimension: its total per hour, and per customer (label) its usage per hour. A reader that
/// keeps totals apart (the store's hour summaries) fills `customers` only with the customers that can be watched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesUsage {
    pub totals: BTreeMap<(String, String), PerHour>,
    pub customers: BTreeMap<(String, String), BTreeMap<String, PerHour>>,
}

impl SeriesUsage {
    /// Totals and customers summed from every series' usage.
    pub fn of(usage: &Usage) -> Self {
        let mut out = SeriesUsage::default();
        for (&h, series) in usage {
            for (k, &q) in series {
                let pd = (k.product.clone(), k.dimension.clone());
                let t = out.totals.entry(pd.clone()).or_default().entry(h).or_default();
                // A comparison, not a ledger: a sum past u128 compares as the largest value instead of losing a term.
                *t = Micros(t.0.saturating_add(q.0));
                let c =
                    out.customers.entry(pd).or_default().entry(k.customer.clone()).or_default().entry(h).or_default();
                *c = Micros(c.0.saturating_add(q.0));
            }
        }
        out
    }
}

/// The drops of `hour_ms`: product × dimension totals first, then customers, each in key order.
/// `known_since` is the first hour the store has usage for (earlier hours are unknown, not silent).
pub fn detect(hour_ms: UnixMillis, usage: &Usage, known_since: UnixMillis, s: &Settings) -> Vec<UsageDrop> {
    detect_series(hour_ms, &SeriesUsage::of(usage), known_since, s)
}

/// The customers of one product × dimension watched one by one: the `top_customers` biggest by baseline (at
/// least `min_baseline`), in label order, with their baselines. The rest are too small to tell a stop from a
/// quiet hour, and the list stays bounded. Depends only on the hours before `hour_ms`.
pub fn watched<'a>(
    by_customer: &'a BTreeMap<String, PerHour>,
    hour_ms: UnixMillis,
    known_since: UnixMillis,
    s: &Settings,
) -> Vec<(Micros, &'a str, &'a PerHour)> {
    let mut watched: Vec<(Micros, &str, &PerHour)> = by_customer
        .iter()
        .filter_map(|(c, per_hour)| {
            baseline(per_hour, hour_ms, known_since).filter(|b| *b >= s.min_baseline).map(|b| (b, c.as_str(), per_hour))
        })
        .collect();
    watched.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    watched.truncate(s.top_customers);
    watched.sort_by(|a, b| a.1.cmp(b.1));
    watched
}

/// [`detect`] over usage already grouped per product × dimension.
pub fn detect_series(
    hour_ms: UnixMillis,
    usage: &SeriesUsage,
    known_since: UnixMillis,
    s: &Settings,
) -> Vec<UsageDrop> {
    if hour_ms < known_since {
        return Vec::new();
    }
    let observed = |per_hour: &PerHour| per_hour.get(&hour_ms).copied().unwrap_or(Micros::ZERO);
    let mut drops = Vec::new();
    for ((product, dimension), per_hour) in &usage.totals {
        if let Some(b) = baseline(per_hour, hour_ms, known_since)
            && is_drop(observed(per_hour), b, s)
        {
            drops.push(UsageDrop {
                hour_ms,
                product: product.to_string(),
                dimension: dimension.to_string(),
                customer: None,
                observed: observed(per_hour),
                baseline: b,
            });
        }
    }
    for ((product, dimension), by_customer) in &usage.customers {
        for (b, customer, per_hour) in watched(by_customer, hour_ms, known_since, s) {
            if is_drop(observed(per_hour), b, s) {
                drops.push(UsageDrop {
                    hour_ms,
                    product: product.to_string(),
                    dimension: dimension.to_string(),
                    customer: Some(customer.to_string()),
                    observed: observed(per_hour),
                    baseline: b,
                });
            }
        }
    }
    drops
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-11-02 00:00 UTC.
    const MONDAY: i64 = 1_793_577_600_000;

    fn key(customer: &str) -> SeriesKey {
        SeriesKey { product: "p".into(), dimension: "d".into(), customer: customer.into() }
    }

    /// `weeks` of history before `until` (exclusive): `units(hour)` per hour for `customer`.
    fn history(usage: &mut Usage, customer: &str, from: i64, until: i64, units: impl Fn(i64) -> u64) {
        let mut h = from;
        while h < until {
            let u = units(h);
            if u > 0 {
                usage.entry(h).or_default().insert(key(customer), Micros::from_units(u));
            }
            h += HOUR_MS;
        }
    }

    fn is_weekend(h: i64) -> bool {
        // Days since MONDAY, mod 7: 5 and 6 are Saturday and Sunday.
        matches!((h - MONDAY).div_euclid(DAY_MS).rem_euclid(7), 5 | 6)
    }

    #[test]
    fn baseline_reads_ten_hours() {
        let h = MONDAY + 3 * WEEK_MS;
        let hours = baseline_hours(h);
        assert_eq!(hours.len(), 10);
        assert_eq!(hours[0], h - DAY_MS);
        assert_eq!(*hours.last().unwrap(), h - 4 * WEEK_MS);
    }

    #[test]
    fn a_steady_customer_that_stops_is_flagged_in_the_first_silent_hour() {
        let start = MONDAY;
        let stop = MONDAY + 2 * WEEK_MS + 10 * HOUR_MS;
        let mut usage = Usage::new();
        history(&mut usage, "big", start, stop, |_| 100);
        history(&mut usage, "other", start, stop + 3 * HOUR_MS, |_| 400);
        let s = Settings::default();
        // The hour before the stop is fine.
        assert!(detect(stop - HOUR_MS, &usage, start, &s).is_empty());
        let drops = detect(stop, &usage, start, &s);
        assert_eq!(drops.len(), 1, "{drops:?}");
        assert_eq!(drops[0].customer.as_deref(), Some("big"));
        assert_eq!(drops[0].baseline, Micros::from_units(100));
        assert_eq!(drops[0].observed, Micros::ZERO);
        // Every product stops calling: the product × dimension total is flagged too.
        let drops = detect(stop + 3 * HOUR_MS, &usage, start, &s);
        assert_eq!(drops.iter().filter(|d| d.customer.is_none()).count(), 1, "{drops:?}");
    }

    #[test]
    fn quiet_weekends_are_not_flagged_once_a_week_is_known() {
        let start = MONDAY;
        let until = MONDAY + 4 * WEEK_MS;
        let mut usage = Usage::new();
        history(&mut usage, "c", start, until, |h| if is_weekend(h) { 3 } else { 100 });
        let s = Settings::default();
        let mut h = MONDAY + WEEK_MS;
        while h < until {
            assert_eq!(detect(h, &usage, start, &s), vec![], "hour {}", crate::clock::rfc3339(h));
            h += HOUR_MS;
        }
        // A weekday stop in week 4 is still caught.
        let mut stopped = usage.clone();
        let wed = MONDAY + 3 * WEEK_MS + 2 * DAY_MS + 9 * HOUR_MS;
        stopped.remove(&wed);
        assert_eq!(detect(wed, &stopped, start, &s).len(), 2, "total and the customer");
    }

    #[test]
    fn without_enough_history_nothing_is_flagged() {
        let start = MONDAY;
        let mut usage = Usage::new();
        history(&mut usage, "c", start, start + 2 * DAY_MS + 5 * HOUR_MS, |_| 100);
        // Two days known: no baseline yet, even though the hour is empty.
        assert!(detect(start + 2 * DAY_MS + 5 * HOUR_MS, &usage, start, &Settings::default()).is_empty());
        // Hours before the store's first hour are unknown, not silent: a third day makes the baseline.
        history(&mut usage, "c", start - DAY_MS, start, |_| 100);
        assert_eq!(detect(start + 2 * DAY_MS + 5 * HOUR_MS, &usage, start - DAY_MS, &Settings::default()).len(), 2);
    }

    #[test]
    fn small_series_and_small_dips_are_not_flagged() {
        let start = MONDAY;
        let h = MONDAY + WEEK_MS;
        let mut usage = Usage::new();
        history(&mut usage, "small", start, h, |_| 9);
        // "small" is alone in its own dimension, so its total is small too.
        for series in usage.values_mut() {
            if let Some(q) = series.remove(&key("small")) {
                series.insert(SeriesKey { dimension: "d2".into(), ..key("small") }, q);
            }
        }
        history(&mut usage, "dip", start, h, |_| 100);
        usage.entry(h).or_default().insert(key("dip"), Micros::from_units(20));
        let s = Settings::default();
        // "small" stopped, but its baseline (9) is under the minimum volume (10); "dip" is at 20%, not under it.
        assert_eq!(detect(h, &usage, start, &s), vec![]);
        usage.entry(h).or_default().insert(key("dip"), Micros(19_999_999));
        assert_eq!(detect(h, &usage, start, &s).len(), 2, "19.999999 is under 20% of 100: the customer and its total");
    }

    #[test]
    fn only_the_biggest_customers_are_watched_one_by_one() {
        let start = MONDAY;
        let h = MONDAY + WEEK_MS;
        let mut usage = Usage::new();
        for (i, c) in ["a", "b", "c"].iter().enumerate() {
            history(&mut usage, c, start, h, |_| 100 + i as u64);
        }
        let s = Settings { top_customers: 2, ..Settings::default() };
        let drops = detect(h, &usage, start, &s);
        let who: Vec<_> = drops.iter().map(|d| d.customer.clone()).collect();
        assert_eq!(who, vec![None, Some("b".to_string()), Some("c".to_string())]);
    }

    #[test]
    fn a_one_off_outage_in_the_history_does_not_lower_the_baseline() {
        let start = MONDAY;
        let h = MONDAY + 2 * WEEK_MS;
        let mut usage = Usage::new();
        history(&mut usage, "c", start, h, |x| if x == h - DAY_MS { 0 } else { 100 });
        let per_hour: BTreeMap<_, _> = usage.iter().filter_map(|(h, s)| s.get(&key("c")).map(|q| (*h, *q))).collect();
        let b = baseline(&per_hour, h, start);
        assert_eq!(b, Some(Micros::from_units(100)));
    }
}
