//! The store driven directly: idempotency, group commit under concurrency, and a model-based property
//! test (random ingest groups, concurrent calls, restarts and repacks compared against an in-memory model).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use meterd::config::LateUsage::Carry;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::quantity::Micros;
use meterd::store::{IngestOutcome, Store};
use proptest::prelude::*;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;

fn event(key: &str, customer: &str, qty: u128, ts: Option<i64>) -> UsageEvent {
    UsageEvent {
        idempotency_key: key.into(),
        product: "p".into(),
        identity: Identity::Tenant(customer.into()),
        dimension: "d".into(),
        quantity: Micros(qty),
        timestamp_ms: ts,
        tags: TagSet::new(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn replay_returns_the_original_receipt_and_conflict_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let first = store.ingest(vec![event("a", "c", 1_500_000, None)], T0 + 10, Carry).await.unwrap();
        let IngestOutcome::Stored(r1) = &first[0] else { panic!("{first:?}") };
        assert!(!r1.replayed);

        // Same content later: the original receipt (original receive time, original hour).
        let again = store.ingest(vec![event("a", "c", 1_500_000, None)], T0 + 2 * HOUR, Carry).await.unwrap();
        let IngestOutcome::Replayed(r2) = &again[0] else { panic!("{again:?}") };
        assert!(r2.replayed);
        assert_eq!((r2.recorded_at_ms, r2.hour_ms), (r1.recorded_at_ms, r1.hour_ms));

        // Same key, different content: conflict, totals untouched.
        let other = store.ingest(vec![event("a", "c", 2_000_000, None)], T0 + 20, Carry).await.unwrap();
        assert!(matches!(&other[0], IngestOutcome::Conflict { existing } if existing.hour_ms == T0), "{other:?}");
        let b = store.buckets().unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].1.total, b[0].1.events), (Micros(1_500_000), 1));
        store.close().await.unwrap();
    });
}

#[test]
fn a_batch_with_one_key_twice_counts_it_once() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let out = store
            .ingest(
                vec![event("x", "c", 1, Some(T0)), event("x", "c", 1, Some(T0)), event("x", "c", 2, Some(T0))],
                T0,
                Carry,
            )
            .await
            .unwrap();
        assert!(matches!(out[0], IngestOutcome::Stored(_)));
        assert!(matches!(out[1], IngestOutcome::Replayed(_)));
        assert!(matches!(out[2], IngestOutcome::Conflict { .. }));
        assert_eq!(store.buckets().unwrap()[0].1.total, Micros(1));
        store.close().await.unwrap();
    });
}

#[test]
fn concurrent_replays_of_one_key_are_counted_once_and_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // 50 distinct keys, each sent by 4 concurrent callers.
                let key = format!("k{}", i % 50);
                store.ingest(vec![event(&key, "c", 1_000_000, Some(T0))], T0, Carry).await.unwrap()
            }));
        }
        let (mut stored, mut replayed) = (0, 0);
        for t in tasks {
            match &t.await.unwrap()[0] {
                IngestOutcome::Stored(_) => stored += 1,
                IngestOutcome::Replayed(_) => replayed += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((stored, replayed), (50, 150));
        assert_eq!(store.buckets().unwrap()[0].1.total, Micros::from_units(50));
        let fsyncs = store.counters().fsyncs.load(Ordering::Relaxed);
        assert!(fsyncs < 200, "200 concurrent calls should share fsyncs, got {fsyncs}");
        store.close().await.unwrap();
    });
}

#[test]
fn reopen_keeps_everything_and_checks_the_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        store.ingest(vec![event("a", "c", 7, Some(T0 + 5))], T0, Carry).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.event("a").unwrap().unwrap().quantity, Micros(7));
        assert_eq!(store.counters().events_stored.load(Ordering::Relaxed), 1);
        store.close().await.unwrap();
        drop(store);
        // A store written by a newer meterd is refused rather than misread.
        let db = meterd::store::open_sled(&dir.path().join("sled"), 64 << 20).unwrap();
        db.insert(meterd::store::keys::SCHEMA_VERSION_KEY, &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
        drop(db);
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    });
}

#[test]
fn a_data_dir_in_use_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().expect("a second store on the same dir must be refused");
        assert!(err.to_string().contains("is another meterd running on this data dir"), "{err}");
        store.close().await.unwrap();
    });
}

// ---- model-based property test ----

type Ev = (u8, u8, u32, u8);

#[derive(Debug, Clone)]
enum Op {
    /// One ingest call: (key index, customer index, micro-quantity, hour offset) per event.
    Ingest(Vec<Ev>),
    /// Several concurrent ingest calls.
    Concurrent(Vec<Vec<Ev>>),
    Restart,
    /// Copy the store into a fresh generation, optionally while a call is writing.
    Repack(Vec<Ev>),
}

fn op() -> impl Strategy<Value = Op> {
    // A small key space and few quantities make replays and conflicts common.
    let ev = (0u8..24, 0u8..3, prop_oneof![Just(1_000_000u32), Just(250_000), 0u32..3_000_000], 0u8..3);
    prop_oneof![
        6 => proptest::collection::vec(ev.clone(), 1..8).prop_map(Op::Ingest),
        3 => proptest::collection::vec(proptest::collection::vec(ev.clone(), 1..4), 2..6).prop_map(Op::Concurrent),
        1 => Just(Op::Restart),
        1 => proptest::collection::vec(ev, 0..4).prop_map(Op::Repack),
    ]
}

fn to_event((k, c, q, h): Ev) -> UsageEvent {
    event(&format!("key-{k}"), &format!("cust-{c}"), u128::from(q), Some(T0 + i64::from(h) * HOUR + 1))
}

#[derive(Default)]
struct Model {
    events: HashMap<String, UsageEvent>,
    totals: BTreeMap<(i64, String), Micros>,
}

impl Model {
    /// The outcome the model expects: 0 stored, 1 replayed, 2 conflict.
    fn apply(&mut self, ev: &UsageEvent) -> u8 {
        match self.events.get(&ev.idempotency_key) {
            Some(prev) if prev == ev => 1,
            Some(_) => 2,
            None => {
                self.events.insert(ev.idempotency_key.clone(), ev.clone());
                let hour = ev.timestamp_ms.unwrap() / HOUR * HOUR;
                let Identity::Tenant(c) = &ev.identity else { unreachable!() };
                let t = self.totals.entry((hour, c.clone())).or_default();
                *t = t.checked_add(ev.quantity).unwrap();
                0
            }
        }
    }
}

fn kind(o: &IngestOutcome) -> u8 {
    match o {
        IngestOutcome::Stored(_) => 0,
        IngestOutcome::Replayed(_) => 1,
        IngestOutcome::Conflict { .. } => 2,
        IngestOutcome::Overflow
        | IngestOutcome::LateRejected { .. }
        | IngestOutcome::NotActive { .. }
        | IngestOutcome::Invalid(_)
        | IngestOutcome::TooLate { .. } => 3,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..20)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut model = Model::default();
        let mut store = Store::open(dir.path()).unwrap();
        for op in ops {
            match op {
                Op::Ingest(evs) => {
                    let evs: Vec<_> = evs.into_iter().map(to_event).collect();
                    let out = rt.block_on(store.ingest(evs.clone(), T0, Carry)).unwrap();
                    for (ev, o) in evs.iter().zip(&out) {
                        prop_assert_eq!(kind(o), model.apply(ev), "{:?}", ev);
                    }
                }
                Op::Concurrent(calls) => {
                    let results = rt.block_on(async {
                        let tasks: Vec<_> = calls
                            .into_iter()
                            .map(|c| {
                                let store = store.clone();
                                let evs: Vec<_> = c.into_iter().map(to_event).collect();
                                tokio::spawn(async move { (evs.clone(), store.ingest(evs, T0, Carry).await.unwrap()) })
                            })
                            .collect();
                        let mut v = Vec::new();
                        for t in tasks {
                            v.push(t.await.unwrap());
                        }
                        v
                    });
                    // The order of concurrent calls is the writer's choice. Whatever it stored first is the
                    // truth for that key; every other use of the key must then be a replay or a conflict
                    // consistent with it.
                    for (evs, outs) in &results {
                        for (ev, o) in evs.iter().zip(outs) {
                            if kind(o) == 0 {
                                prop_assert_eq!(model.apply(ev), 0, "stored a key twice: {:?}", ev);
                            }
                        }
                    }
                    for (evs, outs) in &results {
                        for (ev, o) in evs.iter().zip(outs) {
                            if kind(o) != 0 {
                                prop_assert_eq!(kind(o), model.apply(ev), "{:?}", ev);
                            }
                        }
                    }
                }
                Op::Restart => {
                    rt.block_on(store.close()).unwrap();
                    drop(store);
                    store = Store::open(dir.path()).unwrap();
                }
                Op::Repack(evs) => {
                    let evs: Vec<_> = evs.into_iter().map(to_event).collect();
                    let (out, _) = rt.block_on(async {
                        let s2 = store.clone();
                        let evs = evs.clone();
                        let write = tokio::spawn(async move { s2.ingest(evs, T0, Carry).await.unwrap() });
                        let repacked = store.repack().await.unwrap();
                        (write.await.unwrap(), repacked)
                    });
                    for (ev, o) in evs.iter().zip(&out) {
                        prop_assert_eq!(kind(o), model.apply(ev), "{:?}", ev);
                    }
                }
            }
            let mut totals: BTreeMap<(i64, String), Micros> = BTreeMap::new();
            for (k, b) in store.buckets().unwrap() {
                let Identity::Tenant(c) = k.identity else { unreachable!() };
                let t = totals.entry((k.hour_ms, c)).or_default();
                *t = t.checked_add(b.total).unwrap();
            }
            totals.retain(|_, v| *v != Micros::ZERO);
            let mut expected = model.totals.clone();
            expected.retain(|_, v| *v != Micros::ZERO);
            prop_assert_eq!(totals, expected);
            prop_assert_eq!(store.counters().events_stored.load(Ordering::Relaxed), model.events.len() as u64);
        }
        rt.block_on(store.close()).unwrap();
    }
}
