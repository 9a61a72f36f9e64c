//! Sealing one (product, customer, dimension, hour): whole units to send, allocations that sum to them
//! exactly, and the fraction carried to the next hour. Pure arithmetic, no I/O.

use super::deadline::deadline;
use super::event::{Bucket, BucketKey, TagSet};
use super::quantity::{Micros, Overflow, SCALE};
use super::record::{Allocation, RecordKey, RecordState, SealedRecord};
use crate::clock::UnixMillis;

/// What a seal should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealParams {
    /// Seal every hour that starts before this.
    pub cutoff_hour_ms: UnixMillis,
    pub now_ms: UnixMillis,
    pub window_ms: i64,
    /// Products whose window is not `window_ms` (e.g. MeterUsage's 6 h for `identity = "deployment"`).
    pub product_windows_ms: std::collections::BTreeMap<String, i64>,
    pub margin_ms: i64,
    pub zero_records: bool,
}

impl SealParams {
    /// How long AWS accepts a record of `product` after its hour starts, in ms.
    pub fn window_for(&self, product: &str) -> i64 {
        self.product_windows_ms.get(product).copied().unwrap_or(self.window_ms)
    }
}

/// How records are sealed, from the configuration: built once, so every seal (the sealer's, a flush, a leaving
/// customer's final hour) uses the same window, margin and zero-record rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealPolicy {
    /// `pipeline.submission_window`.
    pub window_ms: i64,
    /// `products.NAME.submission_window` where it differs (a deployment product's is 6 h by default).
    pub product_windows_ms: std::collections::BTreeMap<String, i64>,
    /// `pipeline.safety_margin`.
    pub margin_ms: i64,
    /// `pipeline.zero_records`.
    pub zero_records: bool,
}

impl SealPolicy {
    /// A seal at `now_ms` of every hour before `cutoff_hour_ms`.
    pub fn params(&self, now_ms: UnixMillis, cutoff_hour_ms: UnixMillis) -> SealParams {
        SealParams {
            cutoff_hour_ms,
            now_ms,
            window_ms: self.window_ms,
            product_windows_ms: self.product_windows_ms.clone(),
            margin_ms: self.margin_ms,
            zero_records: self.zero_records,
        }
    }
}

/// The usage of one future record: its buckets' tag-set totals and the late share.
#[derive(Clone, Debug)]
pub struct RecordUsage {
    pub key: RecordKey,
    pub usage: HourUsage,
    pub late: Micros,
}

/// Groups buckets (in key order: hour first, so a series' hours come oldest first) into one usage per record:
/// (product, customer, dimension, hour) with every tag set.
pub fn group_buckets(buckets: impl IntoIterator<Item = (BucketKey, Bucket)>) -> Result<Vec<RecordUsage>, Overflow> {
    let mut groups: Vec<RecordUsage> = Vec::new();
    for (bk, bucket) in buckets {
        let key =
            RecordKey { hour_ms: bk.hour_ms, product: bk.product, identity: bk.identity, dimension: bk.dimension };
        match groups.last_mut() {
            Some(last) if last.key == key => {
                last.usage.buckets.push((bk.tags, bucket.total));
                last.late = last.late.try_add(bucket.late)?;
            }
            _ => groups.push(RecordUsage {
                key,
                usage: HourUsage { buckets: vec![(bk.tags, bucket.total)], carried_in: Micros::ZERO },
                late: bucket.late,
            }),
        }
    }
    Ok(groups)
}

/// Freezes one record: whole units and allocations ([`seal`]), its deadline (capped by `deadline_cap` for a
/// leaving customer), and `Carried` when nothing is to be sent. `carried_in` is the series' fraction so far; the
/// record's `carried_out` is what the series carries on.
pub fn seal_record(
    group: RecordUsage,
    carried_in: Micros,
    params: &SealParams,
    deadline_cap: Option<UnixMillis>,
) -> Result<SealedRecord, Overflow> {
    let RecordUsage { key, mut usage, late } = group;
    usage.carried_in = carried_in;
    let recorded = Micros::try_sum(usage.buckets.iter().map(|(_, m)| *m))?;
    recorded.try_add(carried_in)?;
    let s = seal(&usage);
    let nothing_to_send = s.quantity == 0 && !params.zero_records;
    let mut deadline_ms = deadline(key.hour_ms, params.window_for(&key.product), params.margin_ms);
    if let Some(cap) = deadline_cap {
        deadline_ms = deadline_ms.min(cap);
    }
    Ok(SealedRecord {
        deadline_ms,
        key,
        quantity: s.quantity,
        allocations: s.allocations,
        sealed_at_ms: params.now_ms,
        recorded,
        carried_in,
        carried_out: s.carried_out,
        late,
        sent_as: None,
        // Kept for the report; never queued, never sent.
        state: if nothing_to_send { RecordState::Carried } else { RecordState::Sealed },
    })
}

/// AWS accepts at most this many allocations per record.
pub const MAX_ALLOCATIONS: usize = 2500;

/// The tag-set totals of one record's hour.
#[derive(Clone, Debug, Default)]
pub struct HourUsage {
    /// (tag set, total) per bucket; the empty tag set is the untagged share.
    pub buckets: Vec<(TagSet, Micros)>,
    pub carried_in: Micros,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub quantity: u32,
    pub allocations: Vec<Allocation>,
    pub carried_out: Micros,
}

/// Whole units = ⌊(usage + carry-in)⌋, capped at i32::MAX (the excess is carried, never dropped).
/// Allocations: each tag set gets its own whole units; the units that only exist once fractions are
/// pooled (and the carried-in units) go to the largest fractions first, ties to the first tag set in key
/// order, so the allocations always sum exactly to the quantity.
pub fn seal(usage: &HourUsage) -> Sealed {
    let total = usage.buckets.iter().fold(usage.carried_in.0, |acc, (_, m)| acc + m.0);
    let scale = u128::from(SCALE);
    let units = (total / scale).min(i32::MAX as u128);
    let carried_out = Micros(total - units * scale);
    let quantity = units as u32;

    let tagged = usage.buckets.iter().any(|(t, m)| !t.is_empty() && m.0 > 0);
    if !tagged || quantity == 0 {
        return Sealed { quantity, allocations: Vec::new(), carried_out };
    }

    // Merge tag sets beyond AWS's allocation limit into the untagged share (largest sets keep their tags).
    let mut shares: Vec<(TagSet, u128)> = usage.buckets.iter().map(|(t, m)| (t.clone(), m.0)).collect();
    shares.sort_by(|a, b| a.0.cmp(&b.0));
    if shares.len() > MAX_ALLOCATIONS {
        let mut by_size: Vec<usize> = (0..shares.len()).collect();
        by_size.sort_by(|&a, &b| shares[b].1.cmp(&shares[a].1).then(a.cmp(&b)));
        let keep: std::collections::BTreeSet<usize> = by_size.into_iter().take(MAX_ALLOCATIONS - 1).collect();
        let mut merged = 0u128;
        let mut kept = Vec::new();
        for (i, s) in shares.into_iter().enumerate() {
            if keep.contains(&i) && !s.0.is_empty() { kept.push(s) } else { merged += s.1 }
        }
        kept.push((TagSet::new(), merged));
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        shares = kept;
    }

    let mut alloc: Vec<u128> = shares.iter().map(|(_, m)| (m / scale).min(units)).collect();
    let mut assigned: u128 = alloc.iter().sum();
    if assigned > units {
        // Only possible when the cap bit: trim from the end.
        for a in alloc.iter_mut().rev() {
            let cut = (*a).min(assigned - units);
            *a -= cut;
            assigned -= cut;
        }
    }
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| (shares[b].1 % scale).cmp(&(shares[a].1 % scale)).then(a.cmp(&b)));
    let mut i = 0;
    while assigned < units {
        alloc[order[i % order.len()]] += 1;
        assigned += 1;
        i += 1;
    }
    let allocations = shares
        .into_iter()
        .zip(alloc)
        .filter(|(_, q)| *q > 0)
        .map(|((tags, _), q)| Allocation { tags, quantity: q as u32 })
        .collect();
    Sealed { quantity, allocations, carried_out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tags(v: &str) -> TagSet {
        if v.is_empty() { TagSet::new() } else { [("team".to_string(), v.to_string())].into() }
    }

    #[test]
    fn fractions_are_carried_and_allocations_sum() {
        let s = seal(&HourUsage {
            buckets: vec![(tags("a"), Micros(1_600_000)), (tags("b"), Micros(1_600_000)), (tags(""), Micros(300_000))],
            carried_in: Micros(200_000),
        });
        // 3.7 total → 3 units, 0.7 carried.
        assert_eq!(s.quantity, 3);
        assert_eq!(s.carried_out, Micros(700_000));
        let sum: u32 = s.allocations.iter().map(|a| a.quantity).sum();
        assert_eq!(sum, 3);
        // a and b each own 1 whole unit; the pooled unit goes to the largest fraction (a, first in order).
        assert_eq!(
            s.allocations,
            vec![Allocation { tags: tags("a"), quantity: 2 }, Allocation { tags: tags("b"), quantity: 1 },]
        );
    }

    #[test]
    fn buckets_group_into_records_and_a_fraction_only_hour_is_carried() {
        let bk = |hour_ms, tag: &str| BucketKey {
            hour_ms,
            product: "p".into(),
            identity: crate::domain::event::Identity::Tenant("t".into()),
            dimension: "d".into(),
            tags: tags(tag),
        };
        let b = |m, late| Bucket { total: Micros(m), events: 1, late: Micros(late) };
        let groups =
            group_buckets([(bk(0, ""), b(400_000, 0)), (bk(0, "a"), b(300_000, 100)), (bk(3_600_000, ""), b(5, 5))])
                .unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].usage.buckets.len(), groups[0].late), (2, Micros(100)));
        let params = SealParams {
            cutoff_hour_ms: 0,
            now_ms: 7,
            window_ms: 3_600_000,
            product_windows_ms: Default::default(),
            margin_ms: 60_000,
            zero_records: false,
        };
        let r = seal_record(groups[0].clone(), Micros(400_000), &params, None).unwrap();
        assert_eq!(
            (r.quantity, r.carried_out, r.recorded, r.state.clone()),
            (1, Micros(100_000), Micros(700_000), RecordState::Sealed)
        );
        assert_eq!((r.deadline_ms, r.sealed_at_ms), (3_540_000, 7));
        let r = seal_record(groups[1].clone(), Micros::ZERO, &params, Some(10)).unwrap();
        assert_eq!((r.quantity, r.state, r.deadline_ms), (0, RecordState::Carried, 10));
        let zero = SealParams { zero_records: true, ..params.clone() };
        assert_eq!(seal_record(groups[1].clone(), Micros::ZERO, &zero, None).unwrap().state, RecordState::Sealed);
        // Sums that do not fit stop the seal instead of dropping a term.
        let huge = group_buckets([(bk(0, ""), b(u128::MAX, u128::MAX)), (bk(0, "a"), b(1, 1))]);
        assert_eq!(huge.unwrap_err(), Overflow);
        let g = group_buckets([(bk(0, ""), b(u128::MAX, 0)), (bk(0, "a"), b(1, 0))]).unwrap();
        assert_eq!(seal_record(g[0].clone(), Micros::ZERO, &params, None).unwrap_err(), Overflow);
    }

    #[test]
    fn untagged_usage_sends_no_allocations() {
        let s = seal(&HourUsage { buckets: vec![(tags(""), Micros(2_500_000))], carried_in: Micros(0) });
        assert_eq!((s.quantity, s.allocations.len(), s.carried_out), (2, 0, Micros(500_000)));
    }

    #[test]
    fn a_huge_hour_is_capped_and_the_rest_carried() {
        let s =
            seal(&HourUsage { buckets: vec![(tags(""), Micros::from_units(3_000_000_000))], carried_in: Micros(0) });
        assert_eq!(s.quantity, i32::MAX as u32);
        assert_eq!(s.carried_out, Micros::from_units(3_000_000_000 - i32::MAX as u64));
    }

    proptest! {
        #[test]
        fn conserves_every_micro_unit(
            shares in proptest::collection::vec((0u8..6, 0u64..5_000_000_000), 1..8),
            carry in 0u64..1_000_000,
        ) {
            let buckets: Vec<_> = shares.iter().enumerate()
                .map(|(i, (t, m))| (if *t == 0 { TagSet::new() } else { tags(&format!("{t}-{i}")) }, Micros(u128::from(*m))))
                .collect();
            let usage = HourUsage { buckets: buckets.clone(), carried_in: Micros(u128::from(carry)) };
            let s = seal(&usage);
            let total: u128 = buckets.iter().map(|(_, m)| m.0).sum::<u128>() + u128::from(carry);
            prop_assert_eq!(u128::from(s.quantity) * 1_000_000 + s.carried_out.0, total);
            if !s.allocations.is_empty() {
                prop_assert_eq!(s.allocations.iter().map(|a| u64::from(a.quantity)).sum::<u64>(), u64::from(s.quantity));
                prop_assert!(s.allocations.len() <= MAX_ALLOCATIONS);
            }
            if s.quantity < i32::MAX as u32 {
                prop_assert!(s.carried_out.0 < 1_000_000);
            }
        }
    }
}
