//! Sealing in chunks: the same records whatever the chunk size (carries across hours included), a seal cut
//! short resumes exactly where its durable progress says, usage arriving for an hour being sealed goes where usage
//! of a sealed hour goes, and ingest runs between the chunks of a seal.

use meterd::config::LateUsage;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::quantity::Micros;
use meterd::domain::record::SealedRecord;
use meterd::report;
use meterd::store::{IngestOutcome, SealParams, Store, StoreOptions, keys};

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;

fn open(dir: &std::path::Path, seal_chunk: usize) -> Store {
    let options = StoreOptions {
        cache_bytes: 64 * 1024 * 1024,
        min_free: meterd::store::space::MinFree::Bytes(0),
        seal_chunk,
        dedupe_keep_ms: meterd::store::DEFAULT_DEDUPE_KEEP_MS,
        stuck_after: Some(meterd::store::watch::DEFAULT_STUCK_AFTER),
    };
    Store::open_with(dir, options).unwrap()
}

fn ev(key: String, customer: u32, dimension: u32, micros: u128, at_ms: i64, team: u32) -> UsageEvent {
    UsageEvent {
        idempotency_key: key,
        product: "p".into(),
        identity: Identity::Legacy { customer_identifier: format!("c{customer}") },
        dimension: format!("d{dimension}"),
        quantity: Micros(micros),
        timestamp_ms: Some(at_ms),
        tags: if team == 0 { TagSet::new() } else { [("team".to_string(), format!("t{team}"))].into() },
    }
}

/// Three hours of 40 series, each with up to three tag sets and fractions that carry from hour to hour.
fn usage() -> Vec<UsageEvent> {
    let mut out = Vec::new();
    for h in 0..3i64 {
        for c in 0..20u32 {
            for d in 0..2u32 {
                for team in 0..(1 + (c + d) % 3) {
                    let micros = 300_000 + u128::from(c * 37_000 + d * 11_000 + team * 5_000) + h as u128 * 123_457;
                    out.push(ev(format!("k{h}-{c}-{d}-{team}"), c, d, micros, T0 + h * HOUR + 60_000, team));
                }
            }
        }
    }
    out
}

fn params(cutoff_hour_ms: i64) -> SealParams {
    SealParams {
        cutoff_hour_ms,
        now_ms: cutoff_hour_ms,
        window_ms: 24 * HOUR,
        product_windows_ms: Default::default(),
        margin_ms: 0,
        zero_records: false,
    }
}

/// The closed store's live generation, opened with sled directly.
fn raw(dir: &std::path::Path) -> sled::Db {
    let live = meterd::store::generation::current(dir).unwrap();
    meterd::store::open_sled(&dir.join(live), 1 << 20).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// What a record says, without when it was sealed.
fn content(records: Vec<SealedRecord>) -> Vec<String> {
    records.into_iter().map(|r| format!("{:?}", SealedRecord { sealed_at_ms: 0, ..r })).collect()
}

#[test]
fn any_chunk_size_seals_the_same_records_as_one_write() {
    let rt = rt();
    let mut sealed = Vec::new();
    for chunk in [1, 7, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), chunk);
        rt.block_on(async {
            store.ingest(usage(), T0 + 3 * HOUR, LateUsage::Carry).await.unwrap();
            let s = store.seal(params(T0 + 3 * HOUR)).await.unwrap();
            assert_eq!((s.buckets, s.sealed_through), (usage().len() as u64, Some(T0 + 3 * HOUR)));
            assert_eq!(store.open_bucket_count().unwrap(), 0);
            assert!(store.carries().unwrap().iter().any(|c| *c != Micros::ZERO), "fractions carry on");
            sealed.push((content(store.records().unwrap()), store.carries().unwrap()));
            store.close().await.unwrap();
        });
    }
    assert_eq!(sealed[0], sealed[2], "chunks of one bucket");
    assert_eq!(sealed[1], sealed[2], "chunks of seven buckets");
}

#[test]
fn a_seal_cut_short_resumes_from_its_progress_and_its_hours_take_usage_as_late() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let cutoff = T0 + 3 * HOUR;
    let expected = {
        let other = tempfile::tempdir().unwrap();
        let store = open(other.path(), 100_000);
        rt.block_on(async {
            store.ingest(usage(), cutoff, LateUsage::Carry).await.unwrap();
            store.seal(params(cutoff)).await.unwrap();
            let r = content(store.records().unwrap());
            store.close().await.unwrap();
            r
        })
    };
    rt.block_on(async {
        let store = open(dir.path(), 5);
        store.ingest(usage(), cutoff, LateUsage::Carry).await.unwrap();
        store.close().await.unwrap();
    });
    // What the first chunk of a seal leaves durable (with its records, none here): the watermark at the target
    // and the progress. A crash right after it looks exactly like this.
    {
        let db = raw(dir.path());
        let through = meterd::store::schema::meta::StoredSealedThrough { cutoff_ms: cutoff };
        db.insert(keys::SEALED_THROUGH_KEY, meterd::store::schema::encode(&through)).unwrap();
        let progress = meterd::store::SealProgress { cutoff_ms: cutoff, resume_key: keys::BUCKET_PREFIX.to_vec() };
        db.insert(keys::SEAL_PROGRESS_KEY, meterd::store::schema::encode(&progress)).unwrap();
        db.flush().unwrap();
    }
    rt.block_on(async {
        let store = open(dir.path(), 5);
        // Readers still see the hours being sealed as open usage.
        assert_eq!(store.buckets_of_hour(T0 + HOUR).unwrap().len(), usage().len() / 3);
        let before = report::build(&store).await.unwrap();
        assert!(before.totals.reconciled, "{:?}", before.totals);
        // Usage of an hour being sealed never lands behind the seal: it is late, in the open hour.
        let late = ev("late".into(), 0, 0, 2_000_000, T0 + HOUR + 5, 0);
        let out = store.ingest(vec![late], cutoff + 10, LateUsage::Carry).await.unwrap();
        let IngestOutcome::Stored(receipt) = &out[0] else { panic!("{out:?}") };
        assert_eq!(receipt.hour_ms, cutoff);
        let refused = ev("refused".into(), 0, 0, 1, T0 + 5, 0);
        let out = store.ingest(vec![refused], cutoff + 10, LateUsage::Reject).await.unwrap();
        assert!(matches!(out[0], IngestOutcome::LateRejected { .. }), "{out:?}");
        // An earlier cutoff than the seal under way still finishes it.
        let s = store.seal(params(T0 + HOUR)).await.unwrap();
        assert_eq!((s.buckets, s.sealed_through), (usage().len() as u64, Some(cutoff)));
        assert_eq!(content(store.records().unwrap()), expected, "resumed seal = one uninterrupted seal");
        assert_eq!(store.buckets_of_hour(cutoff).unwrap().len(), 1, "the late event's bucket stays open");
        let after = report::build(&store).await.unwrap();
        assert!(after.totals.reconciled, "{:?}", after.totals);
        assert_eq!(store.seal(params(cutoff)).await.unwrap().records, 0, "nothing is sealed twice");
        store.close().await.unwrap();
    });
    let db = raw(dir.path());
    assert!(db.get(keys::SEAL_PROGRESS_KEY).unwrap().is_none(), "a finished seal leaves no progress");
}

#[test]
fn ingest_goes_on_between_chunks_and_nothing_is_left_behind_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let cutoff = T0 + 3 * HOUR;
    rt.block_on(async {
        let store = open(dir.path(), 1);
        store.ingest(usage(), cutoff, LateUsage::Carry).await.unwrap();
        let sealing = {
            let store = store.clone();
            tokio::spawn(async move { store.seal(params(cutoff)).await })
        };
        // Callers keep recording usage of the hours being sealed (and of the open hour) while it runs.
        let mut recorded = 0u32;
        while !sealing.is_finished() && recorded < 2_000 {
            let h = i64::from(recorded % 4);
            let e = ev(format!("during-{recorded}"), recorded % 20, 0, 1_000_000, T0 + h * HOUR + 7, 0);
            let out = store.ingest(vec![e], cutoff + 10, LateUsage::Carry).await.unwrap();
            assert!(matches!(out[0], IngestOutcome::Stored(_)), "{out:?}");
            recorded += 1;
        }
        sealing.await.unwrap().unwrap();
        assert!(recorded > 0);
        assert!(store.buckets().unwrap().iter().all(|(k, _)| k.hour_ms >= cutoff), "no bucket behind the seal");
        let rep = report::build(&store).await.unwrap();
        assert!(rep.totals.reconciled, "{:?}", rep.totals);
        let mut seen = std::collections::HashSet::new();
        assert!(store.records().unwrap().into_iter().all(|r| seen.insert(r.key)), "one record per key");
        store.close().await.unwrap();
    });
}

#[test]
fn a_store_without_kept_queue_totals_counts_them_once_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let store = open(dir.path(), 5_000);
        store.ingest(usage(), T0 + 3 * HOUR, LateUsage::Carry).await.unwrap();
        store.seal(params(T0 + 3 * HOUR)).await.unwrap();
        store.close().await.unwrap();
    });
    {
        // As an earlier meterd left it.
        let db = raw(dir.path());
        db.remove(keys::PENDING_KEY).unwrap();
        db.flush().unwrap();
    }
    rt.block_on(async {
        let store = open(dir.path(), 5_000);
        let totals = store.pending_view().unwrap().totals;
        assert_eq!(totals, store.recount_pending().unwrap());
        assert_eq!(totals.records, store.records().unwrap().iter().filter(|r| !r.state.is_terminal()).count() as u64);
        assert!(totals.records > 0 && totals.units > 0);
        store.close().await.unwrap();
    });
    let db = raw(dir.path());
    assert!(db.get(keys::PENDING_KEY).unwrap().is_some(), "stored, so the count is never repeated");
}

/// The first chunk's write moves the watermark to the seal's target: from then on usage of the hours being sealed
/// is placed like usage of a sealed hour (late, in the open hour), never in a bucket the seal may already have
/// passed. Seen between two chunks of a seal of 3,000 one-bucket chunks: fails if only the last chunk moves it.
#[test]
fn the_first_chunk_moves_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cutoff = T0 + 3 * HOUR;
    rt.block_on(async {
        let store = open(dir.path(), 1);
        let events: Vec<_> = (0..3_000u32)
            .map(|c| ev(format!("k{c}"), c, 0, 1_000_000, T0 + i64::from(c % 3) * HOUR + 60_000, 0))
            .collect();
        store.ingest(events, cutoff, LateUsage::Carry).await.unwrap();
        let sealing = {
            let store = store.clone();
            tokio::spawn(async move { store.seal(params(cutoff)).await })
        };
        // The first chunk's records become visible in the same atomic write that moves the watermark.
        while store.pending_view().unwrap().totals.records == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.sealed_through().unwrap(), Some(cutoff), "the first chunk moved the watermark");
        // Usage of the last hour being sealed, for a series the seal reaches last: late, in the open hour.
        let probe = ev("probe".into(), 9_999, 0, 1_000_000, T0 + 2 * HOUR + 5, 0);
        let out = store.ingest(vec![probe], cutoff + 10, LateUsage::Carry).await.unwrap();
        let IngestOutcome::Stored(receipt) = &out[0] else { panic!("{out:?}") };
        assert_eq!(receipt.hour_ms, cutoff, "usage of an hour being sealed goes to the open hour");
        let s = sealing.await.unwrap().unwrap();
        assert_eq!(s.buckets, 3_000);
        assert!(store.buckets().unwrap().iter().all(|(k, _)| k.hour_ms >= cutoff), "no bucket behind the seal");
        store.close().await.unwrap();
    });
}
