//! `meterd import FILE`: backfill usage from a CSV or JSON Lines file through the agent's normal ingest.
//!
//! Rows go over the gRPC API in batches (`RecordUsageBatch`, via the Rust SDK client and its retries), so they
//! meet exactly the rules, dedupe and late policy of live usage. The file is streamed: a reader thread parses
//! rows into batches, at most a few batches are in flight, and nothing grows with the file's size. Each row
//! carries an idempotency key (its own column, or a hash of its content), so a re-run after an interruption
//! counts the rows already stored as replayed, never twice. Rows whose hour AWS will no longer accept are
//! refused before sending, with the deadline in the message. Every refused row is written to a refusal file
//! (JSON Lines: row, line, reason, field, message, the row itself), and the exit status says whether any was.

pub mod cli;
mod progress;
mod rows;

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meterd_proto::sdk;
use meterd_proto::v1;

pub use progress::Stats;
pub use rows::{Format, MAX_ROW_BYTES};

/// Exit status when the import ran to the end but refused at least one row.
pub const EXIT_REFUSED: u8 = 3;

/// Why a row was not stored. `reason` is a stable tag (counted in the summary, written in the refusal file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// malformed | invalid | past_deadline (decided here); invalid | conflict | not_active | late | refused |
    /// agent_error (answered by the agent).
    pub reason: &'static str,
    /// The column at fault, when one is.
    pub field: String,
    pub message: String,
}

impl Refusal {
    pub(crate) fn invalid(field: &str, message: String) -> Self {
        Self { reason: "invalid", field: field.to_string(), message }
    }

    pub(crate) fn malformed(message: String) -> Self {
        Self { reason: "malformed", field: String::new(), message }
    }

    /// The agent's answer for one event of a batch.
    fn from_agent(e: &sdk::Error) -> Self {
        let reason = match e {
            sdk::Error::InvalidUsage { .. } => "invalid",
            sdk::Error::Conflict { .. } => "conflict",
            sdk::Error::CustomerNotActive { .. } => "not_active",
            sdk::Error::LateUsageRejected { .. } => "late",
            sdk::Error::UsageRefused { .. } => "refused",
            _ => "agent_error",
        };
        // "events[12].quantity" → "quantity": the column, not the position in one batch.
        let field = e.field().unwrap_or("").split_once("].").map_or("", |(_, f)| f).to_string();
        Self { reason, field, message: e.to_string() }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The input file, or "-" for stdin.
    pub file: PathBuf,
    pub format: Option<Format>,
    pub target: String,
    pub dry_run: bool,
    pub refusals: Option<PathBuf>,
    pub key_column: String,
    pub batch_size: usize,
    pub in_flight: usize,
    pub progress_every: Duration,
}

/// What the agent told us at the start: its clock and the rules rows are checked against before sending.
struct Policy {
    /// The agent's clock at `at` (it may run faster or elsewhere than ours: `run --simulate`).
    agent_now_ms: i64,
    at: Instant,
    window_ms: i64,
    margin_ms: i64,
    /// Product → dimensions, for `--dry-run`'s checks.
    products: BTreeMap<String, Vec<String>>,
    max_batch: usize,
}

impl Policy {
    fn from_status(s: &v1::StatusResponse) -> anyhow::Result<Self> {
        let p = s.policy.as_ref().ok_or_else(|| {
            anyhow::anyhow!("the agent does not report its submission policy (Admin.Status.policy): upgrade it")
        })?;
        let now = s.now.as_ref().map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000));
        Ok(Self {
            agent_now_ms: now,
            at: Instant::now(),
            window_ms: (p.submission_window_seconds as i64).saturating_mul(1000),
            margin_ms: (p.safety_margin_seconds as i64).saturating_mul(1000),
            products: s.products.iter().map(|p| (p.name.clone(), p.dimensions.clone())).collect(),
            max_batch: (p.max_batch_events as usize).max(1),
        })
    }

    fn now_ms(&self) -> i64 {
        self.agent_now_ms.saturating_add(self.at.elapsed().as_millis() as i64)
    }

    /// The checks made before sending: AWS's deadline for the row's hour, and (dry run) product and dimension.
    fn check(&self, fields: &rows::Fields, dry_run: bool) -> Result<v1::UsageEvent, Refusal> {
        let (event, ms) = fields.to_event()?;
        let hour = crate::clock::hour_start(ms);
        let deadline = crate::domain::deadline::deadline(hour, self.window_ms, self.margin_ms);
        let now = self.now_ms();
        if now >= deadline {
            return Err(Refusal {
                reason: "past_deadline",
                field: "timestamp".into(),
                message: format!(
                    "timestamp: usage of the hour {} could be sent to AWS until {} (the submission window of {}, \
                     capped at 06:00 UTC on the 1st of the next month, less the {} safety margin); the agent's \
                     clock says {}",
                    crate::clock::rfc3339(hour),
                    crate::clock::rfc3339(deadline),
                    duration_text(self.window_ms),
                    duration_text(self.margin_ms),
                    crate::clock::rfc3339(now - now.rem_euclid(1000)),
                ),
            });
        }
        if dry_run {
            let product = if event.product.is_empty() && self.products.len() == 1 {
                self.products.keys().next().cloned().unwrap_or_default()
            } else {
                event.product.clone()
            };
            if !product.is_empty() {
                let Some(dims) = self.products.get(&product) else {
                    return Err(Refusal::invalid(
                        "product",
                        format!("product: {} is not configured on the agent", crate::domain::echo::echo(&product)),
                    ));
                };
                if !dims.contains(&event.dimension) {
                    return Err(Refusal::invalid(
                        "dimension",
                        format!(
                            "dimension: {} is not a dimension of product {product} ({})",
                            crate::domain::echo::echo(&event.dimension),
                            dims.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(event)
    }
}

/// "24h", "30m": how the config spells these durations.
fn duration_text(ms: i64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms => humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string(),
    }
}

/// One row between the reader and the accounting: where it was and, unless refused here, its event's key.
struct RowMeta {
    number: u64,
    line: u64,
    input: String,
    key: String,
    local: Option<Refusal>,
}

struct Batch {
    rows: Vec<RowMeta>,
    events: Vec<v1::UsageEvent>,
}

type Sent = tokio::task::JoinHandle<Result<Vec<Result<sdk::Receipt, sdk::Error>>, sdk::Error>>;

pub async fn run(o: Options) -> anyhow::Result<ExitCode> {
    let stdin = o.file.as_os_str() == "-";
    let format = match (o.format, stdin) {
        (Some(f), _) => f,
        (None, true) => anyhow::bail!("--format csv|jsonl is required when reading stdin"),
        (None, false) => format_from_name(&o.file)?,
    };
    anyhow::ensure!((1..=100_000).contains(&o.batch_size), "--batch must be between 1 and 100000");
    anyhow::ensure!((1..=64).contains(&o.in_flight), "--in-flight must be between 1 and 64");
    let options = sdk::ClientOptions {
        // A batch waits for the agent's fsync; under load that can take far longer than one live event.
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let client = sdk::Client::new(&o.target, options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = client.status().await.map_err(|e| anyhow::anyhow!("cannot read the agent's status: {e}"))?;
    let policy = Arc::new(Policy::from_status(&status)?);
    let batch_size = o.batch_size.min(policy.max_batch);

    let stats = Arc::new(Stats::default());
    let (input, total_bytes) = open_input(&o.file, stdin, stats.clone())?;
    let refusals_path = o.refusals.clone().unwrap_or_else(|| default_refusals_path(&o.file, stdin));
    let mut refusals = RefusalFile::new(refusals_path);

    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Batch>>(2);
    let reader = {
        let (policy, key_column, dry_run) = (policy.clone(), o.key_column.clone(), o.dry_run);
        let stats = stats.clone();
        std::thread::spawn(move || read_batches(input, format, &key_column, &policy, dry_run, batch_size, &stats, &tx))
    };
    let progress = progress::spawn(stats.clone(), total_bytes, o.progress_every, o.dry_run);

    let mut in_flight: VecDeque<(Vec<RowMeta>, Sent)> = VecDeque::new();
    let mut failure = None;
    'read: while let Some(msg) = rx.recv().await {
        let batch = match msg {
            Ok(b) => b,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        if o.dry_run || batch.events.is_empty() {
            settle(batch.rows, Vec::new(), o.dry_run, &stats, &mut refusals)?;
        } else {
            let c = client.clone();
            let handle = tokio::spawn(async move { c.record_events(batch.events).await });
            in_flight.push_back((batch.rows, handle));
        }
        while in_flight.len() >= o.in_flight {
            if let Err(e) = settle_next(&mut in_flight, &stats, &mut refusals).await {
                failure = Some(e);
                break 'read;
            }
        }
    }
    while failure.is_none() && !in_flight.is_empty() {
        if let Err(e) = settle_next(&mut in_flight, &stats, &mut refusals).await {
            failure = Some(e);
        }
    }
    drop(rx);
    progress.finish().await;
    refusals.finish()?;
    if let Some(e) = failure {
        let done = stats.settled_through.load(Ordering::Relaxed);
        anyhow::bail!(
            "{e:#}\nimport interrupted: rows 1..{done} are settled (stored, replayed or refused); later rows may or \
             may not be stored. Run the same command again: rows already stored are counted as replayed, not twice."
        );
    }
    let _ = reader.join();
    print!("{}", stats.summary(o.dry_run, refusals.written_to()));
    Ok(if stats.refused.load(Ordering::Relaxed) > 0 { ExitCode::from(EXIT_REFUSED) } else { ExitCode::SUCCESS })
}

fn format_from_name(path: &Path) -> anyhow::Result<Format> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".csv") {
        Ok(Format::Csv)
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        Ok(Format::Jsonl)
    } else {
        anyhow::bail!("cannot tell the format of {} from its name: give --format csv|jsonl", path.display())
    }
}

fn default_refusals_path(file: &Path, stdin: bool) -> PathBuf {
    if stdin {
        PathBuf::from("meterd-import.refused.jsonl")
    } else {
        let mut name = file.as_os_str().to_os_string();
        name.push(".refused.jsonl");
        PathBuf::from(name)
    }
}

/// Counts bytes as they are read, for the progress line's share and ETA.
struct Counting<R> {
    inner: R,
    stats: Arc<Stats>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The input as a byte stream (gzip is recognised by its magic bytes and decompressed on the fly), and its
/// size on disk when known.
fn open_input(file: &Path, stdin: bool, stats: Arc<Stats>) -> anyhow::Result<(Box<dyn Read + Send>, Option<u64>)> {
    let (raw, size): (Box<dyn Read + Send>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let size = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
        (Box::new(f), size)
    };
    let mut buffered = BufReader::with_capacity(256 * 1024, Counting { inner: raw, stats });
    let gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip { (Box::new(flate2::read::MultiGzDecoder::new(buffered)), size) } else { (Box::new(buffered), size) })
}

/// The reader thread: rows → checked events → batches, until the input ends or the receiver is gone.
#[allow(clippy::too_many_arguments)]
fn read_batches(
    input: Box<dyn Read + Send>,
    format: Format,
    key_column: &str,
    policy: &Policy,
    dry_run: bool,
    batch_size: usize,
    stats: &Stats,
    tx: &tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
) {
    let mut reader = match rows::Reader::new(input, format, key_column) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    let mut batch = Batch { rows: Vec::with_capacity(batch_size), events: Vec::with_capacity(batch_size) };
    loop {
        let row = match reader.next_row() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        stats.rows.fetch_add(1, Ordering::Relaxed);
        let checked = row.fields.and_then(|f| policy.check(&f, dry_run));
        let (key, local) = match checked {
            Ok(event) => {
                let key = event.idempotency_key.clone();
                batch.events.push(event);
                (key, None)
            }
            Err(r) => (String::new(), Some(r)),
        };
        batch.rows.push(RowMeta { number: row.number, line: row.line, input: row.input, key, local });
        if batch.rows.len() >= batch_size {
            let full = std::mem::replace(
                &mut batch,
                Batch { rows: Vec::with_capacity(batch_size), events: Vec::with_capacity(batch_size) },
            );
            if tx.blocking_send(Ok(full)).is_err() {
                return;
            }
        }
    }
    if !batch.rows.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
    }
}

async fn settle_next(
    in_flight: &mut VecDeque<(Vec<RowMeta>, Sent)>,
    stats: &Stats,
    refusals: &mut RefusalFile,
) -> anyhow::Result<()> {
    let Some((rows, handle)) = in_flight.pop_front() else { return Ok(()) };
    let first = rows.first().map_or(0, |r| r.number);
    let last = rows.last().map_or(0, |r| r.number);
    let results = handle
        .await
        .map_err(|e| anyhow::anyhow!("sending rows {first}..{last}: {e}"))?
        .map_err(|e| anyhow::anyhow!("the agent did not take rows {first}..{last}: {e}"))?;
    settle(rows, results, false, stats, refusals)
}

/// Counts one batch's outcomes in row order and writes its refusals.
fn settle(
    rows: Vec<RowMeta>,
    results: Vec<Result<sdk::Receipt, sdk::Error>>,
    dry_run: bool,
    stats: &Stats,
    refusals: &mut RefusalFile,
) -> anyhow::Result<()> {
    let mut results = results.into_iter();
    let mut last = 0;
    for mut row in rows {
        last = row.number;
        let refusal = match row.local.take() {
            Some(r) => Some(r),
            None if dry_run => {
                stats.valid.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => match results.next() {
                Some(Ok(receipt)) => {
                    let counter = if receipt.replayed { &stats.replayed } else { &stats.accepted };
                    counter.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Some(Err(e)) => Some(Refusal::from_agent(&e)),
                None => anyhow::bail!("the agent returned fewer results than events (row {})", row.number),
            },
        };
        if let Some(r) = refusal {
            stats.refuse(r.reason);
            refusals.write(&row, &r)?;
        }
    }
    refusals.flush()?;
    stats.settled_through.fetch_max(last, Ordering::Relaxed);
    Ok(())
}

/// The refusal file: created at the first refusal (truncating an older one), removed when a run refuses
/// nothing so a stale list never outlives the rows it named.
struct RefusalFile {
    path: PathBuf,
    out: Option<BufWriter<std::fs::File>>,
}

impl RefusalFile {
    fn new(path: PathBuf) -> Self {
        Self { path, out: None }
    }

    fn write(&mut self, row: &RowMeta, r: &Refusal) -> anyhow::Result<()> {
        if self.out.is_none() {
            let f = std::fs::File::create(&self.path)
                .map_err(|e| anyhow::anyhow!("refusal file {}: {e}", self.path.display()))?;
            self.out = Some(BufWriter::new(f));
        }
        let head = serde_json::json!({
            "row": row.number,
            "line": row.line,
            "reason": r.reason,
            "field": r.field,
            "message": r.message,
            "idempotency_key": row.key,
        })
        .to_string();
        // The row as read, verbatim JSON (a JSONL row keeps its exact numbers).
        let line = format!("{},\"input\":{}}}\n", &head[..head.len() - 1], row.input);
        if let Some(out) = &mut self.out {
            out.write_all(line.as_bytes())?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(out) = &mut self.out {
            out.flush()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        match &mut self.out {
            Some(out) => {
                out.flush()?;
                out.get_ref().sync_all()?;
            }
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    anyhow::bail!("removing the stale refusal file {}: {e}", self.path.display())
                }
                _ => {}
            },
        }
        Ok(())
    }

    fn written_to(&self) -> Option<&Path> {
        self.out.as_ref().map(|_| self.path.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(now: &str) -> Policy {
        Policy {
            agent_now_ms: chrono::DateTime::parse_from_rfc3339(now).unwrap().timestamp_millis(),
            at: Instant::now(),
            window_ms: 24 * 3_600_000,
            margin_ms: 30 * 60_000,
            products: [("app".to_string(), vec!["api_calls".to_string()])].into(),
            max_batch: 10_000,
        }
    }

    fn fields(ts: &str, dimension: &str) -> rows::Fields {
        rows::Fields {
            timestamp: Some(ts.into()),
            tenant_id: Some("t".into()),
            dimension: Some(dimension.into()),
            quantity: Some("1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn rows_past_their_hours_deadline_are_refused_with_the_deadline() {
        let p = policy("2026-11-20T12:00:00Z");
        // Hour 2026-11-19T12: deadline 2026-11-20T11:30 (24 h less 30 min): gone.
        let r = p.check(&fields("2026-11-19T12:59:59Z", "api_calls"), false).unwrap_err();
        assert_eq!(r.reason, "past_deadline");
        assert!(r.message.contains("until 2026-11-20T11:30:00.000Z (the submission window of 24h"), "{}", r.message);
        assert!(r.message.contains("less the 30m safety margin"), "{}", r.message);
        // Hour 2026-11-19T13: deadline 12:30, still open.
        assert!(p.check(&fields("2026-11-19T13:00:00Z", "api_calls"), false).is_ok());
        // Month end: the last hours of November close at 06:00 on 1 December, less the margin.
        let p = policy("2026-12-01T05:31:00Z");
        let r = p.check(&fields("2026-11-30T23:00:00Z", "api_calls"), false).unwrap_err();
        assert!(r.message.contains("until 2026-12-01T05:30:00.000Z"), "{}", r.message);
    }

    #[test]
    fn dry_run_checks_product_and_dimension() {
        let p = policy("2026-11-20T12:00:00Z");
        assert!(p.check(&fields("2026-11-20T11:00:00Z", "gb"), false).is_ok());
        let r = p.check(&fields("2026-11-20T11:00:00Z", "gb"), true).unwrap_err();
        assert_eq!((r.reason, r.field.as_str()), ("invalid", "dimension"));
        let mut f = fields("2026-11-20T11:00:00Z", "api_calls");
        f.product = Some("other".into());
        assert_eq!(p.check(&f, true).unwrap_err().field, "product");
    }

    #[test]
    fn agent_refusals_name_the_column() {
        let e = sdk::Error::InvalidUsage { field: "events[7].quantity".into(), message: "bad".into() };
        assert_eq!(Refusal::from_agent(&e).field, "quantity");
        assert_eq!(Refusal::from_agent(&e).reason, "invalid");
        let e = sdk::Error::Conflict { field: "events[0].idempotency_key".into(), message: "used".into() };
        assert_eq!(Refusal::from_agent(&e).reason, "conflict");
    }

    #[test]
    fn formats_are_told_from_the_name() {
        assert_eq!(format_from_name(Path::new("a/b.CSV")).unwrap(), Format::Csv);
        assert_eq!(format_from_name(Path::new("b.jsonl.gz")).unwrap(), Format::Jsonl);
        assert_eq!(format_from_name(Path::new("b.ndjson")).unwrap(), Format::Jsonl);
        assert!(format_from_name(Path::new("b.txt")).is_err());
    }
}
