//! Fleet mode's spool: every event the agent acknowledged is in the outbox, written in the same atomic batch as
//! the ingest, until it is forwarded; a data dir stays a spool or a standalone ledger.

use meterd::config::LateUsage::Carry;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::quantity::Micros;
use meterd::store::outbox::{self, Depth, Entry};
use meterd::store::{IngestOutcome, Store, StoreOptions};

mod common;
use common::options;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;

fn event(key: &str, qty: u128, ts: Option<i64>) -> UsageEvent {
    let mut tags = TagSet::new();
    tags.insert("region".into(), "eu".into());
    UsageEvent {
        idempotency_key: key.into(),
        product: "p".into(),
        identity: Identity::Legacy { customer_identifier: "cust".into() },
        dimension: "d".into(),
        quantity: Micros(qty),
        timestamp_ms: ts,
        tags,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn acknowledged_events_wait_in_the_outbox_with_their_full_content_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open_spool(dir.path(), options()).unwrap();
        let out = store
            .ingest(vec![event("a", 1_500_000, Some(T0 + 5)), event("b", 2_000_000, None)], T0 + 10, Carry)
            .await
            .unwrap();
        assert!(out.iter().all(|o| matches!(o, IngestOutcome::Stored(_))), "{out:?}");
        // A replay and a conflict are not new acknowledgements: nothing more to forward.
        let out =
            store.ingest(vec![event("a", 1_500_000, Some(T0 + 5)), event("b", 7, None)], T0 + 20, Carry).await.unwrap();
        assert!(matches!(out[0], IngestOutcome::Replayed(_)) && matches!(out[1], IngestOutcome::Conflict { .. }));
        store.ingest(vec![event("c", 3, None)], T0 + 30, Carry).await.unwrap();

        let page = store.outbox_page(10).unwrap();
        let got: Vec<(u64, Entry)> = page.entries;
        assert_eq!(
            got,
            vec![
                (0, Entry::new(&event("a", 1_500_000, Some(T0 + 5)), T0 + 10)),
                (1, Entry::new(&event("b", 2_000_000, None), T0 + 10)),
                (2, Entry::new(&event("c", 3, None), T0 + 30)),
            ]
        );
        assert_eq!(got[0].1.event(), event("a", 1_500_000, Some(T0 + 5)));
        assert_eq!(store.outbox_depth().unwrap(), Depth { entries: 3, oldest_received_ms: Some(T0 + 10) });
        assert_eq!(store.outbox_page(2).unwrap().entries.len(), 2, "a page is bounded");

        store.outbox_remove(&[0, 1]).unwrap();
        assert_eq!(store.outbox_depth().unwrap(), Depth { entries: 1, oldest_received_ms: Some(T0 + 30) });
        store.close().await.unwrap();
        drop(store);

        // Reopened: what was not removed is still there, and new entries continue the sequence.
        let store = Store::open_spool(dir.path(), options()).unwrap();
        store.ingest(vec![event("d", 4, None)], T0 + 40, Carry).await.unwrap();
        let seqs: Vec<u64> = store.outbox_page(10).unwrap().entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3]);
        store.close().await.unwrap();
    });
}

#[test]
fn a_standalone_store_keeps_no_outbox() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open_with(dir.path(), options()).unwrap();
        store.ingest(vec![event("a", 1, None)], T0, Carry).await.unwrap();
        assert_eq!(store.outbox_depth().unwrap(), Depth::default());
        assert!(store.outbox_is_empty().unwrap());
        store.close().await.unwrap();
    });
}

#[test]
fn a_data_dir_stays_a_spool_or_a_standalone_ledger() {
    let spool = tempfile::tempdir().unwrap();
    let alone = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = Store::open_spool(spool.path(), options()).unwrap();
        s.close().await.unwrap();
        drop(s);
        let e = Store::open_with(spool.path(), options()).err().expect("a spool opened alone is refused").to_string();
        assert!(e.contains("is a fleet node's spool"), "{e}");

        let s = Store::open_with(alone.path(), options()).unwrap();
        s.ingest(vec![event("a", 1, None)], T0, Carry).await.unwrap();
        s.close().await.unwrap();
        drop(s);
        let e = Store::open_spool(alone.path(), options()).err().expect("a ledger with usage is refused").to_string();
        assert!(e.contains("holds a standalone ledger with usage"), "{e}");
    });
}

#[test]
fn an_entry_in_an_unknown_encoding_is_refused_not_misread() {
    let e = Entry::new(&event("a", 1, None), T0);
    let mut bytes = outbox::encode_entry(&e);
    assert_eq!(outbox::decode_entry(&bytes).unwrap(), e);
    bytes[0] = outbox::ENCODING + 1;
    assert!(outbox::decode_entry(&bytes).unwrap_err().to_string().contains("newer meterd"));
    assert!(outbox::decode_entry(&[]).is_err());
}

/// A spool's local state after its events are forwarded: no buckets (the shared ledger keeps the totals), no
/// outbox entries, and idempotency keys only for the dedupe window (segments dropped whole). So it is the same
/// after 40 hours as after 8: it does not grow with the hours forwarded.
#[test]
fn a_spools_local_state_after_forwarding_does_not_grow_with_the_hours() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open_spool(dir.path(), StoreOptions { dedupe_keep_ms: 2 * HOUR, ..options() }).unwrap();
        let mut sizes = Vec::new();
        for hour in 0..40i64 {
            let at = T0 + hour * HOUR;
            let events = (0..50)
                .map(|i| UsageEvent {
                    identity: Identity::Legacy { customer_identifier: format!("cust-{}", i % 10) },
                    ..event(&format!("h{hour:03}-{i:02}"), 1_000_000, Some(at + i))
                })
                .collect();
            store.ingest(events, at + 100, Carry).await.unwrap();
            // The forwarder's part: the shared ledger committed the page, the spool drops it.
            let seqs: Vec<u64> = store.outbox_page(1000).unwrap().entries.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs.len(), 50);
            store.outbox_remove(&seqs).unwrap();
            if hour == 7 || hour == 39 {
                sizes.push(store.live_bytes().unwrap());
            }
        }
        // A few bytes of counters (events ever stored, events forgotten) may lengthen; nothing per hour.
        assert!(sizes[1] <= sizes[0] + 32, "the spool's state grew with the hours: {sizes:?} bytes");
        assert!(store.buckets().unwrap().is_empty(), "a spool keeps no totals");
        assert_eq!(store.outbox_depth().unwrap(), Depth::default());
        store.close().await.unwrap();
    });
}

#[test]
fn a_groups_events_are_kept_in_blocks_forwarded_and_removed_whole() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open_spool(dir.path(), options()).unwrap();
        // One group of 1,000 new events (and one replay, which adds nothing): blocks of 256, 256, 256 and 232.
        let mut events: Vec<UsageEvent> = (0..1_000).map(|i| event(&format!("k{i}"), i, None)).collect();
        events.push(event("k7", 7, None));
        let out = store.ingest(events, T0 + 1, Carry).await.unwrap();
        assert!(matches!(out[1_000], IngestOutcome::Replayed(_)));
        assert_eq!(store.outbox_depth().unwrap(), Depth { entries: 1_000, oldest_received_ms: Some(T0 + 1) });
        assert!(!store.outbox_is_empty().unwrap());

        // A page is whole blocks, until it holds the limit.
        let page = store.outbox_page(300).unwrap();
        assert_eq!(page.blocks, vec![0, outbox::BLOCK_ENTRIES as u64]);
        let seqs: Vec<u64> = page.entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (0..2 * outbox::BLOCK_ENTRIES as u64).collect::<Vec<_>>());
        assert_eq!(page.entries[300].1, Entry::new(&event("k300", 300, None), T0 + 1));
        store.outbox_remove(&page.blocks).unwrap();
        assert_eq!(store.outbox_depth().unwrap().entries, 1_000 - 2 * outbox::BLOCK_ENTRIES as u64);
        store.close().await.unwrap();
        drop(store);

        // Reopened: the sequence continues after the last block's last entry.
        let store = Store::open_spool(dir.path(), options()).unwrap();
        store.ingest(vec![event("next", 1, None)], T0 + 2, Carry).await.unwrap();
        let page = store.outbox_page(10_000).unwrap();
        assert_eq!(page.entries.last().unwrap().0, 1_000);
        assert_eq!(page.entries.len(), 1_000 - 2 * outbox::BLOCK_ENTRIES + 1);
        assert_eq!(store.outbox_depth().unwrap().entries, page.entries.len() as u64);
        store.outbox_remove(&page.blocks).unwrap();
        assert!(store.outbox_is_empty().unwrap());
        assert_eq!(store.outbox_depth().unwrap(), Depth::default());
        store.close().await.unwrap();
    });
}
