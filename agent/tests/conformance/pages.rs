//! Conformance of the report's paged reads: the pages from the start cover the ledger exactly once (what a
//! snapshot holds), and every write that moves usage from one place to another is counted, so a report read over
//! many pages knows when they disagree.

use std::path::Path;

use meterd::domain::customer::TenantMapping;
use meterd::domain::event::Identity;
use meterd::domain::quantity::Micros;
use meterd::domain::record::{RecordState, SealedRecord};
use meterd::store::Ledger;
use meterd::store::pages::{LedgerPage, PageCursor};

use super::{CARRY, HOUR, T0, aws, ev, seal_before};

/// Every page from the start, `limit` entries at a time.
async fn all_pages<S: Ledger>(s: &S, limit: usize) -> Vec<LedgerPage> {
    let mut pages = Vec::new();
    let mut cursor = Some(PageCursor::start());
    while let Some(c) = cursor {
        let page = s.report_page(c, limit).await.unwrap();
        assert!(page.records.len() + page.buckets.len() + page.carries_read as usize <= limit.max(1));
        cursor = page.next.clone();
        pages.push(page);
        assert!(pages.len() < 1000, "pages never end");
    }
    pages
}

pub async fn report_pages_cover_the_ledger_once<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    let legacy = |i: u32| Identity::Legacy { customer_identifier: format!("c{i}") };
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(ev(&format!("a{i}"), legacy(i), 1_500_000, T0 + 1, None));
        events.push(ev(&format!("b{i}"), legacy(i), 2_000_000, T0 + HOUR + 1, Some("x")));
        events.push(ev(&format!("c{i}"), legacy(i), 1_000_000, T0 + HOUR + 2, Some("y")));
    }
    events.push(ev("t", Identity::Tenant("unmapped".into()), 3_000_000, T0 + HOUR + 3, None));
    s.ingest(events, T0 + HOUR + 4, CARRY).await.unwrap();
    // Hour T0 sealed (records and carried fractions), hour T0 + 1 h open (two tag sets per key).
    s.seal(seal_before(T0 + HOUR)).await.unwrap();
    let snap = s.snapshot().await.unwrap();
    assert_eq!((snap.records.len(), snap.buckets.len(), snap.carries.len()), (5, 11, 5));
    for limit in [1, 2, 3, 7, 1000] {
        let pages = all_pages(&s, limit).await;
        let records: Vec<SealedRecord> = pages.iter().flat_map(|p| p.records.clone()).collect();
        let buckets: Vec<_> = pages.iter().flat_map(|p| p.buckets.clone()).collect();
        let carried = Micros::try_sum(pages.iter().map(|p| p.carried)).unwrap();
        assert_eq!(records, snap.records, "limit {limit}: every record once, in key order");
        assert_eq!(buckets, snap.buckets, "limit {limit}: every bucket once, in key order");
        assert_eq!(carried, Micros::try_sum(snap.carries.iter().copied()).unwrap(), "limit {limit}");
        assert_eq!(pages.iter().map(|p| p.carries_read).sum::<u64>(), 5);
        let tail = pages.last().unwrap().tail.clone().expect("the last page carries the tail");
        assert_eq!((tail.compacted, tail.lost), (snap.compacted.clone(), snap.lost));
        assert!(pages[..pages.len() - 1].iter().all(|p| p.tail.is_none() && p.next.is_some()));
        assert!(pages.iter().any(|p| p.unmapped_tenants.contains("unmapped")), "an unmapped tenant is at risk");
        let structure = pages[0].structure;
        assert!(pages.iter().all(|p| p.structure == structure), "nothing moved usage between these pages");
    }
    s.close().await.unwrap();
}

/// The count a page carries: seals, compactions and mappings (which move usage) change it; ingest and record
/// state updates (which add to a bucket or change a state in place) do not.
pub async fn moving_usage_is_counted<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    let s0 = structure(&s).await;
    s.ingest(vec![ev("1", aws(), 2_000_000, T0 + 1, None)], T0 + 2, CARRY).await.unwrap();
    s.ingest(vec![ev("2", Identity::Tenant("t".into()), 2_000_000, T0 + HOUR + 1, None)], T0 + HOUR + 2, CARRY)
        .await
        .unwrap();
    assert_eq!(structure(&s).await, s0, "ingest only adds to buckets");
    s.seal(seal_before(T0 + HOUR)).await.unwrap();
    let s1 = structure(&s).await;
    assert!(s1 > s0, "a seal moves buckets into records");
    let r = s.pending_records(1).unwrap().remove(0);
    let accepted =
        RecordState::Accepted { metering_record_id: Some("m".into()), aws_request_id: None, at_ms: T0, verify: false };
    s.update_records(vec![SealedRecord { state: accepted, ..r }]).await.unwrap();
    assert_eq!(structure(&s).await, s1, "a state update changes a record in place");
    let m = TenantMapping {
        tenant_id: "t".into(),
        product: "p".into(),
        identity: aws(),
        agreement_id: None,
        updated_at_ms: T0,
    };
    s.put_mapping(m, T0 + HOUR + 3).await.unwrap();
    let s2 = structure(&s).await;
    assert!(s2 > s1, "a mapping moves a tenant's buckets to its identity");
    assert_eq!(s.compact(T0 + 50 * HOUR).await.unwrap().records, 1);
    assert!(structure(&s).await > s2, "a compaction folds records into the compacted totals");
    s.close().await.unwrap();
}

async fn structure<S: Ledger>(s: &S) -> u64 {
    s.report_page(PageCursor::start(), 10).await.unwrap().structure
}
