//! The reconciliation report read page by page ([`crate::store::pages`]): rows and totals at constant memory,
//! whatever the ledger holds.
//!
//! [`RowReader`] turns pages into rows (sealed records in key order, then open hours) and accumulates the totals
//! the one-reply report has ([`crate::report::TotalsAcc`]) as it goes. [`summarize`] folds the rows into one group
//! per hour × product × dimension: memory grows with the groups, never with the rows.
//!
//! Consistency: every page is read between two writes, and carries the count of structural writes (seals,
//! compactions, mapping moves) the store had made. If that count changes between the first page and the last, a
//! row may count usage another row also counts (a bucket read open, then its record read sealed) or miss it, and
//! the totals need not reconcile. A summary sends nothing before it has read everything, so it simply reads again
//! (at most [`MAX_ATTEMPTS`] times: a seal moves an hour once, so a second read almost always sees none). Rows
//! already sent cannot be taken back, and holding them until the end would cost memory in proportion to the
//! rows; so a row stream reports the change instead ([`RowReader::consistent`]) and the caller reads again.
//! Blocking seals while a report streams was ruled out: a slow reader would then hold up billing.

use std::collections::BTreeMap;

use crate::clock::UnixMillis;
use crate::domain::quantity::Micros;
use crate::domain::record::RecordKey;
use crate::report::{Row, Totals, TotalsAcc};
use crate::store::StoreError;
use crate::store::pages::{PageCursor, PageSource, PageTail};

/// Entries per page read from the store (each page is read on the writer thread, between two writes).
pub const PAGE_SIZE: usize = 2_000;
/// Reads of a summary before giving up when the ledger keeps changing structure underneath.
pub const MAX_ATTEMPTS: u32 = 4;

/// Every state a row can have, for validating `--state`.
pub const STATES: &[&str] = &["open", "sealed", "in_flight", "accepted", "rejected", "expired", "carried", "merged"];

/// What a report keeps: empty fields keep everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Hours from `since` (inclusive) to `until` (exclusive).
    pub since: Option<UnixMillis>,
    pub until: Option<UnixMillis>,
    pub customer: Option<String>,
    pub dimension: Option<String>,
    pub state: Option<String>,
    pub product: Option<String>,
}

/// A filter that cannot be applied; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FilterError {
    pub field: &'static str,
    pub message: String,
}

impl Filter {
    /// Checks the filter: a known state, `since` before `until`, fields of sane length.
    pub fn check(&self) -> Result<(), FilterError> {
        if let Some(s) = &self.state
            && !STATES.contains(&s.as_str())
        {
            return Err(FilterError {
                field: "state",
                message: format!("unknown state {:?}; one of {}", crate::domain::echo::echo(s), STATES.join(", ")),
            });
        }
        if let (Some(a), Some(b)) = (self.since, self.until)
            && a >= b
        {
            return Err(FilterError {
                field: "until",
                message: format!(
                    "until ({}) must be after since ({})",
                    crate::clock::rfc3339(b),
                    crate::clock::rfc3339(a)
                ),
            });
        }
        for (field, v) in [("customer", &self.customer), ("dimension", &self.dimension), ("product", &self.product)] {
            if v.as_ref().is_some_and(|v| v.len() > 4096) {
                return Err(FilterError { field, message: "longer than 4096 bytes".into() });
            }
        }
        Ok(())
    }

    pub fn matches(&self, row: &Row) -> bool {
        let eq = |f: &Option<String>, v: &str| f.as_ref().is_none_or(|f| f == v);
        self.since.is_none_or(|s| row.hour >= s)
            && self.until.is_none_or(|u| row.hour < u)
            && eq(&self.customer, &row.customer)
            && eq(&self.dimension, &row.dimension)
            && eq(&self.state, &row.state)
            && eq(&self.product, &row.product)
    }
}

/// A row with its exact quantities, for summing.
#[derive(Debug, Clone)]
pub struct ReadRow {
    pub row: Row,
    pub recorded: Micros,
    pub late: Micros,
}

/// An open row being summed over its tag sets (which may span two pages).
struct OpenRow {
    key: RecordKey,
    total: Micros,
    late: Micros,
    at_risk: bool,
}

/// Any borrowed source, `dyn` or not, as one boxed type.
struct Borrowed<'a, S: ?Sized>(&'a S);

impl<S: PageSource + ?Sized> PageSource for Borrowed<'_, S> {
    fn report_page(
        &self,
        cursor: PageCursor,
        limit: usize,
    ) -> crate::store::seam::BoxFuture<'_, Result<crate::store::pages::LedgerPage, StoreError>> {
        self.0.report_page(cursor, limit)
    }
}

/// Reads the ledger page by page, yielding rows and accumulating the totals.
pub struct RowReader<'a> {
    ledger: Box<dyn PageSource + 'a>,
    page_size: usize,
    cursor: Option<PageCursor>,
    acc: TotalsAcc,
    open: Option<OpenRow>,
    tail: Option<PageTail>,
    structure: Option<u64>,
    consistent: bool,
}

fn overflow(_: crate::domain::quantity::Overflow) -> StoreError {
    StoreError::Overflow("report totals".into())
}

impl<'a> RowReader<'a> {
    pub fn new<S: PageSource + ?Sized>(ledger: &'a S, page_size: usize) -> Self {
        RowReader {
            ledger: Box::new(Borrowed(ledger)),
            page_size,
            cursor: Some(PageCursor::start()),
            acc: TotalsAcc::default(),
            open: None,
            tail: None,
            structure: None,
            consistent: true,
        }
    }

    /// The rows of the next page (possibly none); `None` once the whole ledger has been read.
    pub async fn next_rows(&mut self) -> Result<Option<Vec<ReadRow>>, StoreError> {
        let Some(cursor) = self.cursor.take() else { return Ok(None) };
        let page = self.ledger.report_page(cursor, self.page_size).await?;
        match self.structure {
            None => self.structure = Some(page.structure),
            Some(s) if s != page.structure => self.consistent = false,
            Some(_) => {}
        }
        let unmapped = page.unmapped_tenants;
        let at_risk = |t: &str| unmapped.contains(t);
        let mut rows = Vec::with_capacity(page.records.len() + page.buckets.len());
        for r in &page.records {
            let row = self.acc.record(r, &at_risk)?;
            rows.push(ReadRow { row, recorded: r.recorded, late: r.late });
        }
        for (k, b) in page.buckets {
            let key =
                RecordKey { hour_ms: k.hour_ms, product: k.product, identity: k.identity, dimension: k.dimension };
            match &mut self.open {
                Some(o) if o.key == key => {
                    o.total = o.total.try_add(b.total).map_err(overflow)?;
                    o.late = o.late.try_add(b.late).map_err(overflow)?;
                }
                _ => {
                    let at_risk = matches!(&key.identity, crate::domain::event::Identity::Tenant(t) if at_risk(t));
                    let done = self.open.replace(OpenRow { key, total: b.total, late: b.late, at_risk });
                    if let Some(done) = done {
                        rows.push(self.open_row(done)?);
                    }
                }
            }
        }
        self.acc.add_carried(page.carried)?;
        // Leaving the buckets: the last open row is whole.
        if !matches!(page.next, Some(PageCursor::Buckets { .. }))
            && let Some(done) = self.open.take()
        {
            rows.push(self.open_row(done)?);
        }
        self.cursor = page.next;
        if page.tail.is_some() {
            self.tail = page.tail;
        }
        Ok(Some(rows))
    }

    fn open_row(&mut self, o: OpenRow) -> Result<ReadRow, StoreError> {
        let row = self.acc.open(o.key, o.total, o.late, &|_| o.at_risk)?;
        Ok(ReadRow { row, recorded: o.total, late: o.late })
    }

    /// False when a structural write came between two of the pages read so far.
    pub fn consistent(&self) -> bool {
        self.consistent
    }

    /// The totals, once [`RowReader::next_rows`] has returned `None`.
    pub fn finish(self) -> Result<Totals, StoreError> {
        let tail = self.tail.ok_or_else(|| StoreError::Io("the report was not read to its end".into()))?;
        let mut totals = self.acc.finish(&tail.compacted, tail.lost)?;
        totals.conflicts = tail.conflicts;
        Ok(totals)
    }
}

/// The summary of one hour × product × dimension, or of everything a report sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Group {
    pub hour: Option<UnixMillis>,
    pub product: String,
    pub dimension: String,
    pub customers: u64,
    pub rows: u64,
    #[serde(serialize_with = "display")]
    pub recorded: Micros,
    #[serde(serialize_with = "display")]
    pub late: Micros,
    #[serde(serialize_with = "display")]
    pub open: Micros,
    pub sealed: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub expired: u64,
    pub pending: u64,
    pub states: BTreeMap<String, u64>,
}

fn display<S: serde::Serializer>(m: &Micros, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(m)
}

impl Group {
    /// Adds one row. Each row is one customer × dimension of its hour, so rows count customers within a group.
    pub fn add(&mut self, r: &ReadRow) -> Result<(), StoreError> {
        self.customers += 1;
        self.rows += 1;
        self.recorded = self.recorded.try_add(r.recorded).map_err(overflow)?;
        self.late = self.late.try_add(r.late).map_err(overflow)?;
        if r.row.state == "open" {
            self.open = self.open.try_add(r.recorded).map_err(overflow)?;
        }
        self.sealed += r.row.sealed;
        self.accepted += r.row.accepted;
        self.rejected += r.row.rejected;
        self.expired += r.row.expired;
        self.pending += r.row.pending;
        *self.states.entry(r.row.state.clone()).or_default() += 1;
        Ok(())
    }
}

/// A summary read whole: its groups in (hour, product, dimension) order, the sum of the groups, the whole
/// ledger's totals, and how many times it was read again because the ledger changed structure meanwhile.
#[derive(Debug, Clone)]
pub struct Summary {
    pub groups: Vec<Group>,
    pub selected: Group,
    pub totals: Totals,
    pub restarts: u32,
}

/// Reads the summary, again when a structural write came between two pages (at most [`MAX_ATTEMPTS`] reads).
pub async fn summarize<S: PageSource + ?Sized>(
    ledger: &S,
    filter: &Filter,
    page_size: usize,
) -> Result<Summary, StoreError> {
    let mut restarts = 0;
    loop {
        let mut groups: BTreeMap<(UnixMillis, String, String), Group> = BTreeMap::new();
        let mut selected = Group::default();
        let mut reader = RowReader::new(ledger, page_size);
        while let Some(rows) = reader.next_rows().await? {
            if !reader.consistent() {
                break;
            }
            for r in rows.iter().filter(|r| filter.matches(&r.row)) {
                let key = (r.row.hour, r.row.product.clone(), r.row.dimension.clone());
                let g = groups.entry(key).or_insert_with(|| Group {
                    hour: Some(r.row.hour),
                    product: r.row.product.clone(),
                    dimension: r.row.dimension.clone(),
                    ..Default::default()
                });
                g.add(r)?;
                selected.add(r)?;
            }
        }
        if reader.consistent() {
            selected.customers = 0;
            return Ok(Summary {
                groups: groups.into_values().collect(),
                selected,
                totals: reader.finish()?,
                restarts,
            });
        }
        restarts += 1;
        if restarts >= MAX_ATTEMPTS {
            return Err(StoreError::Io(format!(
                "the ledger changed structure (a seal, compaction or tenant mapping) during each of {MAX_ATTEMPTS} \
                 reads of the report; try again"
            )));
        }
        tracing::debug!(restarts, "the ledger changed structure while the report was read; reading it again");
    }
}
