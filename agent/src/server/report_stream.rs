//! `Admin.ReportStream`, and the size bound of the one-reply `Admin.Report`: both read the ledger in pages
//! ([`crate::report_stream`]), so neither holds more than a page (or, for `Report`, one reply's worth) of rows.

use std::sync::Arc;

use meterd_proto::Message;
use meterd_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

use super::convert::{row_to_wire, store_status, timestamp, totals_to_wire};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::report_stream::{Filter, Group, PAGE_SIZE, RowReader, summarize};
use crate::store::Store;
use crate::store::pages::PageSource;

/// What a gRPC client decodes by default (tonic's and grpc-go's limit): a bigger reply fails in the client with a
/// transport error, so `Admin.Report` refuses before that.
pub const CLIENT_DECODE_LIMIT: usize = 4 * 1024 * 1024;
/// Room left in a `Report` reply for its totals and usage drops.
const REPLY_RESERVE: usize = 256 * 1024;
/// The most a streamed chunk holds, far below [`CLIENT_DECODE_LIMIT`] whatever the rows' strings.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Groups per streamed chunk.
const GROUPS_PER_CHUNK: usize = 1_000;
/// Chunks ready but not yet taken by the client: a slow client stops the reading instead of growing memory.
const CHUNKS_QUEUED: usize = 2;

/// Everything a report stream reads.
#[derive(Clone)]
pub struct ReportSource {
    pub config: Arc<Config>,
    /// Where the report's pages come from: the local store, or the shared ledger in fleet mode
    /// ([`crate::pipeline::Pipeline::report_pages`]).
    pub pages: Arc<dyn PageSource>,
    pub store: Store,
    pub clock: SharedClock,
    /// In fleet mode: usage drops are the shared ledger's (the spool holds no usage).
    pub fleet: Option<Arc<crate::fleet::Node>>,
}

/// The filter of a request, checked; a bad field is INVALID_ARGUMENT naming it.
pub fn filter_of(req: &v1::ReportStreamRequest) -> Result<Filter, Status> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let ms = |t: &Option<meterd_proto::Timestamp>| t.as_ref().map(|t| t.seconds.saturating_mul(1000));
    let f = Filter {
        since: ms(&req.since),
        until: ms(&req.until),
        customer: opt(&req.customer),
        dimension: opt(&req.dimension),
        state: opt(&req.state),
        product: opt(&req.product),
    };
    f.check().map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(f)
}

fn group_to_wire(g: &Group) -> v1::ReportGroup {
    v1::ReportGroup {
        hour: g.hour.map(timestamp),
        product: g.product.clone(),
        dimension: g.dimension.clone(),
        customers: g.customers,
        rows: g.rows,
        recorded: g.recorded.to_string(),
        late: g.late.to_string(),
        open: g.open.to_string(),
        sealed: g.sealed,
        accepted: g.accepted,
        rejected: g.rejected,
        expired: g.expired,
        pending: g.pending,
        states: g.states.clone().into_iter().collect(),
    }
}

fn chunk(c: v1::report_chunk::Chunk) -> v1::ReportChunk {
    v1::ReportChunk { chunk: Some(c) }
}

type Tx = mpsc::Sender<Result<v1::ReportChunk, Status>>;

/// Starts the stream: chunks come from a task that reads only as fast as the client takes them.
pub fn start(
    source: ReportSource,
    req: v1::ReportStreamRequest,
) -> Result<mpsc::Receiver<Result<v1::ReportChunk, Status>>, Status> {
    let filter = filter_of(&req)?;
    let (tx, rx) = mpsc::channel(CHUNKS_QUEUED);
    tokio::spawn(async move {
        let result = if req.rows {
            stream_rows(&source, &filter, &tx).await
        } else {
            stream_summary(&source, &filter, &tx).await
        };
        if let Err(status) = result {
            // The client may be gone already; nothing else to tell.
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(rx)
}

/// A client that went away: stop reading.
fn gone() -> Status {
    Status::cancelled("the client went away")
}

async fn send(tx: &Tx, c: v1::report_chunk::Chunk) -> Result<(), Status> {
    tx.send(Ok(chunk(c))).await.map_err(|_| gone())
}

async fn stream_summary(source: &ReportSource, filter: &Filter, tx: &Tx) -> Result<(), Status> {
    let summary = summarize(source.pages.as_ref(), filter, PAGE_SIZE).await.map_err(store_status)?;
    for groups in summary.groups.chunks(GROUPS_PER_CHUNK) {
        let groups = groups.iter().map(group_to_wire).collect();
        send(tx, v1::report_chunk::Chunk::Groups(v1::ReportGroups { groups })).await?;
    }
    let trailer = v1::ReportTrailer {
        totals: Some(totals_to_wire(&summary.totals)),
        selected: Some(group_to_wire(&summary.selected)),
        rows_sent: 0,
        groups_sent: summary.groups.len() as u64,
        consistent: true,
        restarts: summary.restarts,
        usage_drops: usage_drops(source).await?,
    };
    send(tx, v1::report_chunk::Chunk::Trailer(trailer)).await
}

async fn stream_rows(source: &ReportSource, filter: &Filter, tx: &Tx) -> Result<(), Status> {
    let mut reader = RowReader::new(source.pages.as_ref(), PAGE_SIZE);
    let mut selected = Group::default();
    let mut sent = 0u64;
    while let Some(rows) = reader.next_rows().await.map_err(store_status)? {
        let (mut out, mut bytes) = (Vec::new(), 0);
        for r in rows.iter().filter(|r| filter.matches(&r.row)) {
            selected.add(r).map_err(store_status)?;
            let w = row_to_wire(&r.row);
            bytes += w.encoded_len() + 8;
            out.push(w);
            if bytes >= CHUNK_BYTES {
                sent += out.len() as u64;
                send(tx, v1::report_chunk::Chunk::Rows(v1::ReportRows { rows: std::mem::take(&mut out) })).await?;
                bytes = 0;
            }
        }
        if !out.is_empty() {
            sent += out.len() as u64;
            send(tx, v1::report_chunk::Chunk::Rows(v1::ReportRows { rows: out })).await?;
        }
    }
    let consistent = reader.consistent();
    if !consistent {
        tracing::info!("the ledger changed structure while report rows streamed; the trailer says so");
    }
    selected.customers = 0;
    let trailer = v1::ReportTrailer {
        totals: Some(totals_to_wire(&reader.finish().map_err(store_status)?)),
        selected: Some(group_to_wire(&selected)),
        rows_sent: sent,
        groups_sent: 0,
        consistent,
        restarts: 0,
        usage_drops: usage_drops(source).await?,
    };
    send(tx, v1::report_chunk::Chunk::Trailer(trailer)).await
}

async fn usage_drops(source: &ReportSource) -> Result<Vec<v1::UsageDrop>, Status> {
    if let Some(node) = &source.fleet {
        let drops = crate::fleet::hours::of_fleet(node, &source.config, source.clock.now_ms())
            .await
            .map_err(Status::unavailable)?;
        return Ok(drops.iter().map(super::convert::drop_to_wire).collect());
    }
    let store = source.store.clone();
    let (settings, now) = (crate::silence::settings(&source.config), source.clock.now_ms());
    let drops = tokio::task::spawn_blocking(move || crate::silence::last_ended_hour(&store, &settings, now))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(store_status)?;
    Ok(drops.iter().map(super::convert::drop_to_wire).collect())
}

/// The one-reply report, refused with FAILED_PRECONDITION (naming the streaming call: the ledger's size, not a passing shortage, is
/// what stands in the way, so it is not worth retrying) once its rows pass what a
/// client decodes, without holding more than that. Read again when the ledger changed structure meanwhile.
pub async fn bounded_report<S: PageSource + ?Sized>(ledger: &S, limit: usize) -> Result<crate::report::Report, Status> {
    let budget = limit.saturating_sub(REPLY_RESERVE);
    for _ in 0..crate::report_stream::MAX_ATTEMPTS {
        let mut reader = RowReader::new(ledger, PAGE_SIZE);
        let (mut rows, mut bytes, mut n) = (Vec::new(), 0usize, 0u64);
        while let Some(page) = reader.next_rows().await.map_err(store_status)? {
            for r in page {
                n += 1;
                bytes += row_to_wire(&r.row).encoded_len() + 8;
                if bytes > budget {
                    return Err(too_big(n, limit));
                }
                rows.push(r.row);
            }
            if !reader.consistent() {
                break;
            }
        }
        if !reader.consistent() {
            continue;
        }
        rows.sort_by(|a, b| {
            (a.hour, &a.product, &a.customer, &a.dimension).cmp(&(b.hour, &b.product, &b.customer, &b.dimension))
        });
        return Ok(crate::report::Report { rows, totals: reader.finish().map_err(store_status)? });
    }
    Err(Status::unavailable(
        "the ledger changed structure (a seal, compaction or tenant mapping) during each read of the report; try again",
    ))
}

fn too_big(rows: u64, limit: usize) -> Status {
    Status::failed_precondition(format!(
        "the report has at least {rows} rows: too large for one Admin.Report reply (a gRPC client decodes at most \
         {} MiB). Use the streaming call Admin.ReportStream (`meterd report` shows the summary, `meterd report --rows` \
         every row; the SDKs' report_stream)",
        limit / (1024 * 1024)
    ))
}
