//! The single writer, its flusher and its checkpointer: group commit without write conflicts.
//!
//! Writer: takes every command waiting in the queue. Runs of ingest commands are decided together (new,
//! replay, conflict, late) against the store plus what the run already decided, and written as one atomic
//! write; a seal or record update is its own atomic write. Every write is logged in the redo log, then applied
//! to sled ([`super::redo`]). A group that stores new events syncs the log itself before sled sees it, and its
//! callers are answered at once. Flusher: takes the other groups, syncs the log once, then answers all their
//! callers, while the writer applies the next group. Checkpointer: every second, syncs sled and the dedupe
//! segments off the write path and deletes the log files they cover.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;

use tokio::sync::{mpsc, oneshot};

use super::batch::Batch;
use super::journal::{self, Journal};
use super::redo::Redo;
use super::segments;
use super::watch::{Watch, Worker, exit_stuck};
use super::{
    IngestOutcome, IngestRules, LifecycleOutcome, Live, RepackOutcome, SealParams, SealSummary, SharedDb,
    StoreCounters, StoreError, counts, current, current_db, decode, durable, encode, generation, hour_totals, keys,
    pending, schema,
};
use crate::clock::{UnixMillis, hour_start};
use crate::domain::customer::{CustomerLifecycle, CustomerStatus, StatusChange, TenantMapping, final_hour_deadline};
use crate::domain::event::Identity;
use crate::domain::event::{Bucket, BucketKey, StoredEvent, UsageEvent};
use crate::domain::ingest::{CustomerRef, IngestGroup, Lookups, Standing};
use crate::domain::lifecycle::{LifecycleEvent, Subject};
use crate::domain::quantity::{Micros, Overflow};
use crate::domain::record::{RecordState, SealedRecord, check_update, lost_units};
use crate::domain::seal::{group_buckets, seal_record};

/// A total that would not fit stops the write it belongs to.
fn overflow(what: &str) -> impl Fn(Overflow) -> StoreError + '_ {
    move |_| StoreError::Overflow(what.to_string())
}

/// The ingest decision's reads, answered from the live generation and the dedupe journal. Keeps each bucket's
/// total as read (None: no such bucket yet), so the write can add each bucket's growth to the hour's summary
/// ([`super::hour_totals`]) and count the buckets it opens, without reading them again.
struct SledLookups<'a>(&'a sled::Db, &'a Journal, HashMap<BucketKey, Option<Micros>, foldhash::fast::RandomState>);

impl Lookups for SledLookups<'_> {
    type Error = StoreError;
    fn event(&mut self, idempotency_key: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.1.get(idempotency_key)
    }
    fn mapping(&mut self, tenant_id: &str) -> Result<Option<TenantMapping>, StoreError> {
        self.0.get(keys::tenant_key(tenant_id))?.map(|v| decode(&v)).transpose()
    }
    fn standing(&mut self, customer: &CustomerRef) -> Result<Option<Standing>, StoreError> {
        Ok(match self.0.get(keys::customer_key(customer))? {
            Some(v) => Some(Standing::of(&decode::<CustomerLifecycle>(&v)?)),
            None => None,
        })
    }
    fn bucket(&mut self, key: &BucketKey) -> Result<Option<Bucket>, StoreError> {
        let b: Option<Bucket> = self.0.get(keys::encode_bucket_key(key))?.map(|v| decode(&v)).transpose()?;
        self.2.entry(key.clone()).or_insert(b.as_ref().map(|b| b.total));
        Ok(b)
    }
}

/// How a logged write reaches sled.
#[derive(Clone, Copy)]
enum Apply {
    /// One `apply_batch`: readers outside the writer see all of it or none (seal chunks, mappings, updates).
    Atomic,
    /// Key by key, its record number last: for ingest groups. sled's `apply_batch` writes out and
    /// `sync_file_range`s its I/O buffer on every call (it rolls the buffer to mark the batch's end), a second stream
    /// of device writes that doubled the latency of the log's own fdatasync beside it. Atomicity comes from the log
    /// instead: `m/redo_seq` is the last op, and sled recovers a prefix of its writes, so after a crash either the
    /// whole group is there with its number, or the number is older and the open re-applies the whole record
    /// (absolute values: re-applying a part that made it changes nothing). Readers outside the writer may see part
    /// of a group for a moment; the reads that must agree (report pages, snapshots) are answered by the writer
    /// between two writes.
    KeyByKey,
}

/// Keys per atomic batch of a repack's copy: bounds the memory a batch takes.
const REPACK_BATCH_KEYS: usize = 10_000;

/// Most events one write group carries; bounds the batch size and the latency of a single apply.
const MAX_GROUP_EVENTS: usize = 16_384;
/// Commands waiting for the writer; senders wait when it is full (backpressure, not memory growth).
const QUEUE_DEPTH: usize = 4096;
/// Buckets one seal chunk reads by default (`storage.seal_chunk`): each chunk is one atomic batch, and ingest
/// groups run between chunks, so this bounds both the seal's memory and how long a caller can wait behind it.
/// sled spends ~50-100 us per sealed bucket (four writes each, copying tree nodes), so 200 buckets keep a caller's
/// wait behind a chunk near 20 ms; larger chunks seal a little faster (cardinality-bench, docs/ARCHITECTURE.md).
pub const SEAL_CHUNK_BUCKETS: usize = 200;

/// A seal under way, durable between its chunks: every hour before `cutoff_ms` is being sealed, and every bucket
/// key below `resume_key` already is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealProgress {
    pub cutoff_ms: UnixMillis,
    pub resume_key: Vec<u8>,
}

/// The seal the writer is working through, one chunk per loop turn, and the callers waiting for its end.
struct SealJob {
    params: SealParams,
    resume_key: Vec<u8>,
    summary: SealSummary,
    replies: Vec<Answer<SealSummary>>,
}

type Answer<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Command {
    Ingest {
        events: Vec<UsageEvent>,
        received_ms: UnixMillis,
        rules: IngestRules,
        reply: Answer<Vec<IngestOutcome>>,
    },
    Seal {
        params: SealParams,
        reply: Answer<SealSummary>,
    },
    /// Replace records (their content is frozen; only states change) and keep the queue index in step.
    Update {
        records: Vec<SealedRecord>,
        reply: Answer<()>,
    },
    /// Map a tenant to its marketplace identity and move its open usage there.
    PutMapping {
        mapping: TenantMapping,
        now_ms: UnixMillis,
        reply: Answer<u64>,
    },
    RemoveMapping {
        tenant_id: String,
        reply: Answer<bool>,
    },
    /// Apply a lifecycle event; on deprovisioning or end, seal the customer's open hours at once.
    Lifecycle {
        event: LifecycleEvent,
        params: SealParams,
        reply: Answer<LifecycleOutcome>,
    },
    /// An entry in a customer's history (an operator's reinstatement, an event AWS did not confirm).
    Amend {
        subject: Subject,
        entry: StatusChange,
        reinstate: bool,
        reply: Answer<Option<super::AmendOutcome>>,
    },
    /// Retention: drop terminal history older than the cutoff.
    Compact {
        cutoff_ms: UnixMillis,
        reply: Answer<super::Compacted>,
    },
    /// AWS answered CustomerNotSubscribed for this identity.
    NotSubscribed {
        identity: Identity,
        at_ms: UnixMillis,
        reply: Answer<()>,
    },
    /// Fleet mode: write this agent's copy of the fleet-wide customer registry (`super::mirror`).
    Mirror {
        copy: super::mirror::RegistryCopy,
        reply: Answer<()>,
    },
    /// Read everything the report needs, between two writes.
    Snapshot {
        reply: Answer<super::LedgerSnapshot>,
    },
    /// Read one bounded page of the report, between two writes (see `super::pages`).
    ReportPage {
        cursor: super::pages::PageCursor,
        limit: usize,
        reply: Answer<super::pages::LedgerPage>,
    },
    /// Copy every live key into a fresh generation and switch to it.
    Repack {
        reply: Answer<RepackOutcome>,
    },
    Stop,
}

impl Command {
    /// For the slow-write log: an index into [`COMMAND_KINDS`].
    fn kind(&self) -> usize {
        match self {
            Command::Ingest { .. } => 0,
            Command::Seal { .. } => 1,
            Command::Update { .. } => 2,
            Command::PutMapping { .. } => 3,
            Command::RemoveMapping { .. } => 4,
            Command::Lifecycle { .. } => 5,
            Command::Amend { .. } => 6,
            Command::Compact { .. } => 7,
            Command::NotSubscribed { .. } => 8,
            Command::Mirror { .. } => 9,
            Command::Snapshot { .. } => 10,
            Command::ReportPage { .. } => 11,
            Command::Repack { .. } => 12,
            Command::Stop => 13,
        }
    }
}

const COMMAND_KINDS: [&str; 14] = [
    "ingest",
    "seal",
    "update",
    "put_mapping",
    "remove_mapping",
    "lifecycle",
    "amend",
    "compact",
    "not_subscribed",
    "mirror",
    "snapshot",
    "report_page",
    "repack",
    "stop",
];

/// What one writer pass held, counted without allocating (it is taken on every pass; read only when slow).
#[derive(Default)]
struct PassHeld {
    commands: [u32; COMMAND_KINDS.len()],
    ingest_events: usize,
}

impl PassHeld {
    fn of(commands: &[Command]) -> Self {
        let mut held = PassHeld::default();
        for c in commands {
            held.commands[c.kind()] += 1;
            if let Command::Ingest { events, .. } = c {
                held.ingest_events += events.len();
            }
        }
        held
    }
}

impl std::fmt::Display for PassHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, &n) in COMMAND_KINDS.iter().zip(&self.commands).filter(|&(_, &n)| n > 0) {
            write!(f, "{}{name}×{n}", if first { "" } else { " " })?;
            first = false;
        }
        Ok(())
    }
}

/// A pass of the writer (or an ingest's own barrier) this long is logged at debug level with what it held: a
/// caller waits at least that long (the soak's goal is no call over 50 ms).
const SLOW_WRITE: std::time::Duration = std::time::Duration::from_millis(50);

/// Where the writer's generations live.
pub struct Place {
    pub dir: std::path::PathBuf,
    /// Buckets per seal chunk ([`SEAL_CHUNK_BUCKETS`] unless configured).
    pub seal_chunk: usize,
    /// Directory name of the live generation.
    pub generation: String,
    pub cache_bytes: u64,
    pub min_free: super::space::MinFree,
    /// Fleet mode: keeps every acknowledged event in the outbox until forwarded.
    pub spool: Option<Arc<super::outbox::Spool>>,
    /// Work stuck longer than this ends the process ([`super::watch`]); `None`: not watched.
    pub stuck_after: Option<std::time::Duration>,
}

/// A reply waiting for the fsync that makes its write durable.
type Pending = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

fn pending<T: Send + 'static>(reply: Answer<T>, value: T) -> Pending {
    Box::new(move |r| {
        let _ = reply.send(r.map(|()| value));
    })
}

#[derive(Default)]
struct AppliedGroup {
    replies: Vec<Pending>,
    new_events: u64,
}

/// Answers a command with an error without doing it; true for `Stop`.
fn refuse(cmd: Command, e: StoreError) -> bool {
    match cmd {
        Command::Ingest { reply, .. } => drop(reply.send(Err(e))),
        Command::Seal { reply, .. } => drop(reply.send(Err(e))),
        Command::Update { reply, .. } => drop(reply.send(Err(e))),
        Command::PutMapping { reply, .. } => drop(reply.send(Err(e))),
        Command::RemoveMapping { reply, .. } => drop(reply.send(Err(e))),
        Command::Lifecycle { reply, .. } => drop(reply.send(Err(e))),
        Command::Amend { reply, .. } => drop(reply.send(Err(e))),
        Command::Compact { reply, .. } => drop(reply.send(Err(e))),
        Command::NotSubscribed { reply, .. } => drop(reply.send(Err(e))),
        Command::Mirror { reply, .. } => drop(reply.send(Err(e))),
        Command::Repack { reply } => drop(reply.send(Err(e))),
        Command::Snapshot { reply } => drop(reply.send(Err(e))),
        Command::ReportPage { reply, .. } => drop(reply.send(Err(e))),
        Command::Stop => return true,
    }
    false
}

pub fn spawn(
    shared: SharedDb,
    place: Place,
    counters: Arc<StoreCounters>,
    journal: Arc<std::sync::RwLock<Journal>>,
    redo: Arc<Redo>,
    forgetting: Option<std::thread::JoinHandle<()>>,
    watch: Arc<Watch>,
) -> (mpsc::Sender<Command>, Vec<std::thread::JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    // Dropped when the last of the threads below ends (the checkpointer, after its final checkpoint): the watchdog
    // then ends too, and a store that closes is not taken for a stuck one.
    let (running, closed) = std_mpsc::channel::<()>();
    let watchdog =
        place.stuck_after.map(|limit| super::watch::spawn_watchdog(watch.clone(), limit, closed, exit_stuck));
    let (flush_tx, flush_rx) = std_mpsc::channel::<AppliedGroup>();
    let (stop_checkpoints, stopped) = std_mpsc::channel::<()>();
    let db = current_db(&shared);
    let flusher = {
        let (redo, counters, watch) = (redo.clone(), counters.clone(), watch.clone());
        std::thread::Builder::new()
            .name("meterd-flusher".into())
            .spawn(move || flusher_loop(redo, flush_rx, counters, &watch))
            .expect("spawn flusher thread")
    };
    let checkpointer = {
        let (shared, journal, redo, counters) = (shared.clone(), journal.clone(), redo.clone(), counters.clone());
        let (watch, spool) = (watch.clone(), place.spool.clone());
        std::thread::Builder::new()
            .name("meterd-checkpoint".into())
            .spawn(move || {
                checkpoint_loop(shared, journal, spool, redo, counters, stopped, &watch);
                drop(running);
            })
            .expect("spawn checkpoint thread")
    };
    let writer = std::thread::Builder::new()
        .name("meterd-writer".into())
        .spawn(move || {
            let events_stored = counters.events_stored.load(Ordering::Relaxed);
            Writer {
                db,
                shared,
                place,
                counters,
                warned: Default::default(),
                broken: None,
                journal,
                redo,
                forgetting,
                events_stored,
                job: None,
                watch,
            }
            .run(rx, flush_tx);
            // The checkpointer makes a last checkpoint and stops.
            drop(stop_checkpoints);
        })
        .expect("spawn writer thread");
    (tx, [writer, flusher, checkpointer].into_iter().chain(watchdog).collect())
}

type IngestCall = (Vec<UsageEvent>, UnixMillis, IngestRules, Answer<Vec<IngestOutcome>>);

struct Writer {
    /// The live generation; readers see the same one through `shared`.
    db: sled::Db,
    shared: SharedDb,
    place: Place,
    counters: Arc<StoreCounters>,
    /// Set when a repack could not tell which generation is live on disk: no write can be promised any more.
    broken: Option<String>,
    /// Tenants already warned about (once per process), so a busy unmapped tenant does not flood the log.
    warned: std::cell::RefCell<std::collections::HashSet<String>>,
    /// The chunked seal under way, if any.
    job: Option<SealJob>,
    /// The dedupe window's segments (shared with readers, who look keys up).
    journal: Arc<std::sync::RwLock<Journal>>,
    /// Where every write is logged before sled applies it: the commit point ([`super::redo`]).
    redo: Arc<Redo>,
    /// The thread deleting dropped segments (or freeing a pre-v4 store's segment trees), if one runs.
    forgetting: Option<std::thread::JoinHandle<()>>,
    /// `m/events_stored` as last written.
    events_stored: u64,
    /// Where the watchdog sees how long the current pass has taken ([`super::watch`]).
    watch: Arc<Watch>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>, flush_tx: std_mpsc::Sender<AppliedGroup>) {
        let mut stopping = false;
        // Commands that must not run in the middle of a chunked seal; taken up again once it ends.
        let mut deferred: std::collections::VecDeque<Command> = Default::default();
        while !stopping {
            let mut commands = Vec::new();
            if self.job.is_none() {
                commands.extend(deferred.drain(..));
                if commands.is_empty() {
                    let Some(first) = rx.blocking_recv() else { break };
                    commands.push(first);
                }
            }
            // While a seal is under way this takes only what is already waiting: one chunk follows each group.
            let mut n_events = 0;
            while n_events < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if let Command::Ingest { events, .. } = &cmd {
                            n_events += events.len();
                        }
                        commands.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            let watch = self.watch.clone();
            let _busy = watch.busy(Worker::Writer);
            let held = PassHeld::of(&commands);
            let mut group = AppliedGroup::default();
            let mut ingests: Vec<IngestCall> = Vec::new();
            for cmd in commands {
                // Checked per command: a repack or a failed write earlier in this same run may just have broken
                // the store.
                if let Some(why) = self.broken.clone().or_else(|| self.redo.poisoned()) {
                    stopping |= refuse(cmd, StoreError::Poisoned(why));
                    continue;
                }
                // A mapping moves open buckets, possibly to below the seal's cursor (and out of its order).
                if self.job.is_some() && matches!(cmd, Command::PutMapping { .. }) {
                    deferred.push_back(cmd);
                    continue;
                }
                match cmd {
                    Command::Ingest { events, received_ms, rules, reply } => {
                        ingests.push((events, received_ms, rules, reply))
                    }
                    other => {
                        self.apply_ingests(std::mem::take(&mut ingests), &mut group);
                        match other {
                            Command::Seal { params, reply } => {
                                if let Err((reply, e)) = self.begin_seal(params, reply, &mut group) {
                                    let _ = reply.send(Err(e));
                                }
                            }
                            Command::Update { records, reply } => match self.apply_update(&records) {
                                Ok(()) => group.replies.push(pending(reply, ())),
                                Err(e) => {
                                    let _ = reply.send(Err(e));
                                }
                            },
                            Command::PutMapping { mapping, now_ms, reply } => {
                                match self.apply_put_mapping(&mapping, now_ms) {
                                    Ok(n) => {
                                        // Held records may be merged even when no bucket moved.
                                        self.moved_usage(true);
                                        group.replies.push(pending(reply, n))
                                    }
                                    Err(e) => {
                                        let _ = reply.send(Err(e));
                                    }
                                }
                            }
                            Command::RemoveMapping { tenant_id, reply } => {
                                match self.apply_remove_mapping(&tenant_id) {
                                    Ok(existed) => group.replies.push(pending(reply, existed)),
                                    Err(e) => {
                                        let _ = reply.send(Err(e));
                                    }
                                }
                            }
                            Command::Lifecycle { event, params, reply } => {
                                match self.apply_lifecycle(&event, &params) {
                                    Ok(o) => {
                                        self.moved_usage(o.applied);
                                        group.replies.push(pending(reply, o))
                                    }
                                    Err(e) => {
                                        let _ = reply.send(Err(e));
                                    }
                                }
                            }
                            Command::Amend { subject, entry, reinstate, reply } => {
                                match self.apply_amend(&subject, entry, reinstate) {
                                    Ok(o) => group.replies.push(pending(reply, o)),
                                    Err(e) => {
                                        let _ = reply.send(Err(e));
                                    }
                                }
                            }
                            Command::NotSubscribed { identity, at_ms, reply } => {
                                match self.apply_not_subscribed(&identity, at_ms) {
                                    Ok(()) => group.replies.push(pending(reply, ())),
                                    Err(e) => {
                                        let _ = reply.send(Err(e));
                                    }
                                }
                            }
                            Command::Mirror { copy, reply } => {
                                match super::mirror::batch(&self.db, &copy).and_then(|b| self.commit(b)) {
                                    Ok(()) => group.replies.push(pending(reply, ())),
                                    Err(e) => {
                                        let _ = reply.send(Err(e));
                                    }
                                }
                            }
                            // Answered with the group, after the fsync that covers every write it saw.
                            Command::Snapshot { reply } => match super::read_snapshot(&self.db) {
                                Ok(snap) => group.replies.push(pending(reply, snap)),
                                Err(e) => {
                                    let _ = reply.send(Err(e));
                                }
                            },
                            Command::ReportPage { cursor, limit, reply } => {
                                let structure = self.counters.structure_changes.load(Ordering::Relaxed);
                                match super::pages::read_page(&self.db, &cursor, limit, structure) {
                                    Ok(page) => group.replies.push(pending(reply, page)),
                                    Err(e) => {
                                        let _ = reply.send(Err(e));
                                    }
                                }
                            }
                            Command::Compact { cutoff_ms, reply } => match self.apply_compact(cutoff_ms) {
                                Ok(c) => {
                                    self.moved_usage(c.records > 0);
                                    group.replies.push(pending(reply, c))
                                }
                                Err(e) => {
                                    let _ = reply.send(Err(e));
                                }
                            },
                            Command::Repack { reply } => {
                                // Answer what was applied so far without waiting for the copy. Whichever
                                // generation the flusher then fsyncs, those writes are durable: the repack fsyncs
                                // the old generation before it copies.
                                if !group.replies.is_empty() && flush_tx.send(std::mem::take(&mut group)).is_err() {
                                    return;
                                }
                                // A repack copies the whole store, however long that takes: not watched.
                                watch.idle(Worker::Writer);
                                let result = self.repack();
                                if let Err(e) = &result {
                                    tracing::warn!(error = %e, "repack failed; the old generation stays live");
                                }
                                let _ = reply.send(result);
                            }
                            Command::Stop => stopping = true,
                            Command::Ingest { .. } => unreachable!("handled above"),
                        }
                    }
                }
            }
            self.apply_ingests(ingests, &mut group);
            if !stopping && self.job.is_some() {
                // Hand this group to the flusher first: its callers' fsync then runs while the chunk is applied,
                // instead of after it.
                if !group.replies.is_empty() && flush_tx.send(std::mem::take(&mut group)).is_err() {
                    break;
                }
                self.seal_chunk(&mut group);
            }
            let took = started.elapsed();
            if took >= SLOW_WRITE {
                tracing::debug!(millis = took.as_millis() as u64, commands = %held, ingest_events = held.ingest_events,
                    seal_chunk = self.job.is_some(), "slow write");
            }
            if group.replies.is_empty() {
                continue;
            }
            if self.redo.is_synced() {
                // The last write was an ingest logged and synced before it was applied: that barrier covers every
                // write before it, so the flusher has nothing left to do for this group.
                self.counters.events_stored.fetch_add(group.new_events, Ordering::Relaxed);
                for reply in group.replies {
                    reply(Ok(()));
                }
            } else if flush_tx.send(group).is_err() {
                break;
            }
        }
        // A seal cut short by a stop resumes from its durable progress at the next seal.
        // Dropping flush_tx lets the flusher finish the last groups and exit. A segment drop under way finishes
        // first, so a closed store has no thread left holding it.
        if let Some(h) = self.forgetting.take() {
            let _ = h.join();
        }
    }

    fn sealed_through(&self) -> Result<Option<UnixMillis>, StoreError> {
        super::sealed_through(&self.db)
    }

    /// The queue's totals as stored (open made sure they exist).
    fn pending_totals(&self) -> Result<pending::PendingTotals, StoreError> {
        Ok(pending::load(&self.db)?.unwrap_or_default())
    }

    /// Unmaps a tenant: its held records not yet given an identity to be sent as are at risk again, counted in
    /// the same batch. Walks the queue (bounded by the submission window), as mapping does.
    fn apply_remove_mapping(&self, tenant_id: &str) -> Result<bool, StoreError> {
        let tk = keys::tenant_key(tenant_id);
        if self.db.get(&tk)?.is_none() {
            return Ok(false);
        }
        let mut totals = self.pending_totals()?;
        for kv in self.db.scan_prefix(keys::QUEUE_PREFIX) {
            let (q, _) = kv?;
            let k = keys::record_key_of_queue_entry(&q).ok_or_else(|| StoreError::Corrupt("short queue key".into()))?;
            let Some(v) = self.db.get(k)? else {
                return Err(StoreError::Corrupt("queue entry without its record".into()));
            };
            let r: SealedRecord = decode(&v)?;
            if pending::held_tenant(&r) == Some(tenant_id) {
                totals.remove(&r, false);
                totals.add(&r, true);
            }
        }
        let mut batch = super::batch::Batch::default();
        batch.remove(tk);
        batch.insert(keys::PENDING_KEY, encode(&totals));
        self.commit(batch)?;
        Ok(true)
    }

    fn apply_ingests(&mut self, calls: Vec<IngestCall>, group: &mut AppliedGroup) {
        if calls.is_empty() {
            return;
        }
        if let Err(e) = self.check_room(0) {
            for (_, _, _, reply) in calls {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        self.counters.write_groups.fetch_add(1, Ordering::Relaxed);
        match self.decide_ingests(&calls) {
            Ok((outcomes, new_events)) => {
                group.new_events += new_events;
                for ((_, _, _, reply), o) in calls.into_iter().zip(outcomes) {
                    group.replies.push(pending(reply, o));
                }
            }
            Err(e) => {
                for (_, _, _, reply) in calls {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Refuses (nothing written) when the data dir's filesystem is below the reserve plus `extra` bytes; keeps
    /// the figures for `status` and metrics. One statvfs, about a microsecond, per ingest group.
    fn check_room(&self, extra: u64) -> Result<(), StoreError> {
        let room = super::space::space_of(&self.place.dir)
            .map_err(|e| StoreError::Io(format!("statvfs {}: {e}", self.place.dir.display())))?;
        let full = super::space::shortfall(&room, self.place.min_free, extra);
        self.counters.disk_free_bytes.store(room.free_bytes, Ordering::Relaxed);
        self.counters.disk_reserve_bytes.store(self.place.min_free.bytes(room.total_bytes), Ordering::Relaxed);
        if extra == 0 {
            let was = self.counters.disk_full.swap(full.is_some(), Ordering::Relaxed);
            match (&full, was) {
                (Some(f), false) => tracing::error!("{f}: refusing ingest until there is room again"),
                (None, true) => tracing::warn!("disk space is above the reserve again: ingest resumed"),
                _ => {}
            }
        }
        full.map_or(Ok(()), |f| Err(StoreError::DiskFull(f)))
    }

    /// Decides every event of a run of ingest calls ([`crate::domain::ingest`]) and writes them as one atomic
    /// batch.
    fn decide_ingests(&mut self, calls: &[IngestCall]) -> Result<(Vec<Vec<IngestOutcome>>, u64), StoreError> {
        let now_ms = calls.iter().map(|c| c.1).max().expect("at least one call");
        self.forget(now_ms)?;
        let mut group = IngestGroup::new(self.sealed_through()?);
        let journal = self.journal.clone();
        let read_journal = journal.read().unwrap_or_else(|e| e.into_inner());
        let mut look = SledLookups(&self.db, &read_journal, HashMap::default());
        let mut all = Vec::with_capacity(calls.len());
        for (events, received_ms, rules, _) in calls {
            let mut outcomes = Vec::with_capacity(events.len());
            for ev in events {
                outcomes.push(group.decide(ev, *received_ms, *rules, &mut look)?);
            }
            all.push(outcomes);
        }
        let writes = group.into_writes();
        for t in &writes.unmapped_tenants {
            if self.warned.borrow_mut().insert(t.clone()) {
                tracing::warn!(tenant = %t, "usage for a tenant with no marketplace identity yet: accepted and held, \
                    at risk until the tenant is mapped (meterd customers put/resolve) before its deadline");
            }
        }
        let mut batch = super::batch::Batch::default();
        let new_events = writes.events.len() as u64;
        // A spool keeps no totals: the shared ledger counts each forwarded event itself (a spool never seals, so
        // its buckets would only pile up, one per hour × customer × dimension × tag set, for good). Nor, then, the
        // counts and hour summaries kept with buckets.
        let mut hours = hour_totals::Edits::new(&self.db);
        let read = look.2;
        drop(read_journal);
        if self.place.spool.is_none() {
            let opened = writes.buckets.iter().filter(|(k, _)| read.get(k).is_some_and(|b| b.is_none())).count();
            counts::buckets_changed(&self.db, &mut batch, opened as u64, 0)?;
            for (k, b) in &writes.buckets {
                batch.insert(keys::encode_bucket_key(k), encode(b));
                // A bucket only grows at ingest: its growth is what the hour gained.
                let before = read.get(k).copied().flatten().unwrap_or(Micros::ZERO);
                hours.add_usage(k.hour_ms, &k.product, &k.dimension, Micros(b.total.0.saturating_sub(before.0)))?;
            }
        }
        hours.write(&mut batch);
        // Fleet mode: the acknowledged events' content, under the same commit point (store/outbox_log.rs): its
        // blocks go into the group's redo record with the dedupe segment's, and become readable once durable.
        let spool = self.place.spool.clone();
        let staged = match &spool {
            Some(spool) => spool.stage(calls.iter().map(|(events, at, _, _)| (events.as_slice(), *at)), &all)?,
            None => None,
        };
        if new_events == 0 {
            // The spool adds an entry only for a stored event, so a group of replays writes nothing.
            if !writes.buckets.is_empty() && spool.is_none() {
                self.commit(batch)?;
            }
        } else {
            let written = self.write_with_events(batch, &writes.events, now_ms, staged.as_ref());
            if let (Some(spool), Some(staged)) = (spool, staged) {
                match &written {
                    Ok(()) => spool.publish(staged),
                    Err(_) => spool.abandon(&staged),
                }
            }
            written?;
        }
        self.counters.replays.fetch_add(writes.replays, Ordering::Relaxed);
        self.counters.late_events.fetch_add(writes.late_events, Ordering::Relaxed);
        Ok((all, new_events))
    }

    /// Writes the group's idempotency entries as one record of the journal segment of `now_ms`, then logs it with
    /// the buckets in `batch`, that segment's count, the events-ever-stored counter and the journal mark as one
    /// redo record, syncs the log, and applies the batch to sled. The barrier comes before sled sees the batch, so
    /// sled never holds a group whose keys could be lost ([`super::redo`]); a record never logged is overwritten by
    /// the next one.
    fn write_with_events(
        &mut self,
        mut batch: Batch,
        events: &[(String, StoredEvent)],
        now_ms: UnixMillis,
        outbox: Option<&super::outbox_log::Staged>,
    ) -> Result<(), StoreError> {
        let journal = self.journal.clone();
        let mut journal = journal.write().unwrap_or_else(|e| e.into_inner());
        let start = journal.start_of(now_ms);
        if !journal.live.contains_key(&start) {
            // A file of this name being deleted (the clock went back) must be gone before it is made anew.
            if let Some(h) = self.forgetting.take() {
                let _ = h.join();
            }
        }
        let mut appended = journal.write(start, events)?;
        let total = self.events_stored + events.len() as u64;
        batch.insert(segments::index_key(start), &segments::encode_count(appended.count)[..]);
        batch.insert(keys::EVENTS_STORED_KEY, &segments::encode_count(total)[..]);
        batch.insert(keys::JOURNAL_MARK_KEY, &appended.mark.encode()[..]);
        if let Some(o) = outbox {
            batch.insert(super::outbox_log::END_KEY, &o.mark.encode()[..]);
        }
        let bytes = std::mem::take(&mut appended.bytes);
        let seq = self.redo.append(
            &mut batch,
            Some((start, appended.at, &bytes)),
            outbox.map(|o| (o.file, o.at, o.bytes.as_slice())),
        )?;
        // Synced before sled may hold the group's count and mark (see `super::redo`, "Order").
        self.sync_redo()?;
        self.apply(seq, batch, Apply::KeyByKey)?;
        journal.commit(appended);
        self.events_stored = total;
        Ok(())
    }

    /// Logs `batch` in the redo log and applies it to sled; durable once the log is synced (the flusher's barrier).
    fn commit(&self, mut batch: Batch) -> Result<(), StoreError> {
        let seq = self.redo.append(&mut batch, None, None)?;
        self.apply(seq, batch, Apply::Atomic)
    }

    /// Applies a logged write. A write the log holds but sled refused would come back at the next open: nothing
    /// more is written until then.
    fn apply(&self, seq: u64, batch: Batch, how: Apply) -> Result<(), StoreError> {
        let applied = match how {
            Apply::Atomic => self.db.apply_batch(batch.to_sled()),
            Apply::KeyByKey => batch.ops().try_for_each(|(k, v)| {
                match v {
                    Some(v) => self.db.insert(k, v)?,
                    None => self.db.remove(k)?,
                };
                Ok::<(), sled::Error>(())
            }),
        };
        match applied {
            Ok(()) => {
                self.redo.applied(seq);
                Ok(())
            }
            Err(e) => {
                let why = format!("sled refused the write of redo record {seq}: {e}");
                self.redo.poison(why.clone());
                Err(StoreError::Poisoned(why))
            }
        }
    }

    fn sync_redo(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        if self.redo.sync()? {
            let took = started.elapsed();
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.counters.fsync_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
            if took >= SLOW_WRITE {
                tracing::debug!(millis = took.as_millis() as u64, "slow barrier (an ingest group's)");
            }
        }
        Ok(())
    }

    /// Drops every segment entirely past the dedupe window at `now_ms`: its index record goes and its count joins
    /// the compacted total in one batch, then its tree is dropped whole off this thread ([`segments`]).
    fn forget(&mut self, now_ms: UnixMillis) -> Result<(), StoreError> {
        let expired = self.journal.read().unwrap_or_else(|e| e.into_inner()).expired(now_ms);
        self.drop_segments(&expired).map(|_| ())
    }

    /// Drops the segments starting at `expired` (see [`Self::forget`]); returns how many keys they held. Their
    /// `g/` records go and their counts join the compacted total in one batch, then their files are deleted off
    /// this thread. A crash between the two leaves either a file without its `g/` record or a `g/` record
    /// without its file, and the next open finishes the drop either way.
    fn drop_segments(&mut self, expired: &[UnixMillis]) -> Result<u64, StoreError> {
        if expired.is_empty() {
            return Ok(0);
        }
        let journal = self.journal.clone();
        let mut journal = journal.write().unwrap_or_else(|e| e.into_inner());
        let mut total: super::Compacted = match self.db.get(keys::COMPACTED_KEY)? {
            Some(v) => decode(&v)?,
            None => super::Compacted::default(),
        };
        let mut batch = super::batch::Batch::default();
        let mut dropped = 0;
        for start in expired {
            dropped += journal.live.get(start).map_or(0, |s| s.count);
            batch.remove(segments::index_key(*start));
        }
        total.events += dropped;
        batch.insert(keys::COMPACTED_KEY, encode(&total));
        self.commit(batch)?;
        let files = expired.iter().filter_map(|s| journal.remove(*s)).collect();
        if let Some(h) = self.forgetting.take() {
            let _ = h.join();
        }
        self.forgetting = journal::delete_in_background(journal.dir().to_path_buf(), files);
        Ok(dropped)
    }

    /// Counts a write that moved usage from one place to another, for reports read in pages (`super::pages`).
    fn moved_usage(&self, moved: bool) {
        if moved {
            self.counters.structure_changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts sealing every hour before `params.cutoff_hour_ms`, or widens the seal under way (one left by a
    /// crash or stop included) to it. The caller is answered when the last chunk is durable; at once when there is
    /// nothing to seal.
    fn begin_seal(
        &mut self,
        mut params: SealParams,
        reply: Answer<SealSummary>,
        group: &mut AppliedGroup,
    ) -> Result<(), (Answer<SealSummary>, StoreError)> {
        let cutoff = hour_start(params.cutoff_hour_ms);
        if let Some(job) = &mut self.job {
            params.cutoff_hour_ms = cutoff.max(job.params.cutoff_hour_ms);
            job.params = params;
            job.replies.push(reply);
            return Ok(());
        }
        let started = (|| {
            let progress: Option<SealProgress> =
                self.db.get(keys::SEAL_PROGRESS_KEY)?.map(|v| decode(&v)).transpose()?;
            Ok::<_, StoreError>((progress, self.sealed_through()?))
        })();
        let (progress, sealed) = match started {
            Ok(s) => s,
            Err(e) => return Err((reply, e)),
        };
        let resume_key = match progress {
            Some(p) => {
                params.cutoff_hour_ms = cutoff.max(p.cutoff_ms);
                p.resume_key
            }
            None if sealed.is_some_and(|s| cutoff <= s) => {
                group.replies.push(pending(reply, SealSummary::default()));
                return Ok(());
            }
            None => {
                params.cutoff_hour_ms = cutoff;
                keys::BUCKET_PREFIX.to_vec()
            }
        };
        self.job = Some(SealJob { params, resume_key, summary: SealSummary::default(), replies: vec![reply] });
        Ok(())
    }

    /// Seals the next chunk of the seal under way, if any, as one atomic batch: whole records only (all tag sets
    /// of one hour x product x customer x dimension share a key prefix and are never split), about
    /// `seal_chunk` buckets, with the durable progress and, at the first chunk, the watermark moved to the
    /// target. From then on ingest places usage of the hours being sealed like usage of any sealed hour, so no
    /// bucket appears behind the cursor; readers still see the buckets not sealed yet as open usage.
    fn seal_chunk(&mut self, group: &mut AppliedGroup) {
        let Some(mut job) = self.job.take() else { return };
        if let Some(why) = &self.broken {
            for reply in job.replies {
                let _ = reply.send(Err(StoreError::Poisoned(why.clone())));
            }
            return;
        }
        match self.apply_seal_chunk(&mut job) {
            Ok(false) => self.job = Some(job),
            Ok(true) => {
                for reply in job.replies {
                    group.replies.push(pending(reply, job.summary.clone()));
                }
            }
            // The progress written so far stays: the next seal resumes from it.
            Err(e) => {
                for reply in job.replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One chunk; true when the seal is complete.
    fn apply_seal_chunk(&self, job: &mut SealJob) -> Result<bool, StoreError> {
        let cutoff = job.params.cutoff_hour_ms;
        let bound = keys::bucket_hour_bound(cutoff);
        let mut buckets = Vec::new();
        let mut record: Option<Vec<u8>> = None;
        let mut next: Option<Vec<u8>> = None;
        for kv in self.db.range(job.resume_key.clone()..bound.clone()) {
            let (k, v) = kv?;
            let bk = keys::decode_bucket_key(&k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let prefix = keys::record_prefix(bk.hour_ms, &bk.product, &bk.identity, &bk.dimension);
            if record.as_ref() != Some(&prefix) {
                if buckets.len() >= self.place.seal_chunk {
                    next = Some(k.to_vec());
                    break;
                }
                record = Some(prefix);
            }
            buckets.push((k.to_vec(), bk, decode::<Bucket>(&v)?));
        }
        if next.is_none() {
            // Nothing should sit below the cursor; should anything (a store written otherwise), seal it too
            // rather than leave it open under a moved watermark.
            if let Some(kv) = self.db.range(keys::BUCKET_PREFIX.to_vec()..job.resume_key.clone()).next() {
                next = Some(kv?.0.to_vec());
            }
        }
        let mut batch = super::batch::Batch::default();
        let summary = self.seal_buckets(&mut batch, buckets, &job.params, None)?;
        match &next {
            Some(resume_key) => batch.insert(
                keys::SEAL_PROGRESS_KEY,
                encode(&SealProgress { cutoff_ms: cutoff, resume_key: resume_key.clone() }),
            ),
            None => batch.remove(keys::SEAL_PROGRESS_KEY),
        }
        if self.sealed_through()?.is_none_or(|s| s < cutoff) {
            batch.insert(keys::SEALED_THROUGH_KEY, encode(&schema::meta::StoredSealedThrough { cutoff_ms: cutoff }));
        }
        self.commit(batch)?;
        // Every chunk moves usage from buckets to records: a report read in pages across it must know.
        self.moved_usage(summary.buckets > 0);
        job.summary.buckets += summary.buckets;
        job.summary.records += summary.records;
        job.summary.carried_only += summary.carried_only;
        job.summary.sealed_through = Some(cutoff);
        match next {
            Some(k) => {
                job.resume_key = k;
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// Turns buckets (in key order: hour first) into sealed records within `batch`. `deadline_cap` brings
    /// deadlines forward (a deprovisioned customer's final hour).
    fn seal_buckets(
        &self,
        batch: &mut super::batch::Batch,
        buckets: Vec<(Vec<u8>, BucketKey, Bucket)>,
        params: &SealParams,
        deadline_cap: Option<UnixMillis>,
    ) -> Result<SealSummary, StoreError> {
        let summary = self.seal_buckets_inner(batch, buckets, params, deadline_cap)?;
        // Counted when planned; a failed apply_batch fails the whole command (rare) and over-counts by its size.
        self.counters.buckets_sealed.fetch_add(summary.buckets, Ordering::Relaxed);
        self.counters.records_sealed.fetch_add(summary.records, Ordering::Relaxed);
        Ok(summary)
    }

    fn seal_buckets_inner(
        &self,
        batch: &mut super::batch::Batch,
        buckets: Vec<(Vec<u8>, BucketKey, Bucket)>,
        params: &SealParams,
        deadline_cap: Option<UnixMillis>,
    ) -> Result<SealSummary, StoreError> {
        let db = &self.db;
        let mut summary = SealSummary::default();
        let mut decoded = Vec::with_capacity(buckets.len());
        for (k, bk, bucket) in buckets {
            batch.remove(k);
            summary.buckets += 1;
            decoded.push((bk, bucket));
        }
        // Scan order is hour first, so a series' hours seal oldest first.
        let groups = group_buckets(decoded).map_err(overflow("a record's late usage"))?;
        // Carries change as successive hours of one series seal in this same batch; each with whether the store
        // holds one now (an hour of whole units then needs no write for it: a sled write is most of a seal's cost).
        let mut carries: HashMap<Vec<u8>, (Micros, bool)> = HashMap::new();
        let mut totals = self.pending_totals()?;
        let mut hours = hour_totals::Edits::new(db);
        for group in groups {
            let rk = &group.key;
            let ck = keys::carry_key(&rk.product, &rk.identity, &rk.dimension);
            let (carried_in, stored) = match carries.get(&ck) {
                Some(c) => *c,
                None => match db.get(&ck)? {
                    Some(v) => (decode(&v)?, true),
                    None => (Micros::ZERO, false),
                },
            };
            let record = seal_record(group, carried_in, params, deadline_cap).map_err(overflow("a record's usage"))?;
            carries.insert(ck, (record.carried_out, stored));
            let rkey = keys::record_key(&record.key);
            if record.state == RecordState::Carried {
                summary.carried_only += 1;
            } else {
                batch.insert(keys::queue_key(record.deadline_ms, &rkey), &[][..]);
                totals.add(&record, pending::at_risk(db, &record)?);
                summary.records += 1;
            }
            hours.sealed(&record)?;
            batch.insert(rkey, encode(&record));
        }
        hours.write(batch);
        counts::buckets_changed(db, batch, 0, summary.buckets)?;
        batch.insert(keys::PENDING_KEY, encode(&totals));
        for (ck, (c, stored)) in carries {
            if c != Micros::ZERO {
                batch.insert(ck, encode(&c));
            } else if stored {
                batch.remove(ck);
            }
        }
        Ok(summary)
    }

    fn apply_put_mapping(&self, m: &TenantMapping, now_ms: UnixMillis) -> Result<u64, StoreError> {
        if matches!(m.identity, Identity::Tenant(_)) {
            return Err(StoreError::Corrupt("a tenant cannot map to another tenant".into()));
        }
        let mut batch = super::batch::Batch::default();
        batch.insert(keys::tenant_key(&m.tenant_id), encode(m));
        let lk = keys::lifecycle_key(&m.identity).expect("marketplace identity");
        if let Some(a) = &m.agreement_id {
            batch.insert(keys::agreement_key(a), lk.clone());
        }
        if self.db.get(&lk)?.is_none() {
            let mut life = CustomerLifecycle::new(m.identity.clone(), None, m.agreement_id.clone());
            life.record(StatusChange {
                at_ms: now_ms,
                status: CustomerStatus::Active,
                source: format!("mapped from tenant {:?}", m.tenant_id),
                event_id: None,
                applied: true,
            });
            counts::customer_written(&self.db, &mut batch, None, &life)?;
            batch.insert(lk.clone(), encode(&life));
        }
        // AWS keeps one record per (customer, dimension, hour) and answers DuplicateRecord to any other: held
        // usage may take an AWS key of the identity only if no other record has it. Usage that cannot takes the
        // identity's next hour nobody else has (counted there as late), never a second record.
        let customer = lk;
        let open_hour = self.sealed_through()?.map_or(hour_start(now_ms), |s| hour_start(now_ms).max(s));
        let tenant = Identity::Tenant(m.tenant_id.clone());
        let mut moved = 0;
        let mut merged: HashMap<Vec<u8>, Bucket> = HashMap::new();
        let mut hours = hour_totals::Edits::new(&self.db);
        // Buckets the move creates (targets not stored yet, placeholders); every moved one is closed.
        let mut opened = 0u64;
        for kv in self.db.scan_prefix(keys::BUCKET_PREFIX) {
            let (k, v) = kv?;
            let bk = keys::decode_bucket_key(&k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if bk.identity != tenant || bk.product != m.product {
                continue;
            }
            let mut b: Bucket = decode(&v)?;
            let mut hour_ms = bk.hour_ms;
            // Only a customer sealed early (deprovisioned) has records for open hours.
            if self.aws_key_taken(hour_ms, &bk.product, &customer, &bk.dimension, &[])? {
                hour_ms = self.free_hour(hour_ms.max(open_hour), &bk.product, &customer, &bk.dimension)?;
                b.late = b.total;
            }
            // The usage leaves the tenant's hour for the identity's (the same hour unless its AWS key is taken).
            hours.remove_usage(bk.hour_ms, &bk.product, &bk.dimension, b.total)?;
            hours.add_usage(hour_ms, &bk.product, &bk.dimension, b.total)?;
            let target = keys::encode_bucket_key(&BucketKey { identity: m.identity.clone(), hour_ms, ..bk });
            let mut t = match merged.remove(&target) {
                Some(t) => t,
                None => match self.db.get(&target)? {
                    Some(tv) => decode(&tv)?,
                    None => {
                        opened += 1;
                        Bucket::default()
                    }
                },
            };
            t.total = t.total.try_add(b.total).map_err(overflow("a bucket moved to the identity"))?;
            t.events += b.events;
            t.late = t.late.try_add(b.late).map_err(overflow("a bucket moved to the identity"))?;
            merged.insert(target, t);
            batch.remove(k);
            moved += 1;
        }
        // Sealed records held under the tenant, never sent: each takes its AWS key now (and keeps it: `sent_as`
        // is frozen), or, when another record has that key, is merged into the identity's next free hour.
        let mut carries: HashMap<Vec<u8>, Micros> = HashMap::new();
        let mut totals = self.pending_totals()?;
        if self.db.get(keys::tenant_key(&m.tenant_id))?.is_none() {
            // The tenant's pending held records the loop below leaves as they are (another product's, or in
            // flight) stop being at risk now that it is mapped.
            for kv in self.db.scan_prefix(keys::QUEUE_PREFIX) {
                let (q, _) = kv?;
                let k =
                    keys::record_key_of_queue_entry(&q).ok_or_else(|| StoreError::Corrupt("short queue key".into()))?;
                if !keys::record_key_is_of_tenant(k, &m.tenant_id) {
                    continue;
                }
                let v = self.db.get(k)?.ok_or_else(|| StoreError::Corrupt("queue entry without its record".into()))?;
                let r: SealedRecord = decode(&v)?;
                if pending::held_tenant(&r).is_some() && !(r.key.product == m.product && r.state == RecordState::Sealed)
                {
                    totals.remove(&r, true);
                    totals.add(&r, false);
                }
            }
        }
        // Only pending records can still be sent: walk the queue (bounded by the submission window), not every
        // record ever sealed.
        for kv in self.db.scan_prefix(keys::QUEUE_PREFIX) {
            let (q, _) = kv?;
            let k = keys::record_key_of_queue_entry(&q).ok_or_else(|| StoreError::Corrupt("short queue key".into()))?;
            if !keys::record_key_is_of(k, &m.product, &tenant) {
                continue;
            }
            let Some(v) = self.db.get(k)? else {
                return Err(StoreError::Corrupt("queue entry without its record".into()));
            };
            let r: SealedRecord = decode(&v)?;
            if r.sent_as.is_some() || r.state != RecordState::Sealed {
                continue;
            }
            // Read before this batch lands: at risk unless the tenant was already mapped.
            let was_at_risk = pending::at_risk(&self.db, &r)?;
            totals.remove(&r, was_at_risk);
            if !self.aws_key_taken(r.key.hour_ms, &r.key.product, &customer, &r.key.dimension, k)? {
                let r = SealedRecord { sent_as: Some(m.identity.clone()), ..r };
                totals.add(&r, false);
                batch.insert(k.to_vec(), encode(&r));
                continue;
            }
            let into_hour_ms = self.free_hour(open_hour, &r.key.product, &customer, &r.key.dimension)?;
            // The whole units ride in the identity's carry, so every micro-unit stays counted exactly once
            // (recorded here, carried, then sealed into the identity's next record).
            let ck = keys::carry_key(&r.key.product, &m.identity, &r.key.dimension);
            let c = match carries.get(&ck) {
                Some(c) => *c,
                None => match self.db.get(&ck)? {
                    Some(v) => decode(&v)?,
                    None => Micros::ZERO,
                },
            };
            let c = c.try_add(Micros::from_units(u64::from(r.quantity))).map_err(overflow("the identity's carry"))?;
            carries.insert(ck, c);
            // The carry is sealed with the series' next bucket: make sure there is one.
            let prefix = keys::record_prefix(into_hour_ms, &r.key.product, &m.identity, &r.key.dimension);
            if r.quantity > 0
                && !merged.keys().any(|b| b.starts_with(&prefix))
                && self.db.scan_prefix(&prefix).next().is_none()
            {
                let placeholder = BucketKey {
                    hour_ms: into_hour_ms,
                    product: r.key.product.clone(),
                    identity: m.identity.clone(),
                    dimension: r.key.dimension.clone(),
                    tags: Default::default(),
                };
                merged.insert(keys::encode_bucket_key(&placeholder), Bucket::default());
                opened += 1;
            }
            tracing::warn!(record = ?r.key, into = %m.identity.label(), units = r.quantity,
                into_hour = %crate::clock::rfc3339(into_hour_ms),
                "held usage maps to an AWS key another record already has: merged into the identity's next hour");
            self.counters.records_merged.fetch_add(1, Ordering::Relaxed);
            batch.remove(keys::queue_key(r.deadline_ms, k));
            let state = RecordState::Merged { into: m.identity.clone(), into_hour_ms, at_ms: now_ms };
            batch.insert(k.to_vec(), encode(&SealedRecord { state, ..r }));
        }
        for (k, c) in carries {
            batch.insert(k, encode(&c));
        }
        for (k, b) in merged {
            batch.insert(k, encode(&b));
        }
        hours.write(&mut batch);
        counts::buckets_changed(&self.db, &mut batch, opened, moved)?;
        batch.insert(keys::PENDING_KEY, encode(&totals));
        self.commit(batch)?;
        Ok(moved)
    }

    /// The AWS customer a record is (or will be) sent as, as its `s/` key; None when it never goes out.
    fn aws_customer(&self, r: &SealedRecord) -> Result<Option<Vec<u8>>, StoreError> {
        let wire = match (&r.state, &r.key.identity, &r.sent_as) {
            (RecordState::Carried | RecordState::Merged { .. }, _, _) => return Ok(None),
            (_, Identity::Tenant(_), Some(sent)) => sent.clone(),
            // Held and expired unmapped: never sent.
            (RecordState::Expired { .. }, Identity::Tenant(_), None) => return Ok(None),
            // Held under a tenant mapped before `sent_as` was fixed at mapping time: it goes out as the mapping.
            (_, Identity::Tenant(t), None) => match self.db.get(keys::tenant_key(t))? {
                Some(v) => match decode::<TenantMapping>(&v)? {
                    m if m.product == r.key.product => m.identity,
                    _ => return Ok(None),
                },
                None => return Ok(None),
            },
            (_, identity, _) => identity.clone(),
        };
        Ok(keys::lifecycle_key(&wire))
    }

    /// Whether a record other than the one at `except` has the AWS key (customer, dimension, hour) of `product`.
    fn aws_key_taken(
        &self,
        hour_ms: UnixMillis,
        product: &str,
        customer: &[u8],
        dimension: &str,
        except: &[u8],
    ) -> Result<bool, StoreError> {
        for kv in self.db.scan_prefix(keys::record_hour_prefix(hour_ms)) {
            let (k, v) = kv?;
            if k.as_ref() == except {
                continue;
            }
            let r: SealedRecord = decode(&v)?;
            if r.key.product == product
                && r.key.dimension == dimension
                && self.aws_customer(&r)?.as_deref() == Some(customer)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The first hour from `from_ms` whose AWS key of this customer no record has. Records of open hours exist
    /// only for customers sealed early, so this looks at one or two hours.
    fn free_hour(
        &self,
        from_ms: UnixMillis,
        product: &str,
        customer: &[u8],
        dimension: &str,
    ) -> Result<UnixMillis, StoreError> {
        let mut hour_ms = from_ms;
        while self.aws_key_taken(hour_ms, product, customer, dimension, &[])? {
            hour_ms += crate::clock::HOUR_MS;
        }
        Ok(hour_ms)
    }

    fn apply_lifecycle(&self, ev: &LifecycleEvent, params: &SealParams) -> Result<LifecycleOutcome, StoreError> {
        let now = params.now_ms;
        let (lk, identity) = match &ev.subject {
            Subject::License { license_arn, account_id } => {
                let id = Identity::Aws {
                    account_id: account_id.clone().unwrap_or_default(),
                    license_arn: license_arn.clone(),
                };
                (keys::lifecycle_key(&id).expect("license"), Some(id))
            }
            Subject::Legacy { customer_identifier, .. } => {
                let id = Identity::Legacy { customer_identifier: customer_identifier.clone() };
                (keys::lifecycle_key(&id).expect("legacy"), Some(id))
            }
            Subject::Agreement { agreement_id } => match self.db.get(keys::agreement_key(agreement_id))? {
                Some(lk) => (lk.to_vec(), None),
                None => return Ok(LifecycleOutcome { unknown_agreement: true, ..LifecycleOutcome::default() }),
            },
        };
        let before = self.db.get(&lk)?.map(|v| decode::<CustomerLifecycle>(&v)).transpose()?;
        let mut life = match &before {
            Some(l) => l.clone(),
            None => match identity {
                Some(identity) => CustomerLifecycle::new(identity, ev.product_code.clone(), ev.agreement_id.clone()),
                None => return Ok(LifecycleOutcome { unknown_agreement: true, ..LifecycleOutcome::default() }),
            },
        };
        let transition = life.apply(ev, now);
        let applied = transition.applied;
        let mut batch = super::batch::Batch::default();
        if let Some(a) = &life.agreement_id {
            batch.insert(keys::agreement_key(a), lk.clone());
        }
        let mut outcome =
            LifecycleOutcome { applied, status: Some(life.status.clone()), ..LifecycleOutcome::default() };
        if transition.leaves {
            // The final reporting hour: seal everything open for this customer, the current hour included, and
            // bring the deadlines forward so it goes out ahead of everything else.
            let mut buckets = Vec::new();
            let tenants: Vec<String> = self
                .db
                .scan_prefix(keys::TENANT_PREFIX)
                .filter_map(|kv| kv.ok())
                .filter_map(|(_, v)| decode::<TenantMapping>(&v).ok())
                .filter(|m| keys::lifecycle_key(&m.identity).as_deref() == Some(lk.as_slice()))
                .map(|m| m.tenant_id)
                .collect();
            for kv in self.db.scan_prefix(keys::BUCKET_PREFIX) {
                let (k, v) = kv?;
                let bk = keys::decode_bucket_key(&k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let mine = match &bk.identity {
                    Identity::Tenant(t) => tenants.contains(t),
                    other => keys::lifecycle_key(other).as_deref() == Some(lk.as_slice()),
                };
                if mine {
                    buckets.push((k.to_vec(), bk, decode::<Bucket>(&v)?));
                }
            }
            let s = self.seal_buckets(&mut batch, buckets, params, Some(final_hour_deadline(now, params.margin_ms)))?;
            outcome.records_sealed = s.records;
        }
        counts::customer_written(&self.db, &mut batch, before.as_ref(), &life)?;
        batch.insert(lk, encode(&life));
        self.commit(batch)?;
        Ok(outcome)
    }

    fn apply_amend(
        &self,
        subject: &Subject,
        entry: StatusChange,
        reinstate: bool,
    ) -> Result<Option<super::AmendOutcome>, StoreError> {
        let lk = match subject {
            Subject::License { license_arn, .. } => {
                keys::lifecycle_key(&Identity::Aws { account_id: String::new(), license_arn: license_arn.clone() })
            }
            Subject::Legacy { customer_identifier, .. } => {
                keys::lifecycle_key(&Identity::Legacy { customer_identifier: customer_identifier.clone() })
            }
            Subject::Agreement { agreement_id } => self.db.get(keys::agreement_key(agreement_id))?.map(|v| v.to_vec()),
        };
        let Some(lk) = lk else { return Ok(None) };
        let Some(v) = self.db.get(&lk)? else { return Ok(None) };
        let before = decode::<CustomerLifecycle>(&v)?;
        let mut life = before.clone();
        let previous = life.status.clone();
        if !life.amend(entry, reinstate) {
            return Ok(Some(super::AmendOutcome { previous, lifecycle: life, changed: false }));
        }
        let mut batch = super::batch::Batch::default();
        counts::customer_written(&self.db, &mut batch, Some(&before), &life)?;
        batch.insert(lk, encode(&life));
        self.commit(batch)?;
        Ok(Some(super::AmendOutcome { previous, lifecycle: life, changed: true }))
    }

    /// Keeps AWS's word on the customer ([`CustomerLifecycle::note_not_subscribed`]).
    fn apply_not_subscribed(&self, identity: &Identity, at_ms: UnixMillis) -> Result<(), StoreError> {
        let Some(lk) = keys::lifecycle_key(identity) else { return Ok(()) };
        let before = self.db.get(&lk)?.map(|v| decode::<CustomerLifecycle>(&v)).transpose()?;
        let mut life = before.clone().unwrap_or_else(|| CustomerLifecycle::new(identity.clone(), None, None));
        life.note_not_subscribed(at_ms);
        let mut batch = super::batch::Batch::default();
        counts::customer_written(&self.db, &mut batch, before.as_ref(), &life)?;
        batch.insert(lk, encode(&life));
        self.commit(batch)?;
        Ok(())
    }

    /// Copies the live generation's default tree into a fresh generation, makes it durable and switches to it
    /// (`CURRENT`), with writes stopped: this thread is the only writer. The dedupe window is not in sled (store
    /// v4: `journal`), so what is copied is the ledger, the registry and the counters.
    fn repack(&mut self) -> Result<RepackOutcome, StoreError> {
        let started = std::time::Instant::now();
        let bytes_before = self.db.size_on_disk()?;
        // A copy is never larger than the generation it copies: room for that on top of the reserve.
        self.check_room(bytes_before)?;
        let next = generation::next(&self.place.generation);
        let path = self.place.dir.join(&next);
        let io = |e: std::io::Error| StoreError::Io(format!("repack into {}: {e}", path.display()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io)?;
        }
        let copied = (|| {
            let cache = self.place.cache_bytes;
            let fresh = super::open_sled(&path, cache)?;
            // Every acknowledged write is in the old generation: make it durable before copying from it.
            current(&self.shared).sync()?;
            // The default tree: buckets, records, queue, registry, counters, the segments' `g/` records and the
            // journal mark.
            let mut keys = 0u64;
            let mut batch = sled::Batch::default();
            let mut in_batch = 0usize;
            for kv in self.db.iter() {
                let (k, v) = kv?;
                batch.insert(k, v);
                keys += 1;
                in_batch += 1;
                if in_batch == REPACK_BATCH_KEYS {
                    fresh.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
            fresh.apply_batch(batch)?;
            // The new generation must be whole on disk — log, config, directories, its entry in the data dir —
            // before CURRENT may name it.
            let files = durable::GenerationFiles::open(&path).map_err(io)?;
            let fresh = Live { db: fresh, files: std::sync::Arc::new(files) };
            fresh.sync()?;
            Ok::<_, StoreError>((fresh, keys))
        })();
        let (fresh, keys) = match copied {
            Ok(c) => c,
            Err(e) => {
                // The old generation is still the live one, untouched.
                let _ = std::fs::remove_dir_all(&path);
                return Err(e);
            }
        };
        if let Err(e) = generation::commit(&self.place.dir, &next) {
            // CURRENT may or may not name the new generation now, so neither can safely take writes.
            let why = format!("switching to repacked store generation {next} failed: {e}");
            self.broken = Some(why.clone());
            return Err(StoreError::Poisoned(why));
        }
        let old_db = std::mem::replace(&mut self.db, fresh.db.clone());
        let replaced = std::mem::replace(&mut *self.shared.write().unwrap_or_else(|e| e.into_inner()), fresh);
        replaced.files.retire();
        let old = std::mem::replace(&mut self.place.generation, next);
        // Open handles of the old generation (a reader mid-scan) keep working on the unlinked files.
        match generation::remove_others(&self.place.dir, &self.place.generation)
            .and_then(|_| durable::sync_dir(&self.place.dir))
        {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(generation = %old, error = %e, "could not remove the old store generation; the next start will")
            }
        }
        // The old generation's last handles are dropped (sled then flushes it and stops its threads) and the freed
        // memory handed back off this thread: both took ~0.6 s of writes waiting after the switch at the 10 M
        // history benchmark.
        let spawned = std::thread::Builder::new().name("meterd-retire".into()).spawn(move || {
            drop((old_db, replaced));
            crate::memory::give_back_freed_memory();
        });
        if spawned.is_err() {
            crate::memory::give_back_freed_memory();
        }
        // Writes waited for all of it: the copy runs on this thread.
        let paused_millis = started.elapsed().as_millis() as u64;
        let took = started.elapsed();
        self.counters.repacks.fetch_add(1, Ordering::Relaxed);
        self.counters.repack_micros.fetch_add(paused_millis * 1000, Ordering::Relaxed);
        let outcome = RepackOutcome {
            keys,
            bytes_before,
            bytes_after: self.db.size_on_disk()?,
            millis: took.as_millis() as u64,
            paused_millis,
        };
        tracing::info!(generation = %self.place.generation, keys, bytes_before = outcome.bytes_before,
            bytes_after = outcome.bytes_after, millis = outcome.millis, paused_millis, "repacked the store");
        Ok(outcome)
    }

    fn apply_compact(&mut self, cutoff_ms: UnixMillis) -> Result<super::Compacted, StoreError> {
        // Segments whose keys all arrived more than a day (the largest future skew allowed) before the cutoff:
        // retention is at least the dedupe window, so they are past it (normally the ingest path dropped them).
        let old: Vec<UnixMillis> = {
            let journal = self.journal.read().unwrap_or_else(|e| e.into_inner());
            let span = journal.span_ms;
            journal
                .live
                .keys()
                .copied()
                .filter(|s| s.saturating_add(span) <= cutoff_ms.saturating_sub(24 * crate::clock::HOUR_MS))
                .collect()
        };
        let events = self.drop_segments(&old)?;
        let mut removed = self.compact_records(cutoff_ms)?;
        removed.events = events;
        Ok(removed)
    }

    fn compact_records(&self, cutoff_ms: UnixMillis) -> Result<super::Compacted, StoreError> {
        let mut removed = super::Compacted::default();
        let mut batch = super::batch::Batch::default();
        let mut hours = hour_totals::Edits::new(&self.db);
        // Records are keyed hour first: stop at the first hour not older than the cutoff.
        for kv in self.db.scan_prefix(keys::RECORD_PREFIX) {
            let (k, v) = kv?;
            let r: SealedRecord = decode(&v)?;
            if r.key.hour_ms >= cutoff_ms {
                break;
            }
            if !r.state.is_terminal() {
                continue;
            }
            let q = u64::from(r.quantity);
            match r.state {
                RecordState::Accepted { .. } => removed.accepted += q,
                RecordState::Rejected { .. } => removed.rejected += q,
                RecordState::Expired { .. } => removed.expired += q,
                _ => {}
            }
            removed.recorded = removed.recorded.try_add(r.recorded).map_err(overflow("compacted usage"))?;
            removed.late = removed.late.try_add(r.late).map_err(overflow("compacted late usage"))?;
            removed.records += 1;
            hours.removed(&r)?;
            batch.remove(k);
        }
        // Idempotency keys are not counted here: their segments leave whole ([`Self::drop_segments`]).
        if removed.records == 0 {
            return Ok(removed);
        }
        let mut total: super::Compacted = match self.db.get(keys::COMPACTED_KEY)? {
            Some(v) => decode(&v)?,
            None => super::Compacted::default(),
        };
        total.records += removed.records;
        total.events += removed.events;
        total.recorded = total.recorded.try_add(removed.recorded).map_err(overflow("compacted usage"))?;
        total.late = total.late.try_add(removed.late).map_err(overflow("compacted late usage"))?;
        total.accepted += removed.accepted;
        total.rejected += removed.rejected;
        total.expired += removed.expired;
        hours.write(&mut batch);
        batch.insert(keys::COMPACTED_KEY, encode(&total));
        self.commit(batch)?;
        Ok(removed)
    }

    fn apply_update(&self, records: &[SealedRecord]) -> Result<(), StoreError> {
        let mut batch = super::batch::Batch::default();
        let mut lost: Option<super::Lost> = None;
        let mut totals = self.pending_totals()?;
        // A record updated twice in one call changes from its state in this batch, not the stored one.
        let mut updated: HashMap<Vec<u8>, &SealedRecord> = HashMap::new();
        for r in records {
            let rkey = keys::record_key(&r.key);
            let old: SealedRecord = match updated.get(&rkey) {
                Some(o) => (*o).clone(),
                None => match self.db.get(&rkey)? {
                    Some(old) => decode(&old)?,
                    None => return Err(StoreError::Corrupt(format!("update of unknown record {:?}", r.key))),
                },
            };
            check_update(&old, r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if pending::queued(&old) {
                totals.remove(&old, pending::at_risk(&self.db, &old)?);
            }
            if pending::queued(r) {
                totals.add(r, pending::at_risk(&self.db, r)?);
            }
            if let Some(units) = lost_units(r) {
                // Counted in the same write as the state, so the total can neither miss nor double one.
                let l = match lost.as_mut() {
                    Some(l) => l,
                    None => lost.insert(match self.db.get(keys::LOST_KEY)? {
                        Some(v) => decode(&v)?,
                        None => super::Lost::default(),
                    }),
                };
                l.records += 1;
                l.units += units;
            }
            let qkey = keys::queue_key(r.deadline_ms, &rkey);
            if r.state.is_terminal() {
                batch.remove(qkey);
            } else {
                batch.insert(qkey, &[][..]);
            }
            batch.insert(rkey.clone(), encode(r));
            updated.insert(rkey, r);
        }
        batch.insert(keys::PENDING_KEY, encode(&totals));
        if let Some(l) = lost {
            batch.insert(keys::LOST_KEY, encode(&l));
        }
        self.commit(batch)?;
        Ok(())
    }
}

fn flusher_loop(redo: Arc<Redo>, rx: std_mpsc::Receiver<AppliedGroup>, counters: Arc<StoreCounters>, watch: &Watch) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        groups.extend(rx.try_iter());
        let _busy = watch.busy(Worker::Flusher);
        let started = std::time::Instant::now();
        // After a failed fsync the kernel may have dropped dirty pages: the log poisons itself, so nothing
        // written since is promised durable and every later write is refused too.
        let result = redo.sync().map(|synced| {
            if synced {
                let took = started.elapsed();
                counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                counters.fsync_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                if took >= std::time::Duration::from_millis(100) {
                    tracing::debug!(millis = took.as_millis() as u64, groups = groups.len(), "slow barrier");
                }
            }
        });
        for group in groups {
            if result.is_ok() {
                counters.events_stored.fetch_add(group.new_events, Ordering::Relaxed);
            }
            for reply in group.replies {
                reply(result.clone());
            }
        }
    }
}

/// Every [`super::redo::CHECKPOINT_EVERY`], and once more when the writer stops: syncs sled's live generation,
/// the dedupe segment files and a spool's outbox files, then deletes the redo log files that only held what they now hold. A failed
/// sync poisons the log (a retry could succeed over pages the kernel dropped) and keeps every file.
fn checkpoint_loop(
    shared: SharedDb,
    journal: Arc<std::sync::RwLock<Journal>>,
    spool: Option<Arc<super::outbox::Spool>>,
    redo: Arc<Redo>,
    counters: Arc<StoreCounters>,
    stopped: std_mpsc::Receiver<()>,
    watch: &Watch,
) {
    let mut done = redo.applied_seq();
    loop {
        let last = matches!(
            stopped.recv_timeout(super::redo::CHECKPOINT_EVERY),
            Err(std_mpsc::RecvTimeoutError::Disconnected)
        );
        let through = redo.applied_seq();
        if through > done && redo.poisoned().is_none() {
            let _busy = watch.busy(Worker::Checkpoint);
            let started = std::time::Instant::now();
            let synced = (|| {
                // Read before the syncs: everything applied up to `through` is in what they cover.
                current(&shared).sync()?;
                let files = journal.read().unwrap_or_else(|e| e.into_inner()).files();
                for f in files.map_err(|e| StoreError::Io(format!("dedupe segment: {e}")))? {
                    f.sync_data().map_err(|e| StoreError::Io(format!("dedupe segment: {e}")))?;
                }
                for f in spool.iter().flat_map(|s| s.files_to_sync()) {
                    f.sync_data().map_err(|e| StoreError::Io(format!("outbox file: {e}")))?;
                }
                Ok::<_, StoreError>(())
            })();
            match synced {
                Ok(()) => {
                    done = through;
                    redo.release_through(through);
                    counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                    counters.checkpoint_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                Err(e) => redo.poison(format!("checkpoint failed: {e}")),
            }
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_is_described_by_its_command_counts() {
        let remove = || Command::RemoveMapping { tenant_id: "t".into(), reply: oneshot::channel().0 };
        let held = PassHeld::of(&[remove(), Command::Stop, remove()]);
        assert_eq!(held.to_string(), "remove_mapping×2 stop×1");
        assert_eq!(held.ingest_events, 0);
        assert_eq!(PassHeld::of(&[]).to_string(), "");
    }
}
