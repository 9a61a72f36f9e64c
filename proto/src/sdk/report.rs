//! The streamed report (`Admin.ReportStream`): a summary per hour × product × dimension, or every hour × customer
//! × dimension, read item by item so neither side holds the whole ledger. The Python and Node packages wrap
//! [`ReportStream`] as an iterator and an async iterator.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use super::{Client, Error, to_timestamp};
use crate::v1;

/// What to stream. `Default` is the whole summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportQuery {
    /// Rows (hour × customer × dimension) instead of the summary groups.
    pub rows: bool,
    /// Hours from `since` (inclusive) to `until` (exclusive).
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// A customer as the report labels it: "aws:<account>/<license arn>", "legacy:<id>", "tenant:<id>", "deployment".
    pub customer: Option<String>,
    pub dimension: Option<String>,
    /// open | sealed | in_flight | accepted | rejected | expired | carried | merged
    pub state: Option<String>,
    pub product: Option<String>,
}

impl ReportQuery {
    pub fn to_wire(&self) -> v1::ReportStreamRequest {
        v1::ReportStreamRequest {
            since: self.since.map(to_timestamp),
            until: self.until.map(to_timestamp),
            customer: self.customer.clone().unwrap_or_default(),
            dimension: self.dimension.clone().unwrap_or_default(),
            state: self.state.clone().unwrap_or_default(),
            product: self.product.clone().unwrap_or_default(),
            rows: self.rows,
        }
    }
}

/// One item of a streamed report: rows or groups, then exactly one trailer with the totals.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportItem {
    Row(v1::ReportRow),
    Group(v1::ReportGroup),
    /// Boxed: one per stream, much larger than a row.
    Trailer(Box<v1::ReportTrailer>),
}

/// A report being streamed. Holds at most one chunk of the agent's reply (bounded by the agent).
pub struct ReportStream {
    inner: tonic::Streaming<v1::ReportChunk>,
    ready: VecDeque<ReportItem>,
    finished: bool,
    target: String,
    /// The longest wait for the agent's next chunk.
    timeout: Duration,
}

impl std::fmt::Debug for ReportStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportStream").field("target", &self.target).field("finished", &self.finished).finish()
    }
}

impl ReportStream {
    /// The next row or group; then the trailer; then `None`. A stream that ends without its trailer (the agent
    /// stopped) is an error, never a silently short report.
    pub async fn next(&mut self) -> Result<Option<ReportItem>, Error> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                if matches!(item, ReportItem::Trailer(_)) {
                    self.finished = true;
                }
                return Ok(Some(item));
            }
            if self.finished {
                return Ok(None);
            }
            let message = match tokio::time::timeout(self.timeout, self.inner.message()).await {
                Ok(Ok(m)) => m,
                Ok(Err(status)) => return Err(Error::from_status(&status, &self.target)),
                Err(_) => {
                    return Err(Error::Timeout {
                        message: format!("no report chunk from meterd at {} within {:?}", self.target, self.timeout),
                    });
                }
            };
            let Some(message) = message else {
                self.finished = true;
                return Err(Error::AgentUnavailable {
                    message: format!("the report stream from meterd at {} ended without its totals", self.target),
                });
            };
            match message.chunk {
                Some(v1::report_chunk::Chunk::Rows(r)) => self.ready.extend(r.rows.into_iter().map(ReportItem::Row)),
                Some(v1::report_chunk::Chunk::Groups(g)) => {
                    self.ready.extend(g.groups.into_iter().map(ReportItem::Group))
                }
                Some(v1::report_chunk::Chunk::Trailer(t)) => self.ready.push_back(ReportItem::Trailer(Box::new(t))),
                None => {}
            }
        }
    }
}

impl Client {
    /// Streams the report (`Admin.ReportStream`): the summary by default, rows with [`ReportQuery::rows`]. Opening
    /// the stream is retried like any call; each later chunk must come within the client's timeout.
    pub async fn report_stream(&self, query: ReportQuery) -> Result<ReportStream, Error> {
        let request = query.to_wire();
        let inner = self
            .call(|| {
                let mut a = self.conn.admin();
                let req = tonic::Request::new(request.clone());
                async move { a.report_stream(req).await }
            })
            .await?;
        Ok(ReportStream {
            inner,
            ready: VecDeque::new(),
            finished: false,
            target: self.target.clone(),
            timeout: self.options.timeout,
        })
    }
}
