//! The hour summaries the usage-drop check reads (`store::hour_totals`): kept in the same writes as the usage,
//! equal to a full scan of the records and buckets after any interleaving of ingest, chunked seals and restarts,
//! counted once at open for a store written before them, and giving the same drops as the detection over every
//! record of the hours it reads.

use meterd::clock::HOUR_MS;
use meterd::config::LateUsage;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::quantity::Micros;
use meterd::domain::silence::Settings;
use meterd::silence::{last_ended_hour, last_ended_hour_by_scan};
use meterd::store::{SealParams, Store, StoreOptions, keys};
use proptest::prelude::*;

const DAY: i64 = 24 * HOUR_MS;
/// Monday 2026-11-02 00:00 UTC.
const MONDAY: i64 = 1_793_577_600_000;
/// The hour checked: a Monday 10:00 four weeks on, so every baseline hour (7 days, 4 weeks back) can hold usage.
const H: i64 = MONDAY + 28 * DAY + 10 * HOUR_MS;

/// The hour itself and its baseline hours, oldest first.
fn hours() -> Vec<i64> {
    let mut v: Vec<i64> = meterd::domain::silence::baseline_hours(H);
    v.push(H);
    v.sort_unstable();
    v
}

fn customer(c: u16) -> Identity {
    if c % 5 == 4 {
        Identity::Tenant(format!("t{c}"))
    } else {
        Identity::Aws { account_id: "111122223333".into(), license_arn: format!("arn:aws:license-manager::1:l-{c}") }
    }
}

fn ev(key: String, c: u16, dimension: u8, units: u64, at_ms: i64, tag: u8) -> UsageEvent {
    UsageEvent {
        idempotency_key: key,
        product: "p".into(),
        identity: customer(c),
        dimension: format!("d{dimension}"),
        quantity: Micros::from_units(units),
        timestamp_ms: Some(at_ms),
        tags: if tag == 0 { TagSet::new() } else { [("team".to_string(), format!("t{tag}"))].into() },
    }
}

fn open(dir: &std::path::Path, seal_chunk: usize) -> Store {
    let options = StoreOptions {
        cache_bytes: 16 * 1024 * 1024,
        min_free: meterd::store::space::MinFree::Bytes(0),
        seal_chunk,
        dedupe_keep_ms: meterd::store::DEFAULT_DEDUPE_KEEP_MS,
        stuck_after: Some(meterd::store::watch::DEFAULT_STUCK_AFTER),
    };
    Store::open_with(dir, options).unwrap()
}

fn params(cutoff_hour_ms: i64) -> SealParams {
    SealParams {
        cutoff_hour_ms,
        now_ms: cutoff_hour_ms,
        window_ms: DAY,
        margin_ms: 0,
        zero_records: false,
        product_windows_ms: Default::default(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    /// (customer, dimension, units, hour index into [`hours`], tag)
    Record(Vec<(u16, u8, u64, usize, u8)>),
    /// Seal every hour up to and including `hours()[i]`.
    Seal(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let units = prop_oneof![Just(0u64), Just(3), Just(40), Just(100), Just(250)];
    prop_oneof![
        6 => proptest::collection::vec((0u16..12, 0u8..2, units, 0usize..11, 0u8..2), 1..25).prop_map(Op::Record),
        2 => (0usize..11).prop_map(Op::Seal),
        1 => Just(Op::Restart),
    ]
}

/// Kept summaries = a full scan; the drops of every hour read = those of the detection over every record.
fn check(store: &Store, settings: &Settings) -> Result<(), TestCaseError> {
    let (kept, scanned) = store.hour_summaries_kept_and_recounted().unwrap();
    prop_assert_eq!(kept, scanned);
    for h in hours() {
        let now = h + HOUR_MS + 60_000;
        let kept = last_ended_hour(store, settings, now).unwrap();
        let scanned = last_ended_hour_by_scan(store, settings, now).unwrap();
        prop_assert_eq!(kept, scanned, "hour {}", meterd::clock::rfc3339(h));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn kept_summaries_equal_a_full_scan_and_give_the_same_drops(
        ops in proptest::collection::vec(op(), 1..24),
        seal_chunk in prop_oneof![Just(1usize), Just(3), Just(200)],
        top_customers in 0usize..4,
        min_baseline in prop_oneof![Just(0u64), Just(10)],
    ) {
        let settings = Settings { drop_below_percent: 20, min_baseline: Micros::from_units(min_baseline), top_customers };
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut store = open(dir.path(), seal_chunk);
        let hours = hours();
        let mut now = hours[0];
        let mut key = 0u64;
        for op in ops {
            match op {
                Op::Record(evs) => {
                    let events: Vec<UsageEvent> = evs
                        .iter()
                        .map(|(c, d, u, h, t)| {
                            key += 1;
                            ev(format!("k{key}"), *c, *d, *u, hours[*h] + 1_000 * key as i64 % HOUR_MS, *t)
                        })
                        .collect();
                    // Usage of an hour already sealed is late: it lands in the open hour, as in the agent.
                    rt.block_on(store.ingest(events, now, LateUsage::Carry)).unwrap();
                }
                Op::Seal(i) => {
                    now = now.max(hours[i] + HOUR_MS);
                    rt.block_on(store.seal(params(now))).unwrap();
                }
                Op::Restart => {
                    rt.block_on(store.close()).unwrap();
                    drop(store);
                    store = open(dir.path(), seal_chunk);
                }
            }
            check(&store, &settings)?;
        }
        rt.block_on(store.close()).unwrap();
    }
}

/// A steady seller with more customers per hour than the summaries list: the steady big customers are in every
/// hour's list, so the drops (a big customer that stopped, and only it) are the full detection's.
#[test]
fn with_more_customers_than_the_lists_hold_the_steady_big_ones_are_watched() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path(), 200);
    let n = meterd::store::hour_totals::TOP_PER_HOUR as u16 + 60;
    rt.block_on(async {
        for (i, h) in hours().into_iter().enumerate() {
            let mut events = Vec::new();
            for c in 0..n {
                // Customers 0-4 are big and steady; customer 0 stops in the hour checked. The rest are small, and
                // each hour a different few of them spike above the big ones' usage.
                let units = match c {
                    0 if h == H => 0,
                    0..5 => 1_000,
                    _ if (usize::from(c) + i) % 37 == 0 => 5_000,
                    _ => 1 + u64::from(c % 7),
                };
                if units > 0 {
                    events.push(ev(format!("{h}-{c}"), c, 0, units, h + 60_000, 0));
                }
            }
            store.ingest(events, h + 120_000, LateUsage::Carry).await.unwrap();
            store.seal(params(h + HOUR_MS)).await.unwrap();
        }
    });
    let settings = Settings { top_customers: 5, ..Settings::default() };
    let (kept, scanned) = store.hour_summaries_kept_and_recounted().unwrap();
    assert_eq!(kept, scanned);
    assert!(kept.iter().all(|s| !s.complete), "every hour has more records than its list holds");
    let drops = last_ended_hour(&store, &settings, H + HOUR_MS + 1).unwrap();
    assert_eq!(drops, last_ended_hour_by_scan(&store, &settings, H + HOUR_MS + 1).unwrap());
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!(drops[0].customer.as_deref(), Some(customer(0).label().as_str()));
    rt.block_on(store.close()).unwrap();
}

/// A leaving customer's open hours are sealed at once (a lifecycle seal), and a tenant then mapped to it has its
/// usage of that hour moved to the next hour (the AWS key is taken): the summaries follow both.
#[test]
fn a_leaving_customers_seal_and_a_mapping_that_moves_hours_keep_the_summaries() {
    use meterd::domain::customer::TenantMapping;
    use meterd::domain::lifecycle::{LifecycleEvent, LifecycleKind, Subject};
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = open(dir.path(), 200);
    rt.block_on(async {
        // Customers 0-5; customer 4 is tenant "t4".
        let events = (0..6u16).map(|c| ev(format!("e{c}"), c, 0, 7, H + 60_000, c as u8 % 2)).collect();
        store.ingest(events, H + 120_000, LateUsage::Carry).await.unwrap();
        let Identity::Aws { account_id, license_arn } = customer(1) else { unreachable!() };
        let leave = LifecycleEvent {
            kind: LifecycleKind::Deprovisioning,
            subject: Subject::License { license_arn, account_id: Some(account_id) },
            agreement_id: None,
            product_code: None,
            event_id: Some("ev-1".into()),
            source_type: "License Deprovisioned".into(),
        };
        let out =
            store.apply_lifecycle(leave, SealParams { now_ms: H + 130_000, ..params(H + HOUR_MS) }).await.unwrap();
        assert_eq!(out.records_sealed, 1, "{out:?}");
        let (kept, scanned) = store.hour_summaries_kept_and_recounted().unwrap();
        assert_eq!(kept, scanned);
        assert_eq!(kept[0].top.len(), 1, "the leaving customer's record is listed: {kept:?}");
        let m = TenantMapping {
            tenant_id: "t4".into(),
            product: "p".into(),
            identity: customer(1),
            agreement_id: None,
            updated_at_ms: H + 140_000,
        };
        assert_eq!(store.put_mapping(m, H + 140_000).await.unwrap(), 1);
        let moved = store.buckets().unwrap();
        assert!(moved.iter().any(|(k, _)| k.hour_ms == H + HOUR_MS), "moved to the next hour: {moved:?}");
        let (kept, scanned) = store.hour_summaries_kept_and_recounted().unwrap();
        assert_eq!(kept, scanned);
        assert_eq!(kept.len(), 2, "{kept:?}");
        store.close().await.unwrap();
    });
}

/// A store written before the summaries existed has them counted once at open.
#[test]
fn a_store_without_kept_summaries_counts_them_once_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let store = open(dir.path(), 3);
        for (i, h) in hours().into_iter().enumerate() {
            let events = (0..8u16).map(|c| ev(format!("{h}-{c}"), c, (c % 2) as u8, 10 + i as u64, h + 1, 0)).collect();
            store.ingest(events, h + 2, LateUsage::Carry).await.unwrap();
            if i % 2 == 0 {
                store.seal(params(h + HOUR_MS)).await.unwrap();
            }
        }
        store.close().await.unwrap();
    });
    {
        // As an earlier meterd left it: no summaries, no marker.
        let db = meterd::store::open_sled(&dir.path().join("sled"), 16 * 1024 * 1024).unwrap();
        assert!(db.get(keys::HOUR_TOTALS_KEPT_KEY).unwrap().is_some());
        let summaries: Vec<_> = db.scan_prefix(keys::HOUR_TOTALS_PREFIX).map(|kv| kv.unwrap().0).collect();
        assert!(!summaries.is_empty());
        for k in summaries {
            db.remove(k).unwrap();
        }
        db.remove(keys::HOUR_TOTALS_KEPT_KEY).unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path(), 3);
    let (kept, scanned) = store.hour_summaries_kept_and_recounted().unwrap();
    assert!(!kept.is_empty());
    assert_eq!(kept, scanned);
    rt.block_on(store.close()).unwrap();
    drop(store);
    let db = meterd::store::open_sled(&dir.path().join("sled"), 16 * 1024 * 1024).unwrap();
    assert!(db.get(keys::HOUR_TOTALS_KEPT_KEY).unwrap().is_some(), "stored, so the count is never repeated");
}
