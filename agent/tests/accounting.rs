//! Invariants 3, 5 and 7 as a property: over random interleavings of events (on time and late), seals,
//! submission outcomes, expiries, restarts and repacks, every recorded micro-unit is accounted for exactly:
//! recorded = accepted + rejected + expired + pending + carried + open, and one record per
//! (product, customer, dimension, hour) with allocations that sum to its quantity. Customers are named three
//! ways — by marketplace identity, or by tenant ids that are mapped (and re-mapped) to those identities at random
//! moments, often after the identity already has usage for the same hours — and still at most one record per
//! AWS key (customer as AWS knows it, dimension, hour) can ever be sent. A deployment-mode product (`identity =
//! "deployment"`: no customer, MeterUsage, a 6 h window) shares the store and obeys the same invariants: one
//! record per dimension × hour, deadlines from its own window.

use std::collections::HashSet;

use meterd::config::LateUsage;
use meterd::domain::customer::TenantMapping;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::quantity::Micros;
use meterd::domain::record::{ExpiryReason, RecordState, RejectReason};
use meterd::report;
use meterd::store::{SealParams, Store};
use proptest::prelude::*;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;

#[derive(Debug, Clone)]
enum Op {
    /// (customer, dimension, micro-quantity, hour offset, tag) — hour offsets may be already sealed (late).
    /// Customers 0-2 are marketplace identities, 3-5 tenant ids, 6 the deployment product's (no customer).
    Record(Vec<(u8, u8, u32, u8, u8)>),
    /// Map tenant `3 + a` to identity `b`.
    Map(u8, u8),
    /// Move time to `T0 + n hours` (never backwards) and seal ended hours.
    Seal(u8),
    /// Settle some pending records: 0 accept, 1 reject, 2 expire, 3 mark in flight, 4 DuplicateRecord (lost).
    Settle(Vec<(u8, u8)>),
    Restart,
    /// Copy the store into a fresh generation.
    Repack,
    /// Remove tenant `3 + a`'s mapping (its held records not yet given an identity are at risk again).
    Unmap(u8),
    /// Retention: compact terminal history before `T0 + n hours`.
    Compact(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec((0u8..7, 0u8..2, 0u32..4_000_000, 0u8..8, 0u8..3), 1..10).prop_map(Op::Record),
        2 => (0u8..3, 0u8..3).prop_map(|(a, b)| Op::Map(a, b)),
        2 => (0u8..10).prop_map(Op::Seal),
        2 => proptest::collection::vec((0u8..16, 0u8..5), 1..6).prop_map(Op::Settle),
        1 => Just(Op::Restart),
        1 => Just(Op::Repack),
        1 => (0u8..3).prop_map(Op::Unmap),
        1 => (0u8..10).prop_map(Op::Compact),
    ]
}

/// The deployment-mode product, and its window (MeterUsage: 6 h).
const DEPLOYMENT_PRODUCT: &str = "ami";
const DEPLOYMENT_WINDOW: i64 = 6 * HOUR;

fn product(c: u8) -> String {
    if c == 6 { DEPLOYMENT_PRODUCT } else { "p" }.into()
}

fn customer(c: u8) -> Identity {
    if c == 6 {
        Identity::Deployment
    } else if c < 3 {
        Identity::Aws { account_id: format!("10000000000{c}"), license_arn: format!("arn:aws:x::1:l{c}") }
    } else {
        Identity::Tenant(format!("t{c}"))
    }
}

/// The customer AWS would see a record sent as (its lifecycle key), or None if it is never sent.
fn aws_customer(store: &Store, r: &meterd::domain::record::SealedRecord) -> Option<Vec<u8>> {
    let wire = match (&r.state, &r.key.identity, &r.sent_as) {
        (RecordState::Carried | RecordState::Merged { .. }, _, _) => return None,
        // AWS knows a deployment's buyer by the call's credentials: one key per product (host), dimension, hour.
        (_, Identity::Deployment, _) => return Some(format!("deployment/{}", r.key.product).into_bytes()),
        (_, Identity::Tenant(_), Some(sent)) => sent.clone(),
        (RecordState::Expired { .. }, Identity::Tenant(_), None) => return None,
        (_, Identity::Tenant(t), None) => store.mapping(t).unwrap()?.identity,
        (_, id, _) => id.clone(),
    };
    meterd::store::keys::lifecycle_key(&wire)
}

/// Seals in chunks of `seal_chunk` buckets (1 and 2 cut nearly every hour into several atomic writes).
fn open(dir: &std::path::Path, seal_chunk: usize) -> Store {
    let options = meterd::store::StoreOptions {
        cache_bytes: 64 * 1024 * 1024,
        min_free: meterd::store::space::MinFree::Bytes(0),
        seal_chunk,
        dedupe_keep_ms: meterd::store::DEFAULT_DEDUPE_KEEP_MS,
        stuck_after: Some(meterd::store::watch::DEFAULT_STUCK_AFTER),
    };
    Store::open_with(dir, options).unwrap()
}

/// The pending queue's kept totals and first entry agree with a full count of the queue.
fn check_pending_totals(store: &Store) -> Result<(), TestCaseError> {
    let view = store.pending_view().unwrap();
    prop_assert_eq!(view.totals, store.recount_pending().unwrap());
    let pending = store.pending_records(usize::MAX).unwrap();
    let scanned = meterd::domain::backlog::Backlog::of(&pending, |t| store.mapping(t).map(|m| m.is_some())).unwrap();
    prop_assert_eq!(view.totals.records, scanned.pending);
    prop_assert_eq!(view.totals.at_risk_records, scanned.at_risk);
    prop_assert_eq!(view.totals.units, pending.iter().map(|r| u64::from(r.quantity)).sum::<u64>());
    prop_assert_eq!(
        view.totals.in_flight,
        pending.iter().filter(|r| matches!(r.state, RecordState::InFlight { .. })).count() as u64
    );
    prop_assert_eq!(view.first_deadline_ms, scanned.most_urgent_deadline_ms);
    // Deadlines here grow with the hour (one window per product, no leaving customer): the most urgent record
    // is of the oldest pending hour.
    prop_assert_eq!(view.first_hour_ms.is_some(), scanned.oldest_pending_hour_ms.is_some());
    Ok(())
}

/// The kept hour summaries (usage per hour × product × dimension and its biggest records) agree with a full scan
/// of the records and buckets.
fn check_hour_summaries(store: &Store) -> Result<(), TestCaseError> {
    let (kept, scanned) = store.hour_summaries_kept_and_recounted().unwrap();
    prop_assert_eq!(kept, scanned);
    // So are the open buckets and customers per status.
    let (kept, scanned) = store.counts_kept_and_recounted().unwrap();
    prop_assert_eq!(kept, scanned);
    Ok(())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn every_recorded_unit_is_accounted_for(
        ops in proptest::collection::vec(op(), 1..30),
        reject_late in any::<bool>(),
        seal_chunk in prop_oneof![Just(1usize), Just(2), Just(meterd::store::SEAL_CHUNK_BUCKETS)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut store = open(dir.path(), seal_chunk);
        let late_policy = if reject_late { LateUsage::Reject } else { LateUsage::Carry };
        let mut now = T0;
        let mut recorded = Micros::ZERO;
        let mut lost_units = 0u64;
        let mut key = 0u64;
        for op in ops {
            match op {
                Op::Record(evs) => {
                    let events: Vec<UsageEvent> = evs
                        .iter()
                        .map(|(c, d, q, h, t)| {
                            key += 1;
                            UsageEvent {
                                idempotency_key: format!("k{key}"),
                                product: product(*c),
                                identity: customer(*c),
                                dimension: format!("d{d}"),
                                quantity: Micros(u128::from(*q)),
                                timestamp_ms: Some(T0 + i64::from(*h) * HOUR + 1000),
                                tags: if *t == 0 { TagSet::new() } else { [("team".to_string(), format!("t{t}"))].into() },
                            }
                        })
                        .collect();
                    let out = rt.block_on(store.ingest(events.clone(), now, late_policy)).unwrap();
                    for (ev, o) in events.iter().zip(out) {
                        match o {
                            meterd::store::IngestOutcome::Stored(_) => recorded = recorded.checked_add(ev.quantity).unwrap(),
                            meterd::store::IngestOutcome::LateRejected { .. } => prop_assert!(reject_late),
                            other => prop_assert!(false, "unexpected {:?}", other),
                        }
                    }
                }
                Op::Seal(h) => {
                    now = now.max(T0 + i64::from(h) * HOUR + 1);
                    rt.block_on(store.seal(SealParams {
                        cutoff_hour_ms: now / HOUR * HOUR,
                        now_ms: now,
                        window_ms: 24 * HOUR,
                        product_windows_ms: [(DEPLOYMENT_PRODUCT.to_string(), DEPLOYMENT_WINDOW)].into(),
                        margin_ms: 0,
                        zero_records: false,
                    }))
                    .unwrap();
                }
                Op::Map(t, c) => {
                    let m = TenantMapping {
                        tenant_id: format!("t{}", 3 + t),
                        product: "p".into(),
                        identity: customer(c),
                        agreement_id: None,
                        updated_at_ms: now,
                    };
                    rt.block_on(store.put_mapping(m, now)).unwrap();
                }
                Op::Settle(choices) => {
                    let pending = store.pending_records(usize::MAX).unwrap();
                    let mut seen = HashSet::new();
                    let mut updates = Vec::new();
                    for (i, what) in choices {
                        let Some(r) = pending.get(usize::from(i)) else { continue };
                        if !seen.insert(usize::from(i)) {
                            continue;
                        }
                        // As the submitter does: a held record goes out only once its tenant is mapped, and keeps
                        // the identity it is sent as; an unmapped one can only expire.
                        let mut sent_as = r.sent_as.clone();
                        if let Identity::Tenant(t) = &r.key.identity && sent_as.is_none() {
                            match store.mapping(t).unwrap() {
                                Some(m) => sent_as = Some(m.identity),
                                None if what == 2 => {}
                                None => continue,
                            }
                        }
                        let state = match what {
                            0 => RecordState::Accepted { metering_record_id: Some("id".into()), aws_request_id: None, at_ms: now, verify: false },
                            1 => RecordState::Rejected { reason: RejectReason::CustomerNotSubscribed, aws_request_id: None, at_ms: now },
                            2 => RecordState::Expired { reason: ExpiryReason::DeadlinePassed, at_ms: now },
                            4 => {
                                lost_units += u64::from(r.quantity);
                                RecordState::Rejected { reason: RejectReason::DuplicateRecord, aws_request_id: None, at_ms: now }
                            }
                            _ => RecordState::InFlight { attempts: 1, next_attempt_ms: now },
                        };
                        updates.push(meterd::domain::record::SealedRecord { state, sent_as, ..r.clone() });
                    }
                    rt.block_on(store.update_records(updates)).unwrap();
                }
                Op::Restart => {
                    rt.block_on(store.close()).unwrap();
                    drop(store);
                    store = open(dir.path(), seal_chunk);
                }
                Op::Repack => {
                    rt.block_on(store.repack()).unwrap();
                }
                Op::Unmap(t) => {
                    rt.block_on(store.remove_mapping(&format!("t{}", 3 + t))).unwrap();
                }
                Op::Compact(h) => {
                    rt.block_on(store.compact(T0 + i64::from(h) * HOUR)).unwrap();
                }
            }
            check_pending_totals(&store)?;
            check_hour_summaries(&store)?;
            let rep = rt.block_on(report::build(&store)).unwrap();
            prop_assert!(rep.totals.reconciled, "does not reconcile: {:?}", rep.totals);
            prop_assert_eq!(rep.totals.recorded.clone(), recorded.to_string());
            prop_assert_eq!(rep.totals.lost_units, lost_units);
            // The report read in pages (small ones: every region boundary and tag-set straddle is crossed) has the
            // same totals and, in summary, the same rows.
            let paged = rt
                .block_on(meterd::report_stream::summarize(&store, &meterd::report_stream::Filter::default(), 3))
                .unwrap();
            prop_assert_eq!(&paged.totals, &rep.totals);
            prop_assert_eq!(paged.selected.rows as usize, rep.rows.len());
            // One record per (product, customer, dimension, hour) and per AWS key; allocations sum to the quantity.
            let mut keys = HashSet::new();
            let mut aws_keys = HashSet::new();
            for r in store.records().unwrap() {
                prop_assert!(keys.insert(r.key.clone()), "two records for {:?}", r.key);
                if let Some(customer) = aws_customer(&store, &r) {
                    let k = (r.key.hour_ms, customer, r.key.dimension.clone());
                    prop_assert!(aws_keys.insert(k.clone()), "two records for AWS key {:?}: {:?}", k, r);
                }
                if !r.allocations.is_empty() {
                    prop_assert_eq!(r.allocations.iter().map(|a| u64::from(a.quantity)).sum::<u64>(), u64::from(r.quantity));
                }
                prop_assert_eq!(r.key.hour_ms % HOUR, 0);
                let window = if r.key.product == DEPLOYMENT_PRODUCT { DEPLOYMENT_WINDOW } else { 24 * HOUR };
                prop_assert_eq!(r.deadline_ms, meterd::domain::deadline::deadline(r.key.hour_ms, window, 0));
                prop_assert_eq!(r.key.identity == Identity::Deployment, r.key.product == DEPLOYMENT_PRODUCT);
                prop_assert!(store.sealed_through().unwrap().is_some_and(|s| r.key.hour_ms < s));
            }
        }
        rt.block_on(store.close()).unwrap();
    }
}

#[test]
fn a_terminal_state_is_final_and_sealed_content_is_frozen() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let ev = UsageEvent {
            idempotency_key: "a".into(),
            product: "p".into(),
            identity: Identity::Legacy { customer_identifier: "c".into() },
            dimension: "d".into(),
            quantity: Micros::from_units(3),
            timestamp_ms: Some(T0),
            tags: TagSet::new(),
        };
        store.ingest(vec![ev], T0, LateUsage::Carry).await.unwrap();
        let params = SealParams {
            cutoff_hour_ms: T0 + HOUR,
            now_ms: T0 + HOUR,
            window_ms: 24 * HOUR,
            product_windows_ms: Default::default(),
            margin_ms: 0,
            zero_records: false,
        };
        assert_eq!(store.seal(params.clone()).await.unwrap().records, 1);
        assert_eq!(store.seal(params).await.unwrap().records, 0, "sealing is idempotent");
        let r = store.pending_records(10).unwrap().remove(0);
        assert_eq!(r.quantity, 3);
        let changed = meterd::domain::record::SealedRecord { quantity: 4, ..r.clone() };
        assert!(store.update_records(vec![changed]).await.is_err(), "sealed content must not change");
        let accepted = meterd::domain::record::SealedRecord {
            state: RecordState::Accepted { metering_record_id: None, aws_request_id: None, at_ms: 0, verify: false },
            ..r.clone()
        };
        store.update_records(vec![accepted]).await.unwrap();
        assert_eq!(store.pending_count().unwrap(), 0);
        let back = meterd::domain::record::SealedRecord { state: RecordState::Sealed, ..r };
        assert!(store.update_records(vec![back]).await.is_err(), "a terminal state is final");
        store.close().await.unwrap();
    });
}

#[test]
fn retention_compacts_terminal_history_and_the_report_still_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let mut key = 0;
        for h in 0..6i64 {
            for c in 0..3 {
                key += 1;
                let ev = UsageEvent {
                    idempotency_key: format!("k{key}"),
                    product: "p".into(),
                    identity: Identity::Legacy { customer_identifier: format!("c{c}") },
                    dimension: "d".into(),
                    quantity: Micros(1_700_000),
                    timestamp_ms: Some(T0 + h * HOUR),
                    tags: TagSet::new(),
                };
                store.ingest(vec![ev], T0 + h * HOUR, LateUsage::Carry).await.unwrap();
            }
        }
        let params = SealParams {
            cutoff_hour_ms: T0 + 6 * HOUR,
            now_ms: T0 + 6 * HOUR,
            window_ms: 24 * HOUR,
            product_windows_ms: Default::default(),
            margin_ms: 0,
            zero_records: false,
        };
        store.seal(params).await.unwrap();
        // Settle all but the newest hour's records.
        let settled: Vec<_> = store
            .pending_records(usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|r| r.key.hour_ms < T0 + 5 * HOUR)
            .map(|r| meterd::domain::record::SealedRecord {
                state: RecordState::Accepted {
                    metering_record_id: Some("id".into()),
                    aws_request_id: None,
                    at_ms: 0,
                    verify: false,
                },
                ..r
            })
            .collect();
        store.update_records(settled).await.unwrap();
        let before = report::build(&store).await.unwrap();
        assert!(before.totals.reconciled);
        let records_before = store.records().unwrap().len();

        // Cut off everything before hour 3: hours 0-2 are terminal and go. Their idempotency keys stay: they leave
        // with the dedupe window (48 h after arrival, `tests/dedupe.rs`), not with retention.
        let removed = store.compact(T0 + 3 * HOUR).await.unwrap();
        assert_eq!(removed.events, 0);
        assert!(removed.records > 0 && removed.records < records_before as u64);
        let after = report::build(&store).await.unwrap();
        assert!(after.totals.reconciled, "{:?}", after.totals);
        assert_eq!(after.totals.recorded, before.totals.recorded, "compacted usage still counts");
        assert_eq!(after.totals.accepted, before.totals.accepted);
        assert_eq!(after.totals.compacted_records, removed.records);
        assert!(after.rows.iter().all(|r| r.hour >= T0 + 3 * HOUR), "old rows are gone");
        assert!(store.event("k1").unwrap().is_some() && store.event(&format!("k{key}")).unwrap().is_some());
        // Pending records are never compacted, whatever their age.
        let removed = store.compact(T0 + 100 * HOUR).await.unwrap();
        assert_eq!(store.pending_count().unwrap(), 3);
        assert!(report::build(&store).await.unwrap().totals.reconciled, "{removed:?}");
        store.close().await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.counters().events_stored.load(std::sync::atomic::Ordering::Relaxed),
            18,
            "a counter never goes back"
        );
        store.close().await.unwrap();
    });
}
