//! The spool's outbox (fleet mode, `ack = "local"`): the full content of every event this agent acknowledged
//! and has not yet forwarded to the shared ledger.
//!
//! Written with the ingest that stored the event, under the same commit point (its redo record, see
//! [`super::outbox_log`]), so an acknowledged event is always either in the outbox or already in PostgreSQL;
//! marked forwarded only after the forward that carried it committed. A crash between the commit and the mark
//! resends the entry, which the shared ledger answers as a replay.
//!
//! Every acknowledged event has a sequence, in acknowledgement order (one writer thread assigns them, without
//! gaps); an ingest group's new events go in blocks of at most [`BLOCK_ENTRIES`], each named by its first
//! sequence, so a group is one append, not one write per event (a write per event kept one agent's batch ingest
//! at about half of a standalone agent's, docs/fleet.md). A block is forwarded whole. The entries live in files
//! of the outbox's own ([`super::outbox_log`]); builds before that kept each block under a sled key (`o/` + first
//! sequence, big-endian), which [`Spool::open`] moves into a file once. A block's first byte names its encoding:
//! an older agent never misreads a newer layout, it stops.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::outbox_log::{self, BlockAt, OutboxLog, Staged};
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
    /// Where the entries are kept until forwarded.
    log: OutboxLog,
}

/// What [`Store::outbox_reorder`] answers: the reorder depth of the entries this process wrote (from sequence
/// `first_seq` on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reorder {
    pub first_seq: u64,
    pub depth_ms: i64,
}

impl Spool {
    /// Opens the outbox files in `dir` (after converting `o/` keys an earlier build left in `db`) and continues
    /// after their last entry.
    pub(crate) fn open(db: &sled::Db, dir: &Path) -> Result<Self, StoreError> {
        if let Some(moved) = migrate_keys(db, dir)? {
            tracing::info!(entries = moved, "moved the outbox out of sled into its own files");
        }
        let log = OutboxLog::open(dir, db, outbox_log::ROTATE_BYTES)?;
        let next = outbox_log::end_mark(db)?.map_or(0, |m| m.next_seq);
        Ok(Spool {
            next: AtomicU64::new(next),
            first_of_process: next,
            highest_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            depth_ms: std::sync::atomic::AtomicI64::new(0),
            log,
        })
    }

    pub(crate) fn reorder(&self) -> Reorder {
        Reorder { first_seq: self.first_of_process, depth_ms: self.depth_ms.load(Ordering::SeqCst) }
    }

    /// Writes every newly stored event of `calls` (decided as `outcomes`) as blocks after the outbox's last, not
    /// synced: the caller logs the bytes in its redo record, then [`Self::publish`]es them, or
    /// [`Self::abandon`]s them if its write fails. `None` when no event was stored.
    pub(crate) fn stage<'a>(
        &self,
        calls: impl Iterator<Item = (&'a [UsageEvent], UnixMillis)>,
        outcomes: &[Vec<IngestOutcome>],
    ) -> Result<Option<Staged>, StoreError> {
        // Borrowed: an entry's strings are written from the event itself, never copied first.
        let mut stored: Vec<(&UsageEvent, UnixMillis)> = Vec::new();
        for ((events, received_ms), outcomes) in calls.zip(outcomes) {
            for (e, o) in events.iter().zip(outcomes) {
                if matches!(o, IngestOutcome::Stored(_)) {
                    stored.push((e, received_ms));
                }
            }
        }
        if stored.is_empty() {
            return Ok(None);
        }
        // Before the entries can be read (they are published after this): a forwarder that reads them reads a
        // depth that covers them.
        let mut highest = self.highest_ms.load(Ordering::SeqCst);
        let mut depth = self.depth_ms.load(Ordering::SeqCst);
        for &(_, received_ms) in &stored {
            highest = highest.max(received_ms);
            depth = depth.max(highest.saturating_sub(received_ms));
        }
        self.highest_ms.store(highest, Ordering::SeqCst);
        self.depth_ms.store(depth, Ordering::SeqCst);
        let first = self.next.load(Ordering::SeqCst);
        let mut framed = Vec::with_capacity(170 * stored.len());
        let mut blocks = Vec::with_capacity(stored.len().div_ceil(BLOCK_ENTRIES));
        let mut seq = first;
        for block in stored.chunks(BLOCK_ENTRIES) {
            let at = framed.len() as u64;
            super::schema::outbox_file::put_block(&mut framed, seq, &super::schema::outbox::encode_events(block));
            blocks.push(BlockAt {
                seq,
                count: block.len() as u64,
                file: 0,
                at,
                len: framed.len() as u64 - at,
                received_ms: block[0].1,
            });
            seq += block.len() as u64;
        }
        let staged = self.log.stage(first, framed, blocks, seq)?;
        self.next.store(seq, Ordering::SeqCst);
        Ok(Some(staged))
    }

    /// The staged group is durable: its blocks may be forwarded.
    pub(crate) fn publish(&self, staged: Staged) {
        self.log.publish(staged);
    }

    /// The staged group's write failed: its sequences go to the next group (they stay contiguous).
    pub(crate) fn abandon(&self, staged: &Staged) {
        if let Some(b) = staged.blocks.first() {
            self.next.store(b.seq, Ordering::SeqCst);
        }
    }

    /// The files a checkpoint syncs.
    pub(crate) fn files_to_sync(&self) -> Vec<std::sync::Arc<std::fs::File>> {
        self.log.to_sync()
    }
}

/// Moves the `o/` keys an earlier build kept in sled into one outbox file, renumbered from the first key's
/// sequence without gaps (an earlier build left a gap where a write failed), then removes them and sets the
/// marks, in one sled batch, which the open then fsyncs before anything is logged. A crash before that batch is
/// durable leaves the keys: the next open starts over (the files it wrote first are deleted). `None` when there
/// were none.
fn migrate_keys(db: &sled::Db, dir: &Path) -> Result<Option<u64>, StoreError> {
    let Some(first) = db.scan_prefix(OUTBOX_PREFIX).next() else { return Ok(None) };
    let first = seq_of(&first?.0)?;
    outbox_log::remove_all(dir)?;
    let mut framed = Vec::new();
    let mut seq = first;
    let mut batch = sled::Batch::default();
    for kv in db.scan_prefix(OUTBOX_PREFIX) {
        let (k, v) = kv?;
        let entries = decode_value(&v)?;
        let events: Vec<UsageEvent> = entries.iter().map(Entry::event).collect();
        let pairs: Vec<(&UsageEvent, UnixMillis)> =
            events.iter().zip(&entries).map(|(ev, e)| (ev, e.received_ms)).collect();
        super::schema::outbox_file::put_block(&mut framed, seq, &super::schema::outbox::encode_events(&pairs));
        seq += entries.len() as u64;
        batch.remove(k);
    }
    let end = framed.len() as u64 + super::schema::outbox_file::HEADER_LEN as u64;
    outbox_log::write_file(dir, first, &framed)?;
    let mark = super::schema::outbox_file::EndMark { next_seq: seq, file: first, end };
    batch.insert(outbox_log::END_KEY, &mark.encode()[..]);
    batch.insert(outbox_log::FORWARDED_KEY, &first.to_be_bytes()[..]);
    db.apply_batch(batch)?;
    Ok(Some(seq - first))
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

    /// Keeps this process's fleet incarnation, durably (fdatasync, not sled's own flush: a power loss dropped
    /// it, and the restarted agent took its own node for another live one), before it acts as the node.
    pub fn set_fleet_incarnation(&self, id: [u8; 16]) -> Result<(), StoreError> {
        let live = super::current(&self.inner.db);
        live.db.insert(INCARNATION_KEY, &id)?;
        live.sync()
    }

    /// The oldest whole blocks of the outbox, until they hold at least `limit` entries (so at most `limit` +
    /// [`BLOCK_ENTRIES`] − 1).
    pub fn outbox_page(&self, limit: usize) -> Result<Page, StoreError> {
        let mut page = Page::default();
        let Some(spool) = &self.inner.spool else { return Ok(page) };
        for (b, entries) in spool.log.page(limit)? {
            page.blocks.push(b.seq);
            page.entries.extend((b.seq..).zip(entries));
        }
        Ok(page)
    }

    /// Records that the blocks that start at `seqs` (a page's [`Page::blocks`], after the shared ledger committed
    /// them) are forwarded; a sequence that starts no waiting block is ignored. The mark is not fsynced on its
    /// own: blocks that come back after a crash are forwarded again and replay. Outbox files holding nothing
    /// else are deleted whole ([`outbox_log`]).
    ///
    /// Never a sled `apply_batch` here: sled 0.34.7's `apply_batch` takes its global write lock and rolls the
    /// I/O buffer twice, and a forwarder removing `o/` blocks that way page after page beside the writer's
    /// inserts queued enough buffer writes on sled's I/O threads to deadlock the whole store (every I/O thread
    /// waiting for the segment accountant, whose holder waited for a file truncation queued behind them; seen in
    /// `forward_watermark.rs`: 1 run in 59 here, CI's first). Now it is one small insert per page.
    pub fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        match &self.inner.spool {
            Some(spool) => spool.log.forwarded(&self.db(), seqs),
            None => Ok(()),
        }
    }

    /// The spool's reorder depth ([`Spool`]); `None` for a store that is not a spool.
    pub fn outbox_reorder(&self) -> Option<Reorder> {
        self.inner.spool.as_ref().map(|s| s.reorder())
    }

    /// Whether nothing waits to be forwarded (`ack = "shared"` asks it on every call): in memory.
    pub fn outbox_is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.inner.spool.as_ref().is_none_or(|s| s.log.is_empty()))
    }

    /// Entries waiting, and the oldest one's acknowledgement time: in memory, whatever the depth.
    pub fn outbox_depth(&self) -> Result<Depth, StoreError> {
        let Some(spool) = &self.inner.spool else { return Ok(Depth::default()) };
        let (entries, oldest_received_ms) = spool.log.depth();
        Ok(Depth { entries, oldest_received_ms })
    }

    /// How many outbox files the spool keeps on disk (0 for a standalone store).
    pub fn outbox_files(&self) -> usize {
        self.inner.spool.as_ref().map_or(0, |s| s.log.file_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::Identity;

    fn entry(key: &str) -> Entry {
        Entry {
            idempotency_key: key.into(),
            product: "app".into(),
            identity: Identity::Legacy { customer_identifier: "c".into() },
            dimension: "api_calls".into(),
            quantity: Micros(2_000_000),
            timestamp_ms: None,
            tags: Default::default(),
            received_ms: 5,
        }
    }

    /// An `o/` value as an earlier build wrote it: a block of `entries` under its first sequence.
    fn put_block(db: &sled::Db, seq: u64, entries: &[Entry]) {
        let events: Vec<UsageEvent> = entries.iter().map(Entry::event).collect();
        let pairs: Vec<(&UsageEvent, UnixMillis)> = events.iter().map(|e| (e, 5)).collect();
        let key = [OUTBOX_PREFIX, &seq.to_be_bytes()].concat();
        db.insert(key, super::super::schema::outbox::encode_events(&pairs)).unwrap();
    }

    #[test]
    fn o_keys_move_into_a_file_renumbered_without_gaps_and_a_cut_short_move_starts_over() {
        let d = tempfile::tempdir().unwrap();
        let db = sled::open(d.path().join("db")).unwrap();
        let dir = d.path().join(outbox_log::DIR);
        // Blocks at 10 (2 entries) and 20 (1 entry, a failed write left 12..20 unused), plus a single entry in
        // encoding 2 at 21.
        put_block(&db, 10, &[entry("a"), entry("b")]);
        put_block(&db, 20, &[entry("c")]);
        db.insert([OUTBOX_PREFIX, &21u64.to_be_bytes()].concat(), encode_entry(&entry("d"))).unwrap();
        // A move cut short before its sled batch: a file is there, the keys too. It starts over.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(outbox_log::file_name(10)), b"half a file").unwrap();
        assert_eq!(migrate_keys(&db, &dir).unwrap(), Some(4));
        assert_eq!(db.scan_prefix(OUTBOX_PREFIX).count(), 0);
        assert_eq!(migrate_keys(&db, &dir).unwrap(), None, "once");
        let spool = Spool::open(&db, &dir).unwrap();
        let page = spool.log.page(100).unwrap();
        let got: Vec<(u64, String)> =
            page.into_iter().flat_map(|(b, es)| (b.seq..).zip(es.into_iter().map(|e| e.idempotency_key))).collect();
        let want: Vec<(u64, String)> =
            [(10, "a"), (11, "b"), (12, "c"), (13, "d")].into_iter().map(|(s, k)| (s, k.to_string())).collect();
        assert_eq!(got, want);
        assert_eq!(spool.next.load(Ordering::SeqCst), 14);
        assert_eq!(spool.log.page(100).unwrap()[0].1[0], entry("a"));
    }
}
