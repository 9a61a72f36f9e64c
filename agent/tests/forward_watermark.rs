//! Fleet mode's watermark claims that every event the node acknowledged before it is in the shared ledger: the
//! sealer closes an hour on it. Here real ingest calls write to a real spool while a forwarder reads pages as
//! `fleet::forwarder` does, with the clock moving seconds between pages; an event that turns up in a page after
//! a watermark already claimed its stamp would be sealed out of its hour. This fails if the stamp is given back
//! before the write (ingest), if the low water is read after the page (forwarder), or if a full page's claim
//! ignores the spool's reorder depth.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meterd::clock::{ManualClock, SharedClock};
use meterd::config::Config;
use meterd::domain::validate::{RawCustomer, RawEvent};
use meterd::fleet::forwarder::next_page;
use meterd::ingest::Ingest;
use meterd::metrics::Registry;
use meterd::store::{Store, StoreOptions};

mod common;
use common::options;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;
/// How far the forwarder's clock moves between pages: far more than the watermark's margins, so a stamp the
/// watermark passed too early is seconds behind it, not within them.
const STEP_MS: i64 = 5_000;

fn event(key: String) -> RawEvent {
    RawEvent {
        idempotency_key: key,
        product: String::new(),
        customer: Some(RawCustomer::Legacy { customer_identifier: "c".into(), product_code: "pc".into() }),
        dimension: "api_calls".into(),
        quantity: "1".into(),
        timestamp: None,
        tags: HashMap::new(),
    }
}

/// Reads, checks and removes one page; moves `claimed` to its watermark.
fn forward_one(store: &Store, clock: &SharedClock, batch: usize, claimed: &mut i64) -> usize {
    let (page, watermark) = next_page(store, clock, batch).unwrap();
    for (seq, e) in &page.entries {
        // A watermark claims every event stamped before it; one stamped at it belongs after.
        assert!(
            e.received_ms >= *claimed,
            "outbox entry {seq} acknowledged at {} reached a page after the watermark had claimed {}",
            e.received_ms,
            *claimed
        );
    }
    store.outbox_remove(&page.blocks).unwrap();
    *claimed = (*claimed).max(watermark);
    page.entries.len()
}

#[test]
fn no_event_reaches_the_outbox_after_a_watermark_claimed_its_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_with_env(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [storage]
        data_dir = "unused"
        [products.app]
        identity = "legacy"
        product_code = "pc"
        dimensions = ["api_calls"]
        "#,
        Path::new("t.toml"),
        |_| None,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // A deadlock in the store (one was found here, see `Store::outbox_remove`) ends the test binary within
        // two minutes, naming the stuck worker, instead of stalling the suite: no pass or sync here takes seconds.
        let watched = StoreOptions { stuck_after: Some(Duration::from_secs(120)), ..options() };
        let store = Store::open_spool(dir.path(), watched).unwrap();
        let manual = ManualClock::new(T0);
        let clock: SharedClock = manual.clone();
        let ingest = Ingest::new(
            Arc::new(config.catalog()),
            Arc::new(store.clone()),
            store.stamps(),
            clock.clone(),
            &Registry::default(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut callers = tokio::task::JoinSet::new();
        // Two callers send small calls, two large ones: a large call is validated for longer between its stamp and
        // its place in the writer's queue, so small calls stamped after the clock moved are often written before
        // it — the outbox's order strays from the stamps' order, which a full page's claim must allow for.
        for c in 0..4u64 {
            let (ingest, stop) = (ingest.clone(), stop.clone());
            let size = if c < 2 { 16 } else { 300 };
            callers.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let events = (0..size).map(|i| event(format!("c{c}-{n}-{i}"))).collect();
                    n += 1;
                    ingest.record(events).await.unwrap();
                }
                (n, n * size)
            });
        }

        // The forwarder, one page at a time, as `forwarder::forward_page` (without PostgreSQL: a page is
        // "forwarded" when it is removed).
        let mut claimed = i64::MIN;
        let mut pages = 0;
        let mut full_pages = 0;
        let mut forwarded = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) || pages < 300 {
            manual.advance(STEP_MS);
            // Pages of 64 often drain the outbox; pages of 12 are full (a call writes 16 or 300 events), so
            // the watermark comes from the last entry and the spool's reorder depth.
            let batch = if pages % 4 == 0 { 64 } else { 12 };
            let n = forward_one(&store, &clock, batch, &mut claimed);
            forwarded += n;
            full_pages += usize::from(n >= batch);
            pages += 1;
            tokio::task::yield_now().await;
        }
        stop.store(true, Ordering::Relaxed);
        let (mut calls, mut acknowledged) = (0, 0);
        while let Some(n) = callers.join_next().await {
            let (c, e) = n.unwrap();
            calls += c;
            acknowledged += e;
        }
        loop {
            manual.advance(STEP_MS);
            match forward_one(&store, &clock, 64, &mut claimed) {
                0 => break,
                n => forwarded += n,
            }
        }
        assert_eq!(store.stamps().held(), 0, "every call gave its stamp back");
        assert_eq!(forwarded as u64, acknowledged, "every acknowledged event was forwarded once");
        println!("{calls} calls, {acknowledged} events, {pages} pages ({full_pages} full)");
        assert!(calls > 20, "the callers made too few calls ({calls}) for the race to be tried");
        assert!(full_pages > 10, "only {full_pages} of {pages} pages were full: the full-page claim was not tried");
        store.close().await.unwrap();
    });
}

/// The same claim, made deterministic: a call stamped earlier is written after one stamped later, and a full page
/// ends between them. The page's claim must stay at or below the later-written, earlier-stamped entry; a reopened
/// spool knows no depth for what an earlier process wrote and falls back to the fixed margin.
#[test]
fn a_full_page_claims_no_further_than_the_reorder_depth_allows() {
    use meterd::config::LateUsage::Carry;
    use meterd::domain::event::{Identity, TagSet, UsageEvent};
    use meterd::domain::quantity::Micros;
    use meterd::fleet::forwarder::{CLOCK_STEP_MARGIN_MS, REORDER_MARGIN_MS};
    use meterd::store::outbox::Reorder;

    let ev = |key: String| UsageEvent {
        idempotency_key: key,
        product: "p".into(),
        identity: Identity::Legacy { customer_identifier: "c".into() },
        dimension: "d".into(),
        quantity: Micros(1),
        timestamp_ms: None,
        tags: TagSet::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open_spool(dir.path(), options()).unwrap();
        let manual = ManualClock::new(T0 + 60_000);
        let clock: SharedClock = manual.clone();
        // Written in this order: 16 events stamped T0 + 50 s, then 16 stamped T0 + 10 s (a slower call).
        store.ingest((0..16).map(|i| ev(format!("late-stamp-{i}"))).collect(), T0 + 50_000, Carry).await.unwrap();
        store.ingest((0..16).map(|i| ev(format!("early-stamp-{i}"))).collect(), T0 + 10_000, Carry).await.unwrap();
        assert_eq!(store.outbox_reorder(), Some(Reorder { first_seq: 0, depth_ms: 40_000 }));

        let (page, watermark) = next_page(&store, &clock, 12).unwrap();
        assert_eq!(page.entries.len(), 16, "one block: full");
        assert_eq!(watermark, T0 + 10_000, "the last entry's stamp less the depth");
        let rest = store.outbox_page(100).unwrap();
        assert!(rest.entries.iter().all(|(_, e)| e.received_ms >= watermark));
        store.close().await.unwrap();
        drop(store);

        // Reopened: the entries are an earlier process's; a full page keeps the fixed margin.
        let store = Store::open_spool(dir.path(), options()).unwrap();
        assert_eq!(store.outbox_reorder(), Some(Reorder { first_seq: 32, depth_ms: 0 }));
        let (_, watermark) = next_page(&store, &clock, 12).unwrap();
        assert_eq!(watermark, T0 + 50_000 - REORDER_MARGIN_MS);
        // Drained: the low water (the clock, nothing held) less the clock-step margin.
        let (page, watermark) = next_page(&store, &clock, 100).unwrap();
        assert_eq!(page.entries.len(), 32);
        assert_eq!(watermark, T0 + 60_000 - CLOCK_STEP_MARGIN_MS);
        store.close().await.unwrap();
    });
}
