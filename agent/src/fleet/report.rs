//! The report in fleet mode: pages of the shared ledger in PostgreSQL, read through the same
//! [`PageSource`] seam as the local store's, so `Admin.Report`, `Admin.ReportStream` and their consistency rules
//! ([`crate::report_stream`]) are the same code for one agent and for a fleet.
//!
//! Each page is one read-only REPEATABLE READ transaction: its rows and its structure stamp
//! ([`meterd_fleet::report::structure`]: moved by every seal) come from one snapshot, so a reader of many pages
//! learns, exactly as with sled, whether a seal moved usage between two of them (the summary reads again, a row
//! stream says so in its trailer). No transaction stays open between pages: a slow client never holds back
//! PostgreSQL's vacuum or a seal.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meterd_fleet::report as pg;

use super::Node;
use crate::domain::event::Identity;
use crate::domain::quantity::Micros;
use crate::store::pages::{LedgerPage, MAX_PAGE, PageCursor, PageSource, PageTail, SeriesKey};
use crate::store::seam::BoxFuture;
use crate::store::{Lost, Store, StoreError};

/// How long one page may take before the report fails with UNAVAILABLE (the database gone mid-report).
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The shared ledger's pages, on one connection for the life of one report.
pub struct FleetPages {
    node: Arc<Node>,
    /// Tenant mappings are this agent's own (the registry is not fleet-wide yet): a held tenant is at risk when
    /// this agent has no mapping for it, as its submitter would see it.
    local: Store,
    client: tokio::sync::Mutex<Option<meterd_fleet::Client>>,
}

impl FleetPages {
    pub fn new(node: Arc<Node>, local: Store) -> Self {
        FleetPages { node, local, client: Default::default() }
    }

    async fn page(&self, cursor: PageCursor, limit: usize) -> Result<LedgerPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.node.db.connect().await.map_err(unavailable)?);
        }
        let client = guard.as_mut().expect("connected");
        let result = read_page(client, &cursor, limit).await;
        if result.is_err() {
            *guard = None;
        }
        let mut page = result?;
        let mut unmapped = BTreeSet::new();
        let tenants = page
            .records
            .iter()
            .map(|r| &r.key.identity)
            .chain(page.buckets.iter().map(|(k, _)| &k.identity))
            .filter_map(|i| match i {
                Identity::Tenant(t) => Some(t.clone()),
                _ => None,
            })
            .collect::<BTreeSet<_>>();
        for t in tenants {
            if self.local.mapping(&t)?.is_none() {
                unmapped.insert(t);
            }
        }
        page.unmapped_tenants = unmapped;
        Ok(page)
    }
}

impl PageSource for FleetPages {
    fn report_page(&self, cursor: PageCursor, limit: usize) -> BoxFuture<'_, Result<LedgerPage, StoreError>> {
        Box::pin(async move {
            match tokio::time::timeout(PAGE_TIMEOUT, self.page(cursor, limit)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Io(format!(
                    "fleet database: no answer within {} s reading the report",
                    PAGE_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}

fn unavailable(e: impl std::error::Error + 'static) -> StoreError {
    StoreError::Io(super::describe(&super::chain(&e)))
}

/// One page and its stamp from one snapshot.
pub(crate) async fn read_page(
    client: &mut meterd_fleet::Client,
    cursor: &PageCursor,
    limit: usize,
) -> Result<LedgerPage, StoreError> {
    let tx = pg::snapshot(client).await.map_err(unavailable)?;
    let n = limit as i64;
    let mut page = LedgerPage { structure: pg::structure(&tx).await.map_err(unavailable)?, ..Default::default() };
    match cursor {
        PageCursor::Records { after } => {
            page.records = pg::records_after(&tx, after.as_ref(), n).await.map_err(unavailable)?;
            page.next = Some(match page.records.last() {
                Some(r) if page.records.len() == limit => PageCursor::Records { after: Some(r.key.clone()) },
                _ => PageCursor::Buckets { after: None },
            });
        }
        PageCursor::Buckets { after } => {
            page.buckets = pg::buckets_after(&tx, after.as_ref(), n).await.map_err(unavailable)?;
            page.next = Some(match page.buckets.last() {
                Some((k, _)) if page.buckets.len() == limit => PageCursor::Buckets { after: Some(k.clone()) },
                _ => PageCursor::Carries { after: None },
            });
        }
        PageCursor::Carries { after } => {
            let after = after.as_ref().map(|s| (s.product.as_str(), &s.identity, s.dimension.as_str()));
            let carries = pg::carries_after(&tx, after, n).await.map_err(unavailable)?;
            page.carries_read = carries.len() as u64;
            page.carried = Micros::try_sum(carries.iter().map(|c| c.carried))
                .map_err(|_| StoreError::Overflow("carried fractions".into()))?;
            match carries.last() {
                Some(c) if carries.len() == limit => {
                    page.next = Some(PageCursor::Carries {
                        after: Some(SeriesKey {
                            product: c.product.clone(),
                            identity: c.identity.clone(),
                            dimension: c.dimension.clone(),
                        }),
                    })
                }
                _ => {
                    let (records, units) = pg::lost(&tx).await.map_err(unavailable)?;
                    let kept = meterd_fleet::retention::compacted(&tx).await.map_err(unavailable)?;
                    page.tail = Some(PageTail {
                        compacted: kept,
                        lost: Lost { records, units },
                        conflicts: pg::conflict_count(&tx).await.map_err(unavailable)?,
                    });
                }
            }
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(page)
}
