//! The spool's outbox (fleet mode, `ack = "local"`): the full content of every event this agent acknowledged
//! and has not yet forwarded to the shared ledger.
//!
//! Written in the SAME sled batch as the ingest that stored the event (so an acknowledged event is always either
//! in the outbox or already in PostgreSQL), removed only after the forward that carried it committed. A crash
//! between the commit and the removal resends the entry, which the shared ledger answers as a replay.
//!
//! | key                                            | value                                                   |
//! |------------------------------------------------|---------------------------------------------------------|
//! | `o/` + first sequence (u64, big-endian)        | a block of consecutive entries ([`super::schema::outbox`]) |
//!
//! Every acknowledged event has a sequence, in acknowledgement order (one writer thread assigns them); an ingest
//! group's new events go in blocks of at most [`BLOCK_ENTRIES`], each keyed by its first sequence, so a scan reads
//! the oldest first and a group is a few sled writes, not one per event (a write per event kept one agent's
//! batch ingest at about half of a standalone agent's, docs/fleet.md). A block is forwarded and removed whole.
//! The value's first byte names its encoding: an older agent never misreads a newer layout, it stops. Encoding 1
//! (postcard, store v2) is converted to 2 (one entry per key) by the v2 → v3 migration; 2 still reads, as a block
//! of one.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Store, StoreError};
use crate::clock::UnixMillis;
use crate::domain::event::{Identity, TagSet, UsageEvent};
use crate::domain::ingest::IngestOutcome;
use crate::domain::quantity::Micros;

pub const OUTBOX_PREFIX: &[u8] = b"o/";
/// The newest encoding this build reads and the one it writes ([`super::schema::outbox`]).
pub const ENCODING: u8 = super::schema::outbox::OUTBOX_BLOCK_VERSION;
/// Most entries in one block: a block stays a small sled value (sled moves values over ~128 KiB to files of
/// their own; an entry is ~200 bytes), and a forwarder's page overshoots its limit by less than one block.
pub const BLOCK_ENTRIES: usize = 256;

/// One acknowledged event, as the caller sent it, and when this agent acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub idempotency_key: String,
    pub product: String,
    pub identity: Identity,
    pub dimension: String,
    pub quantity: Micros,
    pub timestamp_ms: Option<UnixMillis>,
    pub tags: TagSet,
    pub received_ms: UnixMillis,
}

impl Entry {
    pub fn new(e: &UsageEvent, received_ms: UnixMillis) -> Self {
        Entry {
            idempotency_key: e.idempotency_key.clone(),
            product: e.product.clone(),
            identity: e.identity.clone(),
            dimension: e.dimension.clone(),
            quantity: e.quantity,
            timestamp_ms: e.timestamp_ms,
            tags: e.tags.clone(),
            received_ms,
        }
    }

    pub fn into_event(self) -> UsageEvent {
        UsageEvent {
            idempotency_key: self.idempotency_key,
            product: self.product,
            identity: self.identity,
            dimension: self.dimension,
            quantity: self.quantity,
            timestamp_ms: self.timestamp_ms,
            tags: self.tags,
        }
    }

    pub fn event(&self) -> UsageEvent {
        self.clone().into_event()
    }
}

pub fn encode_entry(e: &Entry) -> Vec<u8> {
    super::schema::encode(e)
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    match bytes.first() {
        Some(v) if *v > ENCODING => {
            Err(StoreError::Corrupt(format!("outbox entry in encoding {v}: written by a newer meterd")))
        }
        _ => super::schema::decode(bytes),
    }
}

/// The entries of one `o/` value (a block, or a single entry written by an earlier build).
pub fn decode_value(bytes: &[u8]) -> Result<Vec<Entry>, StoreError> {
    read_value(bytes, super::schema::outbox::decode_value)
}

/// How many entries one `o/` value holds, without decoding them.
fn count_value(bytes: &[u8]) -> Result<u64, StoreError> {
    read_value(bytes, super::schema::outbox::count_of)
}

fn read_value<T>(
    bytes: &[u8],
    read: impl FnOnce(&[u8]) -> Result<T, super::schema::DecodeError>,
) -> Result<T, StoreError> {
    match bytes.first() {
        Some(v) if *v > ENCODING => {
            Err(StoreError::Corrupt(format!("outbox entry in encoding {v}: written by a newer meterd")))
        }
        _ => read(bytes).map_err(|e| StoreError::Corrupt(format!("o/ outbox value: {e}"))),
    }
}

/// Present in a data dir that is a fleet node's spool.
pub const SPOOL_MODE_KEY: &[u8] = b"m/spool";

/// A data dir stays what it started as. A spool opened alone would seal and submit usage the fleet already
/// counted (billed twice); a standalone ledger opened as a spool would never submit what it holds (never billed).
pub(crate) fn check_mode(db: &sled::Db, spool: bool) -> Result<(), StoreError> {
    let is_spool = db.contains_key(SPOOL_MODE_KEY)?;
    // Usage, whichever layout holds it: events counted (store v2), v1 event keys not migrated yet, or buckets and
    // records (a ledger whose event keys all left with the dedupe window).
    let holds_usage = db.get(super::keys::EVENTS_STORED_KEY)?.is_some_and(|v| v.iter().any(|b| *b != 0))
        || [super::keys::EVENT_PREFIX, super::keys::BUCKET_PREFIX, super::keys::RECORD_PREFIX]
            .iter()
            .any(|p| db.scan_prefix(p).next().is_some());
    match (spool, is_spool) {
        (true, false) if holds_usage => Err(StoreError::Io(
            "storage.data_dir holds a standalone ledger with usage: fleet mode needs a fresh data dir (let this one \
             submit everything first, then move it away)"
                .into(),
        )),
        (true, false) => {
            db.insert(SPOOL_MODE_KEY, &[1u8])?;
            Ok(())
        }
        (false, true) => Err(StoreError::Io(
            "storage.data_dir is a fleet node's spool ([fleet] was configured): its usage belongs to the shared \
             ledger; run it with its [fleet] section until its outbox is empty, or start without [fleet] on a \
             fresh data dir"
                .into(),
        )),
        _ => Ok(()),
    }
}

fn entry_key(seq: u64) -> Vec<u8> {
    [OUTBOX_PREFIX, &seq.to_be_bytes()].concat()
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    key.strip_prefix(OUTBOX_PREFIX)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("outbox key is not o/ + 8 bytes".into()))
}

/// The writer's side: assigns sequences and adds entries to an ingest's batch. Only the writer thread adds.
///
/// It also measures how far the outbox's order (the order of writes) strays from the order of the stamps it
/// holds: the **reorder depth**, the most any entry's `received_ms` fell below the highest `received_ms` written
/// before or with it, since this process opened the spool. Every entry written after an entry stamped `s` is then
/// stamped at least `s` − depth (it was written when the highest stamp was already ≥ `s`), which is what lets the
/// forwarder claim a watermark after a full page without a fixed margin ([`Reorder`]).
pub(crate) struct Spool {
    next: AtomicU64,
    /// The first sequence this process wrote: entries below it were written by an earlier one, whose depth is
    /// not known.
    first_of_process: u64,
    highest_ms: std::sync::atomic::AtomicI64,
    depth_ms: std::sync::atomic::AtomicI64,
}

/// What [`Store::outbox_reorder`] answers: the reorder depth of the entries this process wrote (from sequence
/// `first_seq` on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reorder {
    pub first_seq: u64,
    pub depth_ms: i64,
}

impl Spool {
    /// Continues after the last entry kept in `db` (the last block's first sequence plus its entries).
    pub(crate) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let next = match db.scan_prefix(OUTBOX_PREFIX).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                seq_of(&k)? + count_value(&v)?
            }
            None => 0,
        };
        Ok(Spool {
            next: AtomicU64::new(next),
            first_of_process: next,
            highest_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            depth_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    pub(crate) fn reorder(&self) -> Reorder {
        Reorder { first_seq: self.first_of_process, depth_ms: self.depth_ms.load(Ordering::SeqCst) }
    }

    /// Adds every newly stored event of `calls` (decided as `outcomes`) to `batch`.
    pub(crate) fn add<'a>(
        &self,
        batch: &mut super::batch::Batch,
        calls: impl Iterator<Item = (&'a [UsageEvent], UnixMillis)>,
        outcomes: &[Vec<IngestOutcome>],
    ) {
        // Borrowed: an entry's strings are written from the event itself, never copied first.
        let mut stored: Vec<(&UsageEvent, UnixMillis)> = Vec::new();
        for ((events, received_ms), outcomes) in calls.zip(outcomes) {
            for (e, o) in events.iter().zip(outcomes) {
                if matches!(o, IngestOutcome::Stored(_)) {
                    stored.push((e, received_ms));
                }
            }
        }
        // Before the entries can be read (the batch is applied after this): a forwarder that reads them reads a
        // depth that covers them.
        let mut highest = self.highest_ms.load(Ordering::SeqCst);
        let mut depth = self.depth_ms.load(Ordering::SeqCst);
        for &(_, received_ms) in &stored {
            highest = highest.max(received_ms);
            depth = depth.max(highest.saturating_sub(received_ms));
        }
        self.highest_ms.store(highest, Ordering::SeqCst);
        self.depth_ms.store(depth, Ordering::SeqCst);
        for block in stored.chunks(BLOCK_ENTRIES) {
            let first = self.next.fetch_add(block.len() as u64, Ordering::Relaxed);
            batch.insert(entry_key(first), super::schema::outbox::encode_events(block));
        }
    }
}

/// The fleet incarnation this data dir last registered as (see `meterd_fleet::nodes::release`).
pub const INCARNATION_KEY: &[u8] = b"m/fleet_incarnation";

/// A page of the outbox, oldest first: whole blocks.
#[derive(Debug, Default)]
pub struct Page {
    /// Each entry with its sequence.
    pub entries: Vec<(u64, Entry)>,
    /// The first sequence of each block the page holds: what [`Store::outbox_remove`] takes once they are
    /// forwarded.
    pub blocks: Vec<u64>,
}

/// How much is waiting to be forwarded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub entries: u64,
    /// When the oldest waiting entry was acknowledged.
    pub oldest_received_ms: Option<UnixMillis>,
}

/// What an ingest waits for after its local write in fleet mode with `ack = "shared"`: the shared ledger's commit
/// of everything the outbox holds (`crate::fleet::shared_ack`). An error fails the call (UNAVAILABLE); the caller
/// retries with the same keys, which replay locally and wait again.
pub trait AckGate: Send + Sync {
    fn committed(&self) -> super::seam::BoxFuture<'_, Result<(), StoreError>>;
}

impl Store {
    /// Makes every ingest that stored or replayed an event wait for `gate` before it answers.
    pub fn set_ack_gate(&self, gate: std::sync::Arc<dyn AckGate>) {
        let _ = self.inner.ack_gate.set(gate);
    }

    pub(crate) async fn after_ack(&self, outcomes: &[IngestOutcome]) -> Result<(), StoreError> {
        if let Some(gate) = self.inner.ack_gate.get()
            && outcomes.iter().any(|o| matches!(o, IngestOutcome::Stored(_) | IngestOutcome::Replayed(_)))
        {
            gate.committed().await?;
        }
        Ok(())
    }

    /// The fleet incarnation this data dir registered as last (16 bytes), if any.
    pub fn fleet_incarnation(&self) -> Result<Option<[u8; 16]>, StoreError> {
        Ok(self.db().get(INCARNATION_KEY)?.and_then(|v| <[u8; 16]>::try_from(v.as_ref()).ok()))
    }

    /// Keeps this process's fleet incarnation, durably, before it acts as the node.
    pub fn set_fleet_incarnation(&self, id: [u8; 16]) -> Result<(), StoreError> {
        let db = self.db();
        db.insert(INCARNATION_KEY, &id)?;
        db.flush()?;
        Ok(())
    }

    /// The oldest whole blocks of the outbox, until they hold at least `limit` entries (so at most `limit` +
    /// [`BLOCK_ENTRIES`] − 1).
    pub fn outbox_page(&self, limit: usize) -> Result<Page, StoreError> {
        let mut page = Page::default();
        for kv in self.db().scan_prefix(OUTBOX_PREFIX) {
            if page.entries.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let first = seq_of(&k)?;
            page.blocks.push(first);
            page.entries.extend((first..).zip(decode_value(&v)?));
        }
        Ok(page)
    }

    /// Removes the blocks that start at `seqs` (a page's [`Page::blocks`], after the shared ledger committed
    /// them); a sequence that starts no block is ignored. Not fsynced on its own: a block that comes back after a
    /// crash is forwarded again and replays.
    ///
    /// Key by key, oldest first, never one `apply_batch`: sled 0.34.7's `apply_batch` takes its global write lock
    /// and rolls the I/O buffer twice, and a forwarder doing that page after page beside the writer's inserts
    /// queued enough buffer writes on sled's I/O threads to deadlock the whole store (every I/O thread waiting
    /// for the segment accountant, whose holder waited for a file truncation queued behind them; seen in
    /// `forward_watermark.rs`: 1 run in 59 here, CI's first). A crash keeps a prefix of the removals, so what is left is
    /// still the outbox's oldest-first tail.
    pub fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let db = self.db();
        for s in seqs {
            db.remove(entry_key(*s))?;
        }
        Ok(())
    }

    /// The spool's reorder depth ([`Spool`]); `None` for a store that is not a spool.
    pub fn outbox_reorder(&self) -> Option<Reorder> {
        self.inner.spool.as_ref().map(|s| s.reorder())
    }

    /// Whether nothing waits to be forwarded: one key lookup (`ack = "shared"` asks it on every call).
    pub fn outbox_is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.db().scan_prefix(OUTBOX_PREFIX).next().transpose()?.is_none())
    }

    /// Entries waiting, and the oldest one's acknowledgement time. Two block reads, whatever the depth: blocks are
    /// removed oldest first, so the sequences between the first block and the end of the last are all still there
    /// (a write that failed after taking sequences leaves a gap: then this over-counts by the gap).
    pub fn outbox_depth(&self) -> Result<Depth, StoreError> {
        let db = self.db();
        let mut range = db.scan_prefix(OUTBOX_PREFIX);
        let Some(first) = range.next() else { return Ok(Depth::default()) };
        let (first_key, first_value) = first?;
        let first_entries = decode_value(&first_value)?;
        // One past the last sequence: the last block's first sequence plus its entries.
        let end = match range.next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                seq_of(&k)? + count_value(&v)?
            }
            None => seq_of(&first_key)? + first_entries.len() as u64,
        };
        Ok(Depth {
            entries: end - seq_of(&first_key)?,
            oldest_received_ms: first_entries.first().map(|e| e.received_ms),
        })
    }
}
