//! The report read in pages ([`meterd::report_stream`]) agrees with the report built from one snapshot, at any
//! page size; a seal between two pages never makes it count usage twice or not at all (the summary reads again,
//! a row stream says so); and the one-reply report refuses clearly once it would pass what a client decodes.

use std::sync::atomic::{AtomicUsize, Ordering};

use meterd::clock::UnixMillis;
use meterd::domain::customer::{CustomerLifecycle, StatusChange, TenantMapping};
use meterd::domain::event::{Bucket, BucketKey, Identity, StoredEvent, TagSet, UsageEvent};
use meterd::domain::ingest::{IngestOutcome, IngestRules};
use meterd::domain::lifecycle::{LifecycleEvent, Subject};
use meterd::domain::quantity::Micros;
use meterd::domain::record::{RecordState, SealedRecord};
use meterd::domain::seal::SealParams;
use meterd::report_stream::{Filter, RowReader, summarize};
use meterd::store::pages::{LedgerPage, PageCursor};
use meterd::store::seam::{BoxFuture, Result};
use meterd::store::{AmendOutcome, Compacted, Ledger, LedgerSnapshot, LifecycleOutcome, Lost, SealSummary, Store};

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;
const CARRY: IngestRules = IngestRules { late: meterd::domain::catalog::LatePolicy::Carry, max_lateness_ms: None };

fn ev(key: &str, customer: u32, dimension: &str, micros: u128, at_ms: i64, tag: Option<&str>) -> UsageEvent {
    UsageEvent {
        idempotency_key: key.into(),
        product: "p".into(),
        identity: if customer == 99 {
            Identity::Tenant("unmapped".into())
        } else {
            Identity::Legacy { customer_identifier: format!("c{customer:02}") }
        },
        dimension: dimension.into(),
        quantity: Micros(micros),
        timestamp_ms: Some(at_ms),
        tags: tag.map(|t| TagSet::from([("team".to_string(), t.to_string())])).unwrap_or_default(),
    }
}

fn seal_before(hour_ms: i64) -> SealParams {
    SealParams {
        cutoff_hour_ms: hour_ms,
        now_ms: hour_ms,
        window_ms: 24 * HOUR,
        product_windows_ms: Default::default(),
        margin_ms: 0,
        zero_records: false,
    }
}

/// Three hours of 12 customers × 2 dimensions (fractions, tag sets, an unmapped tenant); the first two sealed, a
/// few records accepted, rejected or expired.
async fn ledger(dir: &std::path::Path) -> Store {
    let s = Store::open(dir).unwrap();
    let mut events = Vec::new();
    for h in 0..3 {
        for c in (0..12).chain([99]) {
            for (d, dim) in ["calls", "gb"].iter().enumerate() {
                let q = 1_250_000 + u128::from(c) * 10_000 + d as u128 * 500_000;
                events.push(ev(&format!("{h}-{c}-{dim}-a"), c, dim, q, T0 + h * HOUR + 1, Some("x")));
                events.push(ev(&format!("{h}-{c}-{dim}-b"), c, dim, 700_000, T0 + h * HOUR + 2, Some("y")));
            }
        }
    }
    s.ingest(events, T0 + 2 * HOUR + 3, CARRY).await.unwrap();
    s.seal(seal_before(T0 + 2 * HOUR)).await.unwrap();
    let pending = s.pending_records(1000).unwrap();
    let settled: Vec<SealedRecord> = pending
        .iter()
        .take(9)
        .enumerate()
        .map(|(i, r)| {
            let state = match i % 3 {
                0 => RecordState::Accepted {
                    metering_record_id: Some(format!("m{i}")),
                    aws_request_id: None,
                    at_ms: T0,
                    verify: false,
                },
                1 => RecordState::Rejected {
                    reason: meterd::domain::record::RejectReason::DuplicateRecord,
                    aws_request_id: None,
                    at_ms: T0,
                },
                _ => RecordState::Expired { reason: meterd::domain::record::ExpiryReason::DeadlinePassed, at_ms: T0 },
            };
            SealedRecord { state, ..r.clone() }
        })
        .collect();
    s.update_records(settled).await.unwrap();
    s
}

fn sorted(mut rows: Vec<meterd::report::Row>) -> Vec<meterd::report::Row> {
    rows.sort_by(|a, b| {
        (a.hour, &a.product, &a.customer, &a.dimension).cmp(&(b.hour, &b.product, &b.customer, &b.dimension))
    });
    rows
}

async fn read_rows(ledger: &dyn Ledger, page: usize) -> (Vec<meterd::report::Row>, meterd::report::Totals, bool) {
    let mut reader = RowReader::new(ledger, page);
    let mut rows = Vec::new();
    while let Some(page) = reader.next_rows().await.unwrap() {
        rows.extend(page.into_iter().map(|r| r.row));
    }
    let consistent = reader.consistent();
    (rows, reader.finish().unwrap(), consistent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_rows_and_totals_equal_the_snapshot_report_at_any_page_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = ledger(dir.path()).await;
    let expected = meterd::report::from_snapshot(&s.snapshot().await.unwrap()).unwrap();
    assert!(expected.totals.reconciled && expected.totals.lost_records == 3, "{:?}", expected.totals);
    assert_eq!(expected.rows.len(), 3 * 13 * 2);
    assert!(expected.rows.iter().any(|r| r.reason == meterd::report::AT_RISK));
    for page in [1, 2, 3, 5, 50, 5000] {
        let (rows, totals, consistent) = read_rows(&s, page).await;
        assert!(consistent);
        assert_eq!(sorted(rows), expected.rows, "page size {page}");
        assert_eq!(totals, expected.totals, "page size {page}");
    }
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_groups_rows_per_hour_product_dimension_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let s = ledger(dir.path()).await;
    let expected = meterd::report::from_snapshot(&s.snapshot().await.unwrap()).unwrap();
    let sum = summarize(&s, &Filter::default(), 7).await.unwrap();
    assert_eq!((sum.totals.clone(), sum.restarts), (expected.totals.clone(), 0));
    assert_eq!(sum.groups.len(), 3 * 2, "hours x dimensions");
    for g in &sum.groups {
        let rows: Vec<_> =
            expected.rows.iter().filter(|r| Some(r.hour) == g.hour && r.dimension == g.dimension).collect();
        assert_eq!(g.customers, 13, "{g:?}");
        assert_eq!(g.accepted, rows.iter().map(|r| r.accepted).sum::<u64>());
        assert_eq!(g.pending, rows.iter().map(|r| r.pending).sum::<u64>());
        assert_eq!(g.sealed, rows.iter().map(|r| r.sealed).sum::<u64>());
        let recorded: Micros = Micros::try_sum(rows.iter().map(|r| parse(&r.recorded))).unwrap();
        assert_eq!(g.recorded, recorded);
        let open = rows.iter().filter(|r| r.state == "open").map(|r| parse(&r.recorded));
        assert_eq!(g.open, Micros::try_sum(open).unwrap());
    }
    assert_eq!(sum.selected.rows, 78);
    // Filters narrow what is shown, never the totals.
    let f = Filter { since: Some(T0 + HOUR), state: Some("pending".into()), ..Default::default() };
    assert_eq!(f.check().unwrap_err().field, "state");
    let f = Filter {
        since: Some(T0 + HOUR),
        until: Some(T0 + 2 * HOUR),
        dimension: Some("gb".into()),
        ..Default::default()
    };
    let sum = summarize(&s, &f, 7).await.unwrap();
    assert_eq!(sum.groups.len(), 1);
    assert_eq!((sum.groups[0].hour, sum.groups[0].dimension.as_str()), (Some(T0 + HOUR), "gb"));
    assert_eq!(sum.totals, expected.totals);
    let f = Filter { customer: Some("legacy:c03".into()), state: Some("open".into()), ..Default::default() };
    let sum = summarize(&s, &f, 7).await.unwrap();
    assert_eq!((sum.groups.len(), sum.selected.rows), (2, 2), "{:?}", sum.groups);
    assert_eq!(Filter { since: Some(T0), until: Some(T0), ..Default::default() }.check().unwrap_err().field, "until");
    s.close().await.unwrap();
}

fn parse(s: &str) -> Micros {
    Micros::parse_event(s).unwrap()
}

/// The real store, which seals the open hour just before it reads page number `seal_at` of each read.
struct SealsMidway {
    store: Store,
    pages: AtomicUsize,
    seal_at: usize,
    cutoff: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_while_the_report_streams_never_counts_usage_twice_or_not_at_all() {
    // 4-entry pages: pages 1-14 read the 52 records of the two sealed hours, 15-28 the 52 buckets of the open one.
    // A seal at page 3 turns the open hour's buckets into records ahead of the cursor; at page 16, into records
    // behind it (never read) while its fractions land in the carries (read last).
    for seal_at in [16, 3] {
        let dir = tempfile::tempdir().unwrap();
        let s = ledger(dir.path()).await;
        let sealing = SealsMidway { store: s.clone(), pages: AtomicUsize::new(0), seal_at, cutoff: T0 + 3 * HOUR };
        let sum = summarize(&sealing, &Filter::default(), 4).await.unwrap();
        let after = meterd::report::from_snapshot(&s.snapshot().await.unwrap()).unwrap();
        assert!(after.totals.reconciled && after.totals.open == "0", "{:?}", after.totals);
        assert_eq!(sum.totals, after.totals, "the summary is the ledger after the seal at page {seal_at}");
        assert_eq!(sum.restarts, 1, "the summary read again after the seal at page {seal_at}");
        assert_eq!(sum.selected.rows as usize, after.rows.len());
        assert_eq!(sum.selected.sealed, after.rows.iter().map(|r| r.sealed).sum::<u64>());
        s.close().await.unwrap();
    }

    // Rows already sent cannot be taken back: a row stream says it was not consistent — and it was not.
    let dir = tempfile::tempdir().unwrap();
    let s = ledger(dir.path()).await;
    let sealing = SealsMidway { store: s.clone(), pages: AtomicUsize::new(0), seal_at: 16, cutoff: T0 + 3 * HOUR };
    let (_, totals, consistent) = read_rows(&sealing, 4).await;
    assert!(!consistent, "the seal between two pages is reported");
    assert!(!totals.reconciled, "read across the seal, the totals do not reconcile: {totals:?}");
    s.close().await.unwrap();
}

impl Ledger for SealsMidway {
    fn report_page(&self, cursor: PageCursor, limit: usize) -> BoxFuture<'_, Result<LedgerPage>> {
        Box::pin(async move {
            if self.pages.fetch_add(1, Ordering::SeqCst) + 1 == self.seal_at {
                let sealed = self.store.seal(seal_before(self.cutoff)).await?;
                assert!(sealed.buckets > 0);
            }
            self.store.report_page(cursor, limit).await
        })
    }
    fn ingest(&self, e: Vec<UsageEvent>, at: UnixMillis, r: IngestRules) -> BoxFuture<'_, Result<Vec<IngestOutcome>>> {
        Ledger::ingest(&self.store, e, at, r)
    }
    fn seal(&self, p: SealParams) -> BoxFuture<'_, Result<SealSummary>> {
        Ledger::seal(&self.store, p)
    }
    fn reclaim_space(&self, ratio: f64) -> BoxFuture<'_, Result<Option<meterd::store::RepackOutcome>>> {
        Ledger::reclaim_space(&self.store, ratio)
    }
    fn update_records(&self, r: Vec<SealedRecord>) -> BoxFuture<'_, Result<()>> {
        Ledger::update_records(&self.store, r)
    }
    fn put_mapping(&self, m: TenantMapping, now: UnixMillis) -> BoxFuture<'_, Result<u64>> {
        Ledger::put_mapping(&self.store, m, now)
    }
    fn remove_mapping(&self, t: String) -> BoxFuture<'_, Result<bool>> {
        Ledger::remove_mapping(&self.store, t)
    }
    fn apply_lifecycle(&self, e: LifecycleEvent, p: SealParams) -> BoxFuture<'_, Result<LifecycleOutcome>> {
        Ledger::apply_lifecycle(&self.store, e, p)
    }
    fn amend_lifecycle(&self, s: Subject, e: StatusChange, r: bool) -> BoxFuture<'_, Result<Option<AmendOutcome>>> {
        Ledger::amend_lifecycle(&self.store, s, e, r)
    }
    fn note_not_subscribed(&self, i: Identity, at: UnixMillis) -> BoxFuture<'_, Result<()>> {
        Ledger::note_not_subscribed(&self.store, i, at)
    }
    fn compact(&self, c: UnixMillis) -> BoxFuture<'_, Result<Compacted>> {
        Ledger::compact(&self.store, c)
    }
    fn snapshot(&self) -> BoxFuture<'_, Result<LedgerSnapshot>> {
        Ledger::snapshot(&self.store)
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Ledger::close(&self.store)
    }
    fn sealed_through(&self) -> Result<Option<UnixMillis>> {
        Ledger::sealed_through(&self.store)
    }
    fn pending_records(&self, limit: usize) -> Result<Vec<SealedRecord>> {
        Ledger::pending_records(&self.store, limit)
    }
    fn records(&self) -> Result<Vec<SealedRecord>> {
        Ledger::records(&self.store)
    }
    fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>> {
        Ledger::buckets(&self.store)
    }
    fn records_of_hour(&self, h: UnixMillis) -> Result<Vec<SealedRecord>> {
        Ledger::records_of_hour(&self.store, h)
    }
    fn buckets_of_hour(&self, h: UnixMillis) -> Result<Vec<(BucketKey, Bucket)>> {
        Ledger::buckets_of_hour(&self.store, h)
    }
    fn first_hour(&self) -> Result<Option<UnixMillis>> {
        Ledger::first_hour(&self.store)
    }
    fn carries(&self) -> Result<Vec<Micros>> {
        Ledger::carries(&self.store)
    }
    fn event(&self, k: &str) -> Result<Option<StoredEvent>> {
        Ledger::event(&self.store, k)
    }
    fn mapping(&self, t: &str) -> Result<Option<TenantMapping>> {
        Ledger::mapping(&self.store, t)
    }
    fn mappings(&self) -> Result<Vec<TenantMapping>> {
        Ledger::mappings(&self.store)
    }
    fn lifecycle(&self, i: &Identity) -> Result<Option<CustomerLifecycle>> {
        Ledger::lifecycle(&self.store, i)
    }
    fn lifecycles(&self) -> Result<Vec<CustomerLifecycle>> {
        Ledger::lifecycles(&self.store)
    }
    fn compacted(&self) -> Result<Compacted> {
        Ledger::compacted(&self.store)
    }
    fn lost(&self) -> Result<Lost> {
        Ledger::lost(&self.store)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_reply_report_refuses_clearly_past_the_client_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = ledger(dir.path()).await;
    let expected = meterd::report::from_snapshot(&s.snapshot().await.unwrap()).unwrap();
    let small = meterd::server::report_stream::bounded_report(&s, meterd::server::report_stream::CLIENT_DECODE_LIMIT)
        .await
        .unwrap();
    assert_eq!((small.rows, small.totals), (expected.rows, expected.totals), "small answers are unchanged");
    // 78 rows of ~100 bytes do not fit in what is left of 260 KiB after the reserve for totals (256 KiB).
    let err = meterd::server::report_stream::bounded_report(&s, 260 * 1024).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("Admin.ReportStream") && err.message().contains("meterd report --rows"),
        "{}",
        err.message()
    );
    s.close().await.unwrap();
}
