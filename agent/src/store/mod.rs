//! The durable store: the only place meterd's state lives.
//!
//! The rest of the agent sees a narrow interface: [`Store::ingest`] (validated events in, receipts out,
//! returning only once the write is fsynced) and read-only views. All mutations go through one writer
//! thread, which turns each group of concurrently arriving calls into one atomic write: a record in the redo log
//! ([`redo`], the commit point), then a sled batch over the default tree, with the group's idempotency keys in
//! the current dedupe segment file ([`journal`]). Many callers share one fsync of the log (group commit); sled and
//! the segment files are synced by a checkpoint off the write path. A reply never leaves before the fsync that
//! covers its write.
//!
//! A PostgreSQL backend for fleets would implement the same operations; nothing outside
//! this module touches sled.

pub mod batch;
pub mod counts;
pub mod durable;
pub mod generation;
pub mod hour_totals;
pub mod journal;
pub mod keys;
pub mod metrics;
pub mod migrate;
pub mod mirror;
pub mod outbox;
pub mod outbox_log;
pub mod pages;
pub mod pending;
pub mod redo;
pub mod schema;
pub mod seam;
pub mod segments;
pub mod space;
pub mod stamps;
pub mod watch;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use crate::clock::UnixMillis;
use crate::domain::event::{Bucket, BucketKey, StoredEvent, UsageEvent};
pub use crate::domain::ingest::{IngestOutcome, IngestRules};
use crate::domain::quantity::Micros;
use crate::domain::record::SealedRecord;
pub use crate::domain::seal::SealParams;
pub use seam::Ledger;

/// The on-disk layout this build writes. Bump it with a migration in `open`. 1: one `e/` key per event for the
/// whole retention; 2: idempotency keys in dedupe segments ([`segments`], [`migrate`]); 3: every value in an
/// explicit, versioned, checksummed stored layout ([`schema`]) instead of postcard of a Rust struct; 4: the dedupe
/// window in files of its own ([`journal`]); 5: every write committed through the redo log ([`redo`]).
pub const SCHEMA_VERSION: u32 = 5;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store schema version {found} is not supported by this meterd (supports {SCHEMA_VERSION}); upgrade meterd")]
    UnsupportedSchema { found: u32 },
    #[error("store is shut down")]
    Closed,
    /// A total would not fit: the write is refused whole rather than dropping a term.
    #[error("a total would overflow ({0}); nothing was written")]
    Overflow(String),
    /// Below the free-space reserve: nothing was written.
    #[error("{0}")]
    DiskFull(space::DiskFull),
    #[error(
        "{0}. Refusing to start an empty store over a data dir that held one: acknowledged usage would be lost without a word. Restore the data dir from a backup, or move it away to start afresh"
    )]
    Missing(String),
    #[error(
        "an earlier fsync failed ({0}); the store refuses further writes because their durability cannot be promised. Restart meterd"
    )]
    Poisoned(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::Io(other.to_string()),
        }
    }
}

/// Totals of records and events removed by retention (shared with the fleet's ledger).
pub use crate::domain::record::Compacted;

/// Records AWS answered DuplicateRecord on their first send: it already holds another quantity under their
/// key, so their units are never billed. Kept apart from the records so retention never hides them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lost {
    pub records: u64,
    pub units: u64,
}

/// What applying a lifecycle event did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LifecycleOutcome {
    /// False for duplicates and events older than the customer's current status.
    pub applied: bool,
    pub status: Option<crate::domain::customer::CustomerStatus>,
    /// Records sealed at once for the final reporting hour.
    pub records_sealed: u64,
    /// A `Purchase Agreement *` event for an agreement meterd has never seen.
    pub unknown_agreement: bool,
}

/// What amending a customer's lifecycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmendOutcome {
    pub previous: crate::domain::customer::CustomerStatus,
    pub lifecycle: crate::domain::customer::CustomerLifecycle,
    pub changed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealSummary {
    pub buckets: u64,
    pub records: u64,
    /// Hours whose usage was all fraction: nothing to send, everything carried.
    pub carried_only: u64,
    /// Every hour before it is sealed; None when this seal sealed nothing new.
    pub sealed_through: Option<UnixMillis>,
}

/// Counters the writer keeps; read by `Admin.Status`.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub events_stored: AtomicU64,
    pub replays: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_micros: AtomicU64,
    /// Checkpoints (sled and the dedupe segments synced, redo log files deleted) and the time they took.
    pub checkpoints: AtomicU64,
    pub checkpoint_micros: AtomicU64,
    pub late_events: AtomicU64,
    /// Hourly buckets frozen into records, and records sealed (since start).
    pub buckets_sealed: AtomicU64,
    pub records_sealed: AtomicU64,
    pub write_groups: AtomicU64,
    /// Held tenant records merged into their identity's next hour because their AWS key was taken (since start).
    pub records_merged: AtomicU64,
    /// Repacks done (since start), the time they took, and the live bytes the last bloat check measured.
    pub repacks: AtomicU64,
    /// Free bytes on the data dir's filesystem and the reserve, as of the last check (every ingest group), and
    /// whether ingest is refused for lack of room.
    pub disk_free_bytes: AtomicU64,
    pub disk_reserve_bytes: AtomicU64,
    pub disk_full: std::sync::atomic::AtomicBool,
    pub repack_micros: AtomicU64,
    pub live_bytes: AtomicU64,
    /// Bytes on disk per 1,000 live bytes right after the last bloat-triggered repack (0: none yet): what a fresh
    /// copy costs, so the bloat check compares the store with that, not with the raw bytes.
    pub packed_per_live_milli: AtomicU64,
    /// Writes that moved usage from one place to another (seals, compactions, tenant mappings, a leaving customer's
    /// seal): a report read in pages restarts when this changes between its pages ([`pages`]).
    pub structure_changes: AtomicU64,
}

/// Everything the report reads, taken at one instant between two writes, so its parts always agree (a seal between
/// separate scans could count a bucket both open and sealed, or neither).
#[derive(Debug, Clone, Default)]
pub struct LedgerSnapshot {
    pub records: Vec<SealedRecord>,
    pub buckets: Vec<(BucketKey, Bucket)>,
    pub carries: Vec<Micros>,
    pub mappings: Vec<crate::domain::customer::TenantMapping>,
    pub compacted: Compacted,
    pub lost: Lost,
}

/// Reads a snapshot from `db`; consistent when nothing writes meanwhile (the writer thread calls it).
pub(crate) fn read_snapshot(db: &sled::Db) -> Result<LedgerSnapshot, StoreError> {
    let all =
        |prefix: &[u8]| -> Result<Vec<sled::IVec>, StoreError> { db.scan_prefix(prefix).map(|kv| Ok(kv?.1)).collect() };
    let decode_all = |prefix: &[u8]| -> Result<Vec<_>, StoreError> { all(prefix)?.iter().map(|v| decode(v)).collect() };
    let buckets = db
        .scan_prefix(keys::BUCKET_PREFIX)
        .map(|kv| {
            let (k, v) = kv?;
            let key = keys::decode_bucket_key(&k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok((key, decode(&v)?))
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(LedgerSnapshot {
        records: decode_all(keys::RECORD_PREFIX)?,
        buckets,
        carries: all(keys::CARRY_PREFIX)?.iter().map(|v| decode(v)).collect::<Result<_, _>>()?,
        mappings: all(keys::TENANT_PREFIX)?.iter().map(|v| decode(v)).collect::<Result<_, _>>()?,
        compacted: db.get(keys::COMPACTED_KEY)?.map(|v| decode(&v)).transpose()?.unwrap_or_default(),
        lost: db.get(keys::LOST_KEY)?.map(|v| decode(&v)).transpose()?.unwrap_or_default(),
    })
}

/// What a repack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepackOutcome {
    pub keys: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// From the start of the copy to the switch.
    pub millis: u64,
    /// How long writes waited: the final step only (the dedupe segments are copied while the writer goes on).
    pub paused_millis: u64,
}

/// The live generation: sled's handle and the files its barrier fsyncs.
#[derive(Clone)]
pub(crate) struct Live {
    pub db: sled::Db,
    pub files: Arc<durable::GenerationFiles>,
}

impl Live {
    /// Everything written so far survives a power loss once this returns (see [`durable`]).
    pub fn sync(&self) -> Result<(), StoreError> {
        Ok(self.files.sync(&self.db)?)
    }
}

/// The live generation. A repack replaces it; readers take a clone per call so they never see a mix.
pub(crate) type SharedDb = Arc<RwLock<Live>>;

pub(crate) fn current(shared: &SharedDb) -> Live {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

pub(crate) fn current_db(shared: &SharedDb) -> sled::Db {
    current(shared).db
}

/// Written once, durably, when a data dir first holds a store. From then on a missing or empty store in it is
/// a loss to report, not a fresh start.
pub const MARKER_FILE: &str = "STORE";

/// Below this a store is not worth repacking, whatever its ratio.
pub const REPACK_MIN_BYTES: u64 = 64 * 1024 * 1024;

/// Whether a store of `on_disk` bytes holding `live` bytes of keys and values is bloated enough to repack.
pub fn should_repack(on_disk: u64, live: u64, ratio: f64, min_bytes: u64) -> bool {
    ratio > 0.0 && on_disk >= min_bytes && on_disk as f64 > ratio * live.max(1) as f64
}

/// How to open a store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// sled's page cache (bounds the agent's memory).
    pub cache_bytes: u64,
    /// Free space kept on the data dir's filesystem (`storage.min_free`).
    pub min_free: space::MinFree,
    /// Buckets per seal chunk (`storage.seal_chunk`; [`SEAL_CHUNK_BUCKETS`] by default).
    pub seal_chunk: usize,
    /// How long an idempotency key is kept after it arrived: `storage.dedupe_window` plus the future-skew
    /// allowance ([`segments`]).
    pub dedupe_keep_ms: i64,
    /// A writer pass, redo log fsync or checkpoint that takes longer than this ends the process ([`watch`]);
    /// `None`: not watched.
    pub stuck_after: Option<std::time::Duration>,
}

pub use writer::{SEAL_CHUNK_BUCKETS, SealProgress};

/// The default `dedupe_keep_ms`: the default window (48 h) and future skew (5 min).
pub const DEFAULT_DEDUPE_KEEP_MS: i64 = 48 * crate::clock::HOUR_MS + 5 * 60_000;

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: SharedDb,
    dir: PathBuf,
    commands: mpsc::Sender<writer::Command>,
    counters: Arc<StoreCounters>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Fleet mode with `ack = "shared"`: an ingest answers only once this says the shared ledger has it.
    ack_gate: std::sync::OnceLock<Arc<dyn outbox::AckGate>>,
    /// The dedupe window's segments (the writer appends; readers look keys up).
    journal: Arc<RwLock<journal::Journal>>,
    /// Ingest calls stamped and not yet written (the fleet forwarder's watermark stays below them).
    stamps: Arc<stamps::Stamps>,
    /// Fleet mode: the outbox's writer side (the forwarder reads its reorder depth).
    spool: Option<Arc<outbox::Spool>>,
    /// How long the writer, flusher and checkpoint have been on their current work (the watchdog reads it).
    watch: Arc<watch::Watch>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, created 0700 because it holds billing data, with the default
    /// `storage.cache_mb` (64 MiB).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, 64 * 1024 * 1024)
    }

    /// As [`Store::open`], with sled's page cache bounded to `cache_bytes` (sled's default is 1 GiB).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(
            dir,
            StoreOptions {
                cache_bytes,
                min_free: space::MinFree::Bytes(0),
                seal_chunk: SEAL_CHUNK_BUCKETS,
                dedupe_keep_ms: DEFAULT_DEDUPE_KEEP_MS,
                // A store that deadlocks (see `watch`) ends the tool or test that opened it instead of hanging it.
                stuck_after: Some(watch::DEFAULT_STUCK_AFTER),
            },
        )
    }

    /// Opens the store with every setting. Refuses, without writing a byte, when the data dir's filesystem has
    /// less free space than the reserve: sled may leave a store it cannot read back when opened on a full disk.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        Self::open_as(dir, options, false)
    }

    /// Opens the store as a fleet node's spool: every acknowledged event also goes to the outbox
    /// ([`outbox`]) until forwarded. A data dir is a spool or a standalone ledger for good (see
    /// [`outbox::check_mode`]).
    pub fn open_spool(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        Self::open_as(dir, options, true)
    }

    fn open_as(dir: &Path, options: StoreOptions, spool: bool) -> Result<Self, StoreError> {
        let StoreOptions { cache_bytes, min_free, seal_chunk, dedupe_keep_ms, stuck_after } = options;
        let room = space::space_of(dir).map_err(|e| StoreError::Io(format!("statvfs {}: {e}", dir.display())))?;
        if let Some(full) = space::shortfall(&room, min_free, 0) {
            tracing::error!(dir = %dir.display(), "{full}: not opening the store");
            return Err(StoreError::DiskFull(full));
        }
        durable::create_dir_all(dir, 0o700)
            .map_err(|e| StoreError::Io(format!("cannot create data dir {}: {e}", dir.display())))?;
        let marker = read_marker(dir)?;
        let live = generation::current(dir).map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        if let Some(marker) = &marker {
            // Checked before anything is removed or created: sled would happily start empty here.
            check_generation_present(dir, &live, marker)?;
        }
        // Leftovers of an interrupted repack (or of a finished one whose old generation was still open).
        let removed = generation::remove_others(dir, &live).map_err(|e| StoreError::Io(e.to_string()))?;
        for old in &removed {
            tracing::info!(generation = %old, "removed a store generation that is not live");
        }
        if !removed.is_empty() {
            durable::sync_dir(dir).map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        }
        let gen_dir = dir.join(&live);
        let db = open_sled(&gen_dir, cache_bytes)?;
        let files = durable::GenerationFiles::open(&gen_dir)
            .map_err(|e| StoreError::Io(format!("cannot sync the store files in {}: {e}", gen_dir.display())))?;
        let live_gen = Live { db: db.clone(), files: Arc::new(files) };
        // First of all: what the redo log holds and sled may not (the log is the commit point, see `redo`).
        let redo_dir = dir.join(redo::DIR);
        let replayed = redo::replay(&redo_dir, &db, &dir.join(journal::DIR), &dir.join(outbox_log::DIR))?;
        if replayed.records > 0 {
            live_gen.sync()?;
            tracing::info!(records = replayed.records, applied = replayed.applied, "replayed the redo log");
        }
        redo::clear(&redo_dir)?;
        match db.get(keys::SCHEMA_VERSION_KEY)? {
            None => {
                if let Some(marker) = &marker {
                    tracing::error!(dir = %dir.display(), "the store's schema key is missing from a data dir that held a store");
                    return Err(StoreError::Missing(format!(
                        "{} held a store ({marker}) but its store generation {live} is empty: the schema key is missing",
                        dir.display()
                    )));
                }
                let mut batch = batch::Batch::default();
                batch.insert(keys::SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes());
                batch.insert(keys::PENDING_KEY, encode(&pending::PendingTotals::default()));
                batch.insert(keys::HOUR_TOTALS_KEPT_KEY, &[][..]);
                batch.apply_unlogged(&db)?;
                live_gen.sync()?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(
                    v.as_ref().try_into().map_err(|_| StoreError::Corrupt("schema version is not 4 bytes".into()))?,
                );
                if found == 1 {
                    let started = std::time::Instant::now();
                    let moved = migrate::v1_to_v2(&db, dedupe_keep_ms)?;
                    live_gen.sync()?;
                    tracing::info!(
                        moved,
                        millis = started.elapsed().as_millis() as u64,
                        "migrated the store from v1 to v2"
                    );
                }
                if found == 1 || found == 2 {
                    let started = std::time::Instant::now();
                    let converted = migrate::v2_to_v3(&db)?;
                    live_gen.sync()?;
                    tracing::info!(
                        converted,
                        millis = started.elapsed().as_millis() as u64,
                        "migrated the store from v2 to v3"
                    );
                }
                if (1..=3).contains(&found) {
                    let started = std::time::Instant::now();
                    let copied = migrate::v3_to_v4(&db, &dir.join(journal::DIR), dedupe_keep_ms)?;
                    live_gen.sync()?;
                    tracing::info!(
                        copied,
                        millis = started.elapsed().as_millis() as u64,
                        "migrated the store from v3 to v4 (dedupe segments into their own files)"
                    );
                }
                if (1..=4).contains(&found) {
                    // v5 adds the redo log: no data changes, but a v4 meterd must not open a store whose
                    // acknowledged writes may be in the log only.
                    db.insert(keys::SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                    live_gen.sync()?;
                    tracing::info!(from = found, "the store is at v5 (writes committed through the redo log)");
                } else if found != SCHEMA_VERSION {
                    return Err(StoreError::UnsupportedSchema { found });
                }
            }
        }
        outbox::check_mode(&db, spool)?;
        live_gen.sync()?;
        if marker.is_none() {
            // Only now that the schema key is durable: a crash before this leaves a data dir that opens as new.
            let text = format!("meterd store\ncreated_at_ms={}\n", crate::clock::system_now_ms());
            durable::write_file(dir, MARKER_FILE, text.as_bytes())
                .map_err(|e| StoreError::Io(format!("cannot write {}: {e}", dir.join(MARKER_FILE).display())))?;
        }
        if pending::load(&db)?.is_none() {
            // A store written before the queue's totals were kept: count them once, from then on every write
            // keeps them.
            let totals = pending::recompute(&db)?;
            db.insert(keys::PENDING_KEY, encode(&totals))?;
            live_gen.sync()?;
            tracing::info!(pending = totals.records, "counted the pending queue once; its totals are kept from now on");
        }
        if counts::count_once(&db)? {
            live_gen.sync()?;
            tracing::info!("counted the open buckets and the customers per status once; they are kept from now on");
        }
        if let Some(n) = hour_totals::count_once(&db)? {
            // A store written before the hours' usage was kept: counted once, from then on every write keeps it.
            live_gen.sync()?;
            tracing::info!(summaries = n, "counted each hour's usage once; it is kept from now on");
        }
        let counters = Arc::new(StoreCounters::default());
        counters.disk_free_bytes.store(room.free_bytes, Ordering::Relaxed);
        counters.disk_reserve_bytes.store(min_free.bytes(room.total_bytes), Ordering::Relaxed);
        // Kept in the same write as the events: one small read, whatever the history.
        counters.events_stored.store(segments::events_stored(&db)?, Ordering::Relaxed);
        let journal = open_journal(&db, &live_gen, &dir.join(journal::DIR), dedupe_keep_ms)?;
        // Dedupe segment trees of a store before v4, left over by its migration: only their pages are left.
        let forgetting =
            segments::drop_in_background(db.clone(), segments::tree_names(&db).iter().map(|n| n.to_vec()).collect());
        let journal = Arc::new(RwLock::new(journal));
        let shared: SharedDb = Arc::new(RwLock::new(live_gen));
        let spool = if spool { Some(Arc::new(outbox::Spool::open(&db, &dir.join(outbox_log::DIR))?)) } else { None };
        if spool.is_some() {
            // Synced before anything is logged: an `o/` key move that sled lost after later groups were logged
            // would start over at the next open and delete the files those groups wrote to.
            current(&shared).sync()?;
        }
        let place = writer::Place {
            dir: dir.to_path_buf(),
            seal_chunk: seal_chunk.max(1),
            generation: live,
            cache_bytes,
            min_free,
            spool: spool.clone(),
            stuck_after,
        };
        let redo = Arc::new(redo::Redo::create(&redo_dir, replayed.next_seq)?);
        let watch = Arc::new(watch::Watch::default());
        let (commands, threads) =
            writer::spawn(shared.clone(), place, counters.clone(), journal.clone(), redo, forgetting, watch.clone());
        Ok(Store {
            inner: Arc::new(Inner {
                db: shared,
                dir: dir.to_path_buf(),
                commands,
                counters,
                threads: std::sync::Mutex::new(threads),
                ack_gate: Default::default(),
                journal,
                stamps: Arc::new(if spool.is_some() {
                    stamps::Stamps::tracking()
                } else {
                    stamps::Stamps::untracked()
                }),
                spool,
                watch,
            }),
        })
    }

    /// The stamps of ingest calls under way: [`crate::ingest::Ingest`] takes one per call and holds it until the
    /// call's write is done; the fleet forwarder reads their low water.
    pub fn stamps(&self) -> Arc<stamps::Stamps> {
        self.inner.stamps.clone()
    }

    /// Stores validated events atomically and durably, decided by [`crate::domain::ingest`] under `rules` (a
    /// late-usage policy alone, or with the lateness bound). `received_ms` stamps events that carry no
    /// timestamp and is their `recorded_at`. Returns one outcome per event, in order, only after fsync.
    pub async fn ingest(
        &self,
        events: Vec<UsageEvent>,
        received_ms: UnixMillis,
        rules: impl Into<IngestRules>,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let outcomes =
            self.command(writer::Command::Ingest { events, received_ms, rules: rules.into(), reply }, rx).await?;
        self.after_ack(&outcomes).await?;
        Ok(outcomes)
    }

    /// Seals every hour before `params.cutoff_hour_ms` (durably) and reports what it did.
    pub async fn seal(&self, params: SealParams) -> Result<SealSummary, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::Seal { params, reply }, rx).await
    }

    /// Maps a tenant to its marketplace identity (durably); returns how many open buckets moved to it.
    pub async fn put_mapping(
        &self,
        mapping: crate::domain::customer::TenantMapping,
        now_ms: UnixMillis,
    ) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::PutMapping { mapping, now_ms, reply }, rx).await
    }

    pub async fn remove_mapping(&self, tenant_id: &str) -> Result<bool, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::RemoveMapping { tenant_id: tenant_id.to_string(), reply }, rx).await
    }

    /// Applies a lifecycle event (idempotent, order-tolerant); seals a leaving customer's open hours at once.
    pub async fn apply_lifecycle(
        &self,
        event: crate::domain::lifecycle::LifecycleEvent,
        params: SealParams,
    ) -> Result<LifecycleOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::Lifecycle { event, params, reply }, rx).await
    }

    /// Appends `entry` to the history of the customer `subject` names (an agreement is looked up), and with
    /// `reinstate` moves a customer that is not Active back to Active. None: no such customer. An already Active
    /// customer is not reinstated (nothing is written; `changed` is false).
    pub async fn amend_lifecycle(
        &self,
        subject: crate::domain::lifecycle::Subject,
        entry: crate::domain::customer::StatusChange,
        reinstate: bool,
    ) -> Result<Option<AmendOutcome>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::Amend { subject, entry, reinstate, reply }, rx).await
    }

    /// Removes terminal records of hours before `cutoff_ms` and event keys recorded before it (durably), folding
    /// their totals into [`Compacted`]. Returns what this call removed.
    pub async fn compact(&self, cutoff_ms: UnixMillis) -> Result<Compacted, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::Compact { cutoff_ms, reply }, rx).await
    }

    /// Copies every live key into a fresh sled generation and switches to it, giving back the space sled's log
    /// keeps under churn. Writes wait for the copy (the ledger, registry and counters: the dedupe window is in the
    /// journal's files, which a repack leaves alone); reads go on throughout.
    pub async fn repack(&self) -> Result<RepackOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::Repack { reply }, rx).await
    }

    /// Repacks when the live generation holds more than `ratio` times what a fresh copy of its live bytes takes
    /// (the live bytes themselves until a repack has measured that) and at least `min_bytes` ([`REPACK_MIN_BYTES`]
    /// in the agent). Measuring reads the default tree off the writer, so ingest goes on meanwhile.
    pub async fn repack_if_bloated(&self, ratio: f64, min_bytes: u64) -> Result<Option<RepackOutcome>, StoreError> {
        if ratio <= 0.0 {
            return Ok(None);
        }
        let db = self.db();
        let counters = self.inner.counters.clone();
        let (on_disk, live) = tokio::task::spawn_blocking(move || {
            let live = live_bytes(&db)?;
            counters.live_bytes.store(live, Ordering::Relaxed);
            Ok::<_, StoreError>((db.size_on_disk()?, live))
        })
        .await
        .map_err(|e| StoreError::Io(e.to_string()))??;
        // What a fresh copy of these live bytes takes on disk, as the last repack measured it (sled's pages, log
        // and per-key overhead: ~3x for short keys). Without it a store of short keys is always "bloated" against
        // its raw bytes, and was repacked at every hourly check for nothing (measured: 24 repacks in 6 minutes of
        // the 10 M history benchmark, each leaving the store as big as it found it).
        let packed =
            live as f64 * (self.inner.counters.packed_per_live_milli.load(Ordering::Relaxed).max(1000) as f64 / 1000.0);
        if !should_repack(on_disk, packed as u64, ratio, min_bytes) {
            return Ok(None);
        }
        let outcome = self.repack().await?;
        if live > 0 {
            let milli = (u128::from(outcome.bytes_after) * 1000 / u128::from(live)).min(u128::from(u64::MAX)) as u64;
            self.inner.counters.packed_per_live_milli.store(milli, Ordering::Relaxed);
        }
        Ok(Some(outcome))
    }

    /// Bytes of keys and values the store holds (what a repack would copy).
    pub fn live_bytes(&self) -> Result<u64, StoreError> {
        live_bytes(&self.db())
    }

    /// Everything compacted away so far.
    pub fn compacted(&self) -> Result<Compacted, StoreError> {
        Ok(match self.db().get(keys::COMPACTED_KEY)? {
            Some(v) => decode(&v)?,
            None => Compacted::default(),
        })
    }

    /// Revenue lost so far (DuplicateRecord on a first send).
    pub fn lost(&self) -> Result<Lost, StoreError> {
        Ok(match self.db().get(keys::LOST_KEY)? {
            Some(v) => decode(&v)?,
            None => Lost::default(),
        })
    }

    /// The ledger at one instant: taken on the writer thread between two writes, answered once what it saw is
    /// durable.
    pub async fn snapshot(&self) -> Result<LedgerSnapshot, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::Snapshot { reply }, rx).await
    }

    /// One bounded page of the report's reads from `cursor`, taken on the writer thread between two writes
    /// ([`pages::read_page`]), answered once what it saw is durable.
    pub async fn report_page(&self, cursor: pages::PageCursor, limit: usize) -> Result<pages::LedgerPage, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::ReportPage { cursor, limit, reply }, rx).await
    }

    /// Records that AWS answered CustomerNotSubscribed for `identity`.
    pub async fn note_not_subscribed(
        &self,
        identity: crate::domain::event::Identity,
        at_ms: UnixMillis,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::NotSubscribed { identity, at_ms, reply }, rx).await
    }

    pub fn mapping(&self, tenant_id: &str) -> Result<Option<crate::domain::customer::TenantMapping>, StoreError> {
        match self.db().get(keys::tenant_key(tenant_id))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every tracked marketplace customer's lifecycle.
    pub fn lifecycles(&self) -> Result<Vec<crate::domain::customer::CustomerLifecycle>, StoreError> {
        self.db().scan_prefix(keys::LIFECYCLE_PREFIX).map(|kv| decode(&kv?.1)).collect()
    }

    pub fn mappings(&self) -> Result<Vec<crate::domain::customer::TenantMapping>, StoreError> {
        self.db().scan_prefix(keys::TENANT_PREFIX).map(|kv| decode(&kv?.1)).collect()
    }

    pub fn lifecycle(
        &self,
        identity: &crate::domain::event::Identity,
    ) -> Result<Option<crate::domain::customer::CustomerLifecycle>, StoreError> {
        let Some(k) = keys::lifecycle_key(identity) else { return Ok(None) };
        match self.db().get(k)? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Durably records new states of sealed records (content is frozen; terminal states are final).
    pub async fn update_records(&self, records: Vec<SealedRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.command(writer::Command::Update { records, reply }, rx).await
    }

    async fn command<T>(
        &self,
        cmd: writer::Command,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.inner.commands.send(cmd).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Every hour before this is sealed (None: nothing sealed yet).
    pub fn sealed_through(&self) -> Result<Option<UnixMillis>, StoreError> {
        sealed_through(&self.db())
    }

    /// Pending records (Sealed or InFlight), most urgent deadline first, at most `limit`.
    pub fn pending_records(&self, limit: usize) -> Result<Vec<SealedRecord>, StoreError> {
        let mut out = Vec::new();
        let db = self.db();
        for kv in db.scan_prefix(keys::QUEUE_PREFIX) {
            if out.len() >= limit {
                break;
            }
            let (q, _) = kv?;
            let rkey =
                keys::record_key_of_queue_entry(&q).ok_or_else(|| StoreError::Corrupt("short queue key".into()))?;
            let v = db.get(rkey)?.ok_or_else(|| StoreError::Corrupt("queue entry without its record".into()))?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    pub fn pending_count(&self) -> Result<u64, StoreError> {
        Ok(self.pending_view()?.totals.records)
    }

    /// The queue's totals and its most urgent record, without a scan ([`pending`]).
    pub fn pending_view(&self) -> Result<pending::PendingView, StoreError> {
        let db = self.db();
        let totals = pending::load(&db)?.unwrap_or_default();
        let first = pending::first(&db)?;
        Ok(pending::PendingView {
            totals,
            first_hour_ms: first.as_ref().map(|r| r.key.hour_ms),
            first_deadline_ms: first.as_ref().map(|r| r.deadline_ms),
        })
    }

    /// The queue's totals by a full scan (tests check the kept ones against it).
    pub fn recount_pending(&self) -> Result<pending::PendingTotals, StoreError> {
        pending::recompute(&self.db())
    }

    /// Every sealed record, in key order (hour first).
    pub fn records(&self) -> Result<Vec<SealedRecord>, StoreError> {
        self.db().scan_prefix(keys::RECORD_PREFIX).map(|kv| decode(&kv?.1)).collect()
    }

    /// The sealed records of one hour (a prefix scan: reads nothing outside that hour).
    pub fn records_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>, StoreError> {
        self.db().scan_prefix(keys::record_hour_prefix(hour_ms)).map(|kv| decode(&kv?.1)).collect()
    }

    /// The open buckets of one hour (a range scan bounded by the hour).
    pub fn buckets_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<(BucketKey, Bucket)>, StoreError> {
        self.db()
            .range(keys::bucket_hour_bound(hour_ms)..keys::bucket_hour_bound(hour_ms + crate::clock::HOUR_MS))
            .map(|kv| {
                let (k, v) = kv?;
                let key = keys::decode_bucket_key(&k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((key, decode(&v)?))
            })
            .collect()
    }

    /// Usage of one hour per product × dimension, with its biggest sealed records, as kept by every write
    /// ([`hour_totals`]): a prefix scan of a few keys, whatever the hour holds.
    pub fn hour_summaries(&self, hour_ms: UnixMillis) -> Result<Vec<hour_totals::HourSummary>, StoreError> {
        hour_totals::of_hour(&self.db(), hour_ms)
    }

    /// One series' usage in one hour: its record's recorded usage plus its open buckets.
    pub fn series_usage(
        &self,
        hour_ms: UnixMillis,
        product: &str,
        identity: &crate::domain::event::Identity,
        dimension: &str,
    ) -> Result<Micros, StoreError> {
        hour_totals::series_usage(&self.db(), hour_ms, product, identity, dimension)
    }

    /// Every kept hour summary, and the same by a full scan of records and buckets (tests compare them).
    pub fn hour_summaries_kept_and_recounted(
        &self,
    ) -> Result<(Vec<hour_totals::HourSummary>, Vec<hour_totals::HourSummary>), StoreError> {
        let db = self.db();
        Ok((hour_totals::kept(&db)?, hour_totals::recompute(&db)?))
    }

    /// The hour of the oldest sealed record or open bucket still stored (`None` when there is none): where the
    /// store's history starts.
    pub fn first_hour(&self) -> Result<Option<UnixMillis>, StoreError> {
        let db = self.db();
        let record = match db.scan_prefix(keys::RECORD_PREFIX).next() {
            Some(kv) => Some(decode::<SealedRecord>(&kv?.1)?.key.hour_ms),
            None => None,
        };
        let bucket = match db.scan_prefix(keys::BUCKET_PREFIX).next() {
            Some(kv) => Some(keys::decode_bucket_key(&kv?.0).map_err(|e| StoreError::Corrupt(e.to_string()))?.hour_ms),
            None => None,
        };
        Ok(record.into_iter().chain(bucket).min())
    }

    /// Fractions waiting to be carried into a series' next sealed hour.
    pub fn carries(&self) -> Result<Vec<Micros>, StoreError> {
        self.db().scan_prefix(keys::CARRY_PREFIX).map(|kv| decode(&kv?.1)).collect()
    }

    /// The stored record of one idempotency key (None once its segment is past the dedupe window).
    pub fn event(&self, idempotency_key: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.inner.journal.read().unwrap_or_else(|e| e.into_inner()).get(idempotency_key)
    }

    /// Every bucket with its running total, in key order (hour first).
    pub fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>, StoreError> {
        self.db()
            .scan_prefix(keys::BUCKET_PREFIX)
            .map(|kv| {
                let (k, v) = kv?;
                let key = keys::decode_bucket_key(&k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((key, decode(&v)?))
            })
            .collect()
    }

    /// Buckets not sealed yet, as kept by every write ([`counts`]).
    pub fn open_bucket_count(&self) -> Result<u64, StoreError> {
        counts::open_buckets(&self.db())
    }

    /// Customers per lifecycle status, as kept by every write ([`counts`]).
    pub fn customer_counts(&self) -> Result<counts::CustomerCounts, StoreError> {
        counts::customers(&self.db())
    }

    /// The kept counts, and the same by a full scan (tests compare them).
    pub fn counts_kept_and_recounted(&self) -> Result<(counts::Counts, counts::Counts), StoreError> {
        let db = self.db();
        Ok(((counts::open_buckets(&db)?, counts::customers(&db)?), counts::recount(&db)?))
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.inner.counters
    }

    /// How long each of the store's workers has been on its current piece of work ([`watch`]).
    pub fn watch(&self) -> &watch::Watch {
        &self.inner.watch
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes under the data dir: every generation (two exist while a repack runs) and sled's own files.
    pub fn size_on_disk(&self) -> u64 {
        generation::dir_bytes(&self.inner.dir)
    }

    fn db(&self) -> sled::Db {
        current_db(&self.inner.db)
    }

    /// Stops the writer after it has finished (and answered) what it was given, and fsyncs. Idempotent.
    pub async fn close(&self) -> Result<(), StoreError> {
        let _ = self.inner.commands.send(writer::Command::Stop).await;
        let threads = std::mem::take(&mut *self.inner.threads.lock().expect("not poisoned"));
        let shared = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            // After the writer stopped: the generation it left live (a repack may have switched it).
            current(&shared).sync()
        })
        .await
        .map_err(|e| StoreError::Io(e.to_string()))??;
        Ok(())
    }
}

/// The marker's text, if this data dir has held a store.
fn read_marker(dir: &Path) -> Result<Option<String>, StoreError> {
    match std::fs::read_to_string(dir.join(MARKER_FILE)) {
        Ok(s) => Ok(Some(s.lines().filter(|l| !l.starts_with("meterd")).collect::<Vec<_>>().join(", "))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io(format!("cannot read {}: {e}", dir.join(MARKER_FILE).display()))),
    }
}

/// A data dir that held a store must still have its live generation, with sled's log and config in it.
fn check_generation_present(dir: &Path, live: &str, marker: &str) -> Result<(), StoreError> {
    let gen_dir = dir.join(live);
    let missing = |what: String| {
        tracing::error!(dir = %dir.display(), generation = live, "{what}");
        Err(StoreError::Missing(format!("{} held a store ({marker}) but {what}", dir.display())))
    };
    if !gen_dir.is_dir() {
        return missing(format!("its live store generation {} is missing", gen_dir.display()));
    }
    for file in ["db", "conf"] {
        match std::fs::metadata(gen_dir.join(file)) {
            Ok(m) if m.len() > 0 => {}
            Ok(_) => return missing(format!("{} is empty", gen_dir.join(file).display())),
            Err(_) => return missing(format!("{} is missing", gen_dir.join(file).display())),
        }
    }
    Ok(())
}

/// How long `open` waits for sled's file lock. A sled instance dropped in this process releases it from a
/// background thread a moment later (a restart in tests, or a store closed and reopened by an embedding app).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a sled directory, waiting (10 s at most) for its file lock; public for tests that inspect a closed store.
pub fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    open_sled_with(path, || sled::Config::new().cache_capacity(cache_bytes))
}

/// As [`open_sled`], with the sled settings `config` makes (afresh for each try: a sled `Config` cannot be
/// changed once cloned).
pub(crate) fn open_sled_with(path: &Path, config: impl Fn() -> sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config().path(path).open() {
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Io(format!(
                        "{} is locked by another process: is another meterd running on this data dir? ({e})",
                        path.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

pub(crate) fn sealed_through(db: &sled::Db) -> Result<Option<UnixMillis>, StoreError> {
    Ok(db
        .get(keys::SEALED_THROUGH_KEY)?
        .map(|v| decode::<schema::meta::StoredSealedThrough>(&v))
        .transpose()?
        .map(|s| s.cutoff_ms))
}

/// Opens the dedupe journal for the live segments (their `g/` records) and finishes the drops a crash cut short
/// after deleting the file: their counts are folded into the compacted total, as the drop would have.
fn open_journal(db: &sled::Db, live: &Live, dir: &Path, keep_ms: i64) -> Result<journal::Journal, StoreError> {
    let mark = match db.get(keys::JOURNAL_MARK_KEY)? {
        Some(v) => journal::Mark::decode(&v)?,
        None => journal::Mark::default(),
    };
    let counts = segments::counts(db)?;
    let opened = journal::Journal::open(dir, keep_ms, mark, &counts)?;
    if !opened.missing.is_empty() {
        let mut total: Compacted = match db.get(keys::COMPACTED_KEY)? {
            Some(v) => decode(&v)?,
            None => Compacted::default(),
        };
        let mut batch = batch::Batch::default();
        for start in &opened.missing {
            total.events += counts[start];
            batch.remove(segments::index_key(*start));
        }
        batch.insert(keys::COMPACTED_KEY, encode(&total));
        batch.apply_unlogged(db)?;
        live.sync()?;
        tracing::info!(segments = opened.missing.len(), "finished dropping dedupe segments a crash cut short");
    }
    Ok(opened.journal)
}

fn live_bytes(db: &sled::Db) -> Result<u64, StoreError> {
    let mut total = 0;
    for kv in db.iter() {
        let (k, v) = kv?;
        total += (k.len() + v.len()) as u64;
    }
    Ok(total)
}

pub(crate) use schema::{decode, encode};
