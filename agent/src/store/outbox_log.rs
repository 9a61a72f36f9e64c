//! The spool's outbox in files of its own (`<data_dir>/outbox/<first seq>.seg`, layout in
//! [`super::schema::outbox_file`]): appended with each ingest group, read oldest first by the forwarder, and
//! deleted whole once every entry in a file is in the shared ledger.
//!
//! Why not sled (the outbox was `o/` keys until this): every acknowledged event's full content went through
//! sled's tree inserts and leaf splits on the writer thread (~27% of a spool writer's time), and the forwarder's
//! removals churned sled's segments (the churn behind the sled deadlock `Store::outbox_remove` documents). An
//! outbox is written once, in order, read once, in order, and dropped from the front: an append-only file does
//! exactly that (the dedupe journal's shape, [`super::journal`]).
//!
//! **One commit point.** A group's blocks are written (not synced) to the active file, then their bytes go into
//! the group's redo record with the end mark `m/outbox_end` (next sequence, file, end) in its sled batch; the
//! reply waits for the redo log's `fdatasync`, as every write does ([`super::redo`]). The forwarder sees a block
//! only once its group is durable ([`OutboxLog::publish`]). A crash replays the record's bytes into the file at
//! their offset; the checkpoint syncs the files before the log files that hold their bytes go.
//!
//! **Sequences are contiguous**: the writer assigns them, and a group whose write fails gives its sequences back
//! ([`Spool::abandon`](super::outbox::Spool)). So at open the files must hold every sequence from the first kept
//! one up to the end mark's next; a gap is damage, reported, never skipped.
//!
//! **Forwarded.** Once a page of blocks is in the shared ledger, the forwarder records `m/outbox_forwarded` (every
//! sequence below it) and deletes each closed file all of whose entries are below it, oldest first, syncing the
//! directory after each, so the files left are always a suffix. The mark is not synced on its own: one that
//! comes back older after a crash resends blocks, which the shared ledger answers as replays.
//!
//! **Crash states at open** ([`OutboxLog::open`]): files named at or after the end mark's next sequence were
//! started for a group that never became durable: deleted. The end mark's file is cut to the mark's end (what
//! follows was never acknowledged). The end mark's file missing: the forwarder deleted it, so everything below
//! the mark was forwarded.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::schema::outbox_file::{self as layout, EndMark};
use super::{StoreError, durable};
use crate::clock::UnixMillis;

/// The outbox files' directory inside the data dir.
pub const DIR: &str = "outbox";
/// A file this long is closed at the next group and the next one started: a file is deleted once all of it is
/// forwarded, so this bounds what a caught-up spool keeps on disk (about two files).
pub const ROTATE_BYTES: u64 = 16 << 20;
/// What the last group that added blocks left: [`EndMark`].
pub const END_KEY: &[u8] = b"m/outbox_end";
/// Every sequence below this is in the shared ledger (`u64` big-endian).
pub const FORWARDED_KEY: &[u8] = b"m/outbox_forwarded";

pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:016x}.seg")
}

fn first_seq_of(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg").filter(|h| h.len() == 16)?;
    u64::from_str_radix(hex, 16).ok()
}

fn io_error(what: impl std::fmt::Display, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("outbox file {what}: {e}"))
}

/// Where one block is: in which file (its first sequence), at which offset, how long (framed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockAt {
    pub seq: u64,
    pub count: u64,
    pub file: u64,
    pub at: u64,
    pub len: u64,
    /// When its first entry was acknowledged.
    pub received_ms: UnixMillis,
}

struct State {
    /// The files present, by first sequence; the last is the one being written.
    files: BTreeMap<u64, Arc<File>>,
    /// Bytes of the last file that hold durable blocks; the next group goes here.
    active_len: u64,
    /// Blocks of durable groups not yet forwarded, oldest first.
    blocks: VecDeque<BlockAt>,
    forwarded: u64,
    /// Closed since the last checkpoint, so not yet synced.
    unsynced: Vec<Arc<File>>,
}

pub struct OutboxLog {
    dir: PathBuf,
    rotate_bytes: u64,
    state: Mutex<State>,
}

/// A group's blocks, written to a file but not yet durable: [`OutboxLog::publish`] once its redo record is
/// synced, or dropped (the next group overwrites them; [`OutboxLog::open`] cuts them off).
pub struct Staged {
    pub file: u64,
    pub at: u64,
    pub bytes: Vec<u8>,
    pub mark: EndMark,
    pub blocks: Vec<BlockAt>,
}

fn read_u64(db: &sled::Db, key: &[u8], what: &str) -> Result<Option<u64>, StoreError> {
    db.get(key)?
        .map(|v| {
            <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt(format!("{what} is not 8 bytes")))
        })
        .transpose()
}

pub fn end_mark(db: &sled::Db) -> Result<Option<EndMark>, StoreError> {
    db.get(END_KEY)?
        .map(|v| EndMark::decode(&v).map_err(|e| StoreError::Corrupt(format!("m/outbox_end: {e}"))))
        .transpose()
}

/// The files in `dir`, by first sequence (other names are not the outbox's and are left alone).
fn list(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, StoreError> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir.display(), e))? {
        let entry = entry.map_err(|e| io_error(dir.display(), e))?;
        if let Some(first) = first_seq_of(&entry.file_name().to_string_lossy()) {
            files.insert(first, entry.path());
        }
    }
    Ok(files)
}

fn remove_durably(dir: &Path, path: &Path) -> Result<(), StoreError> {
    std::fs::remove_file(path).map_err(|e| io_error(path.display(), e))?;
    durable::sync_dir(dir).map_err(|e| io_error(dir.display(), e))
}

/// A new, empty file for the entries from `first_seq` on: its header and its entry in `dir`, durable before any
/// redo record can name it (a replay skips a file that is not there).
fn create(dir: &Path, first_seq: u64) -> Result<File, StoreError> {
    let path = dir.join(file_name(first_seq));
    let io = |e| io_error(path.display(), e);
    let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).map_err(io)?;
    file.write_all_at(&layout::encode_header(first_seq), 0).map_err(io)?;
    file.sync_data().map_err(io)?;
    durable::sync_dir(dir).map_err(io)?;
    Ok(file)
}

/// Writes every framed block of `blocks` (a whole set of files' worth) as one new file starting at `first_seq`,
/// synced: what a migration writes.
pub fn write_file(dir: &Path, first_seq: u64, blocks: &[u8]) -> Result<(), StoreError> {
    let file = create(dir, first_seq)?;
    let path = dir.join(file_name(first_seq));
    file.write_all_at(blocks, layout::HEADER_LEN as u64).map_err(|e| io_error(path.display(), e))?;
    file.sync_data().map_err(|e| io_error(path.display(), e))
}

/// Deletes every outbox file in `dir` (a migration starting over).
pub fn remove_all(dir: &Path) -> Result<(), StoreError> {
    durable::create_dir_all(dir, 0o700).map_err(|e| io_error(dir.display(), e))?;
    for path in list(dir)?.values() {
        std::fs::remove_file(path).map_err(|e| io_error(path.display(), e))?;
    }
    durable::sync_dir(dir).map_err(|e| io_error(dir.display(), e))
}

impl OutboxLog {
    /// Opens the outbox in `dir` as sled's marks describe it (see the module docs, "Crash states at open"), after
    /// the redo log's replay has written back whatever it held.
    pub fn open(dir: &Path, db: &sled::Db, rotate_bytes: u64) -> Result<Self, StoreError> {
        durable::create_dir_all(dir, 0o700).map_err(|e| io_error(dir.display(), e))?;
        let mut paths = list(dir)?;
        let Some(end) = end_mark(db)? else {
            // No group ever became durable: whatever is here was started for one that did not.
            for p in paths.values() {
                remove_durably(dir, p)?;
            }
            return Ok(Self::empty(dir, rotate_bytes, 0));
        };
        let forwarded = read_u64(db, FORWARDED_KEY, "m/outbox_forwarded")?.unwrap_or(0);
        // Started for a group that never became durable.
        let stale: Vec<u64> = paths.range(end.file + 1..).map(|(f, _)| *f).collect();
        for f in stale {
            let p = paths.remove(&f).expect("listed");
            remove_durably(dir, &p)?;
        }
        if !paths.contains_key(&end.file) {
            // Deleted by the forwarder: everything below the mark is forwarded.
            for p in paths.values() {
                remove_durably(dir, p)?;
            }
            return Ok(Self::empty(dir, rotate_bytes, forwarded.max(end.next_seq)));
        }
        let mut files = BTreeMap::new();
        let mut blocks = VecDeque::new();
        let mut expect: Option<u64> = None;
        let mut active_len = layout::HEADER_LEN as u64;
        let firsts: Vec<u64> = paths.keys().copied().collect();
        for (i, first) in firsts.iter().enumerate() {
            let path = &paths[first];
            let io = |e| io_error(path.display(), e);
            let file = File::options().read(true).write(true).open(path).map_err(io)?;
            let last = *first == end.file;
            if last {
                let len = file.metadata().map_err(io)?.len();
                if len < end.end {
                    return Err(StoreError::Corrupt(format!(
                        "outbox file {} ends at byte {len}, before its last acknowledged block ends ({})",
                        path.display(),
                        end.end
                    )));
                }
                if len > end.end {
                    file.set_len(end.end).map_err(io)?;
                    file.sync_data().map_err(io)?;
                }
                active_len = end.end;
            }
            let bytes = std::fs::read(path).map_err(io)?;
            let damaged = |what: String| StoreError::Corrupt(format!("outbox file {}: {what}", path.display()));
            match layout::decode_header(&bytes) {
                Ok(f) if f == *first => {}
                Ok(f) => return Err(damaged(format!("its header names sequence {f}"))),
                Err(e) => return Err(damaged(format!("header: {e}"))),
            }
            // Blocks in this file are below the next file's first sequence (beyond that: a group that failed
            // before the rotation, never acknowledged).
            let limit = firsts.get(i + 1).copied().unwrap_or(end.next_seq);
            let mut at = layout::HEADER_LEN;
            // Once the file holds everything up to the next file's first sequence, what follows is never read: a
            // failed group's bytes that a crash kept past the cut made at rotation (torn, or whole but never
            // acknowledged).
            while at < bytes.len() && expect != Some(limit) {
                let Some((seq, block, n)) =
                    layout::next_block(&bytes[at..]).map_err(|e| damaged(format!("block at byte {at}: {e}")))?
                else {
                    break;
                };
                if seq >= limit || expect.is_some_and(|e| e != seq) {
                    break;
                }
                // The count and the first entry only (checksum verified): a backlog of millions opens in a
                // fraction of what decoding every entry took (docs/fleet.md).
                let (count, head) = super::schema::outbox::count_and_first(block)
                    .map_err(|e| damaged(format!("block at byte {at}: {e}")))?;
                if seq + count > forwarded {
                    blocks.push_back(BlockAt {
                        seq,
                        count,
                        file: *first,
                        at: at as u64,
                        len: n as u64,
                        received_ms: head.received_ms,
                    });
                }
                expect = Some(seq + count);
                at += n;
            }
            files.insert(*first, Arc::new(file));
        }
        if expect != Some(end.next_seq) {
            return Err(StoreError::Corrupt(format!(
                "the outbox files in {} hold entries up to sequence {}, but entries up to {} were acknowledged",
                dir.display(),
                expect.unwrap_or(0),
                end.next_seq
            )));
        }
        let log = OutboxLog {
            dir: dir.to_path_buf(),
            rotate_bytes,
            state: Mutex::new(State { files, active_len, blocks, forwarded, unsynced: Vec::new() }),
        };
        // Files wholly forwarded before the crash whose deletion it cut short.
        log.delete_forwarded()?;
        Ok(log)
    }

    fn empty(dir: &Path, rotate_bytes: u64, forwarded: u64) -> Self {
        let state = State {
            files: BTreeMap::new(),
            active_len: layout::HEADER_LEN as u64,
            blocks: VecDeque::new(),
            forwarded,
            unsynced: Vec::new(),
        };
        OutboxLog { dir: dir.to_path_buf(), rotate_bytes, state: Mutex::new(state) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `framed` (framed blocks, the first with sequence `first_seq`) after the last durable block, starting
    /// a new file first if the active one is full; `blocks` are their offsets relative to `framed`. Not synced:
    /// the caller puts the bytes in its redo record.
    pub fn stage(
        &self,
        first_seq: u64,
        framed: Vec<u8>,
        mut blocks: Vec<BlockAt>,
        next_seq: u64,
    ) -> Result<Staged, StoreError> {
        let mut s = self.state();
        if s.files.is_empty() || s.active_len >= self.rotate_bytes {
            let file = create(&self.dir, first_seq)?;
            if let Some((first, old)) = s.files.last_key_value() {
                // Cut what failed groups may have left after the last durable block (the next file takes over).
                let path = self.dir.join(file_name(*first));
                old.set_len(s.active_len).map_err(|e| io_error(path.display(), e))?;
                let old = old.clone();
                s.unsynced.push(old);
            }
            s.files.insert(first_seq, Arc::new(file));
            s.active_len = layout::HEADER_LEN as u64;
        }
        let (file_seq, file) = s.files.last_key_value().map(|(f, h)| (*f, h.clone())).expect("an active file");
        let at = s.active_len;
        drop(s);
        file.write_all_at(&framed, at).map_err(|e| io_error(file_name(file_seq), e))?;
        for b in &mut blocks {
            b.file = file_seq;
            b.at += at;
        }
        let mark = EndMark { next_seq, file: file_seq, end: at + framed.len() as u64 };
        Ok(Staged { file: file_seq, at, bytes: framed, mark, blocks })
    }

    /// Makes a durable group's blocks readable by the forwarder.
    pub fn publish(&self, staged: Staged) {
        let mut s = self.state();
        if s.files.last_key_value().is_some_and(|(f, _)| *f == staged.file) {
            s.active_len = staged.mark.end;
        }
        s.blocks.extend(staged.blocks);
    }

    /// The oldest blocks, whole, until they hold at least `limit` entries.
    pub fn page(&self, limit: usize) -> Result<Vec<(BlockAt, Vec<super::outbox::Entry>)>, StoreError> {
        let picked: Vec<(BlockAt, Arc<File>)> = {
            let s = self.state();
            let mut n = 0u64;
            let mut picked = Vec::new();
            for b in &s.blocks {
                if n >= limit as u64 {
                    break;
                }
                let file = s.files.get(&b.file).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!("outbox block {} is in file {}, which is gone", b.seq, b.file))
                })?;
                picked.push((*b, file));
                n += b.count;
            }
            picked
        };
        let mut out = Vec::with_capacity(picked.len());
        for (b, file) in picked {
            let mut buf = vec![0u8; b.len as usize];
            let damaged = |what: String| {
                StoreError::Corrupt(format!("outbox file {}: block at byte {}: {what}", file_name(b.file), b.at))
            };
            file.read_exact_at(&mut buf, b.at).map_err(|e| damaged(e.to_string()))?;
            match layout::next_block(&buf) {
                Ok(Some((seq, block, _))) if seq == b.seq => out.push((b, super::outbox::decode_value(block)?)),
                Ok(_) => return Err(damaged(format!("not block {}", b.seq))),
                Err(e) => return Err(damaged(e.to_string())),
            }
        }
        Ok(out)
    }

    /// Records that the blocks starting at `seqs` (the oldest ones) are in the shared ledger, and deletes the
    /// files that held nothing else. A sequence that starts no waiting block is ignored.
    pub fn forwarded(&self, db: &sled::Db, seqs: &[u64]) -> Result<(), StoreError> {
        let through = {
            let mut s = self.state();
            let mut through = None;
            while let Some(b) = s.blocks.front().copied() {
                if !seqs.contains(&b.seq) {
                    break;
                }
                s.blocks.pop_front();
                through = Some(b.seq + b.count);
            }
            let Some(through) = through else { return Ok(()) };
            s.forwarded = through;
            through
        };
        db.insert(FORWARDED_KEY, &through.to_be_bytes())?;
        self.delete_forwarded()
    }

    /// Deletes, oldest first, each closed file whose every entry is below the forwarded mark.
    fn delete_forwarded(&self) -> Result<(), StoreError> {
        loop {
            let gone = {
                let mut s = self.state();
                let mut firsts = s.files.keys().copied();
                let (Some(first), Some(second)) = (firsts.next(), firsts.next()) else { return Ok(()) };
                if second > s.forwarded {
                    return Ok(());
                }
                s.files.remove(&first);
                first
            };
            remove_durably(&self.dir, &self.dir.join(file_name(gone)))?;
        }
    }

    /// The files a checkpoint must sync: the active one and those closed since the last checkpoint.
    pub fn to_sync(&self) -> Vec<Arc<File>> {
        let mut s = self.state();
        let mut out = std::mem::take(&mut s.unsynced);
        out.extend(s.files.last_key_value().map(|(_, f)| f.clone()));
        out
    }

    /// Entries waiting, and when the oldest was acknowledged.
    pub fn depth(&self) -> (u64, Option<UnixMillis>) {
        let s = self.state();
        match (s.blocks.front(), s.blocks.back()) {
            (Some(a), Some(b)) => (b.seq + b.count - a.seq, Some(a.received_ms)),
            _ => (0, None),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.state().blocks.is_empty()
    }

    /// How many files the outbox has on disk (tests and status).
    pub fn file_count(&self) -> usize {
        self.state().files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Identity, UsageEvent};
    use crate::domain::quantity::Micros;

    /// A file takes one group, then the next group starts another.
    const ONE_GROUP: u64 = layout::HEADER_LEN as u64 + 1;

    fn event(key: &str) -> UsageEvent {
        UsageEvent {
            idempotency_key: key.into(),
            product: "app".into(),
            identity: Identity::Legacy { customer_identifier: "c".into() },
            dimension: "api_calls".into(),
            quantity: Micros(1_000_000),
            timestamp_ms: Some(1_000),
            tags: Default::default(),
        }
    }

    /// What the writer does for a group of `n` events from sequence `first`: one block each `per_block`.
    fn group(log: &OutboxLog, first: u64, n: u64, tag: &str) -> Staged {
        let events: Vec<UsageEvent> = (first..first + n).map(|i| event(&format!("{tag}-{i}"))).collect();
        let pairs: Vec<(&UsageEvent, UnixMillis)> = events.iter().map(|e| (e, 7)).collect();
        let (mut framed, mut blocks, mut seq) = (Vec::new(), Vec::new(), first);
        for chunk in pairs.chunks(4) {
            let at = framed.len() as u64;
            layout::put_block(&mut framed, seq, &crate::store::schema::outbox::encode_events(chunk));
            let len = framed.len() as u64 - at;
            blocks.push(BlockAt { seq, count: chunk.len() as u64, file: 0, at, len, received_ms: 7 });
            seq += chunk.len() as u64;
        }
        log.stage(first, framed, blocks, seq).unwrap()
    }

    /// A group made durable: its end mark in sled (as its redo record's batch puts it there), then published.
    fn durable(log: &OutboxLog, db: &sled::Db, staged: Staged) {
        db.insert(END_KEY, &staged.mark.encode()[..]).unwrap();
        log.publish(staged);
    }

    fn keys(log: &OutboxLog) -> Vec<String> {
        log.page(usize::MAX).unwrap().into_iter().flat_map(|(_, es)| es).map(|e| e.idempotency_key).collect()
    }

    fn setup() -> (tempfile::TempDir, sled::Db, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let db = sled::open(d.path().join("db")).unwrap();
        let dir = d.path().join(DIR);
        (d, db, dir)
    }

    #[test]
    fn files_are_deleted_whole_once_forwarded_and_what_is_left_reopens_in_order() {
        let (_d, db, dir) = setup();
        // One group (of two blocks) per file.
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        for g in 0..4u64 {
            let staged = group(&log, g * 8, 8, "a");
            durable(&log, &db, staged);
        }
        assert_eq!(log.file_count(), 4);
        assert_eq!(log.depth(), (32, Some(7)));
        // A page is whole blocks; forwarding the first file's two blocks and one of the second's deletes only
        // the first file.
        let page = log.page(9).unwrap();
        let seqs: Vec<u64> = page.iter().map(|(b, _)| b.seq).collect();
        assert_eq!(seqs, vec![0, 4, 8]);
        log.forwarded(&db, &seqs).unwrap();
        assert_eq!(log.file_count(), 3);
        assert!(!dir.join(file_name(0)).exists());
        assert_eq!(log.depth().0, 20);
        drop(log);
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        let want: Vec<String> = (12..32).map(|i| format!("a-{i}")).collect();
        assert_eq!(keys(&log), want);
        // A forwarded mark that came back older (it is not synced on its own) resends, never skips.
        db.insert(FORWARDED_KEY, &4u64.to_be_bytes()).unwrap();
        drop(log);
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        assert_eq!(keys(&log).len(), 24);
        let all: Vec<u64> = log.page(usize::MAX).unwrap().iter().map(|(b, _)| b.seq).collect();
        log.forwarded(&db, &all).unwrap();
        assert!(log.is_empty());
        assert_eq!(log.file_count(), 1, "the file being written stays");
    }

    #[test]
    fn a_group_that_never_became_durable_is_cut_off_and_its_place_reused() {
        let (_d, db, dir) = setup();
        let log = OutboxLog::open(&dir, &db, 1 << 20).unwrap();
        let staged = group(&log, 0, 5, "kept");
        durable(&log, &db, staged);
        // Written to the file, but its redo record never synced: no end mark, never published.
        let _lost = group(&log, 5, 3, "lost");
        assert_eq!(keys(&log).len(), 5, "the forwarder never sees it");
        drop(log);
        let log = OutboxLog::open(&dir, &db, 1 << 20).unwrap();
        assert_eq!(keys(&log), (0..5).map(|i| format!("kept-{i}")).collect::<Vec<_>>());
        let staged = group(&log, 5, 2, "next");
        durable(&log, &db, staged);
        drop(log);
        let log = OutboxLog::open(&dir, &db, 1 << 20).unwrap();
        assert_eq!(keys(&log).last().unwrap(), "next-6");
        assert_eq!(keys(&log).len(), 7);
    }

    #[test]
    fn a_file_started_for_a_group_that_failed_is_deleted_at_open() {
        let (_d, db, dir) = setup();
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        let staged = group(&log, 0, 4, "a");
        durable(&log, &db, staged);
        // The next group starts a file (the first is full), then fails.
        let _failed = group(&log, 4, 4, "b");
        assert!(dir.join(file_name(4)).exists());
        drop(log);
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        assert!(!dir.join(file_name(4)).exists());
        assert_eq!(keys(&log).len(), 4);
        // Its sequences go to the next group, into a file of that name again.
        let staged = group(&log, 4, 4, "c");
        durable(&log, &db, staged);
        assert_eq!(keys(&log).last().unwrap(), "c-7");
    }

    #[test]
    fn bytes_after_a_closed_files_last_block_are_never_read() {
        let (_d, db, dir) = setup();
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        for g in 0..2u64 {
            let staged = group(&log, g * 4, 4, "a");
            durable(&log, &db, staged);
        }
        drop(log);
        // A failed group's bytes that the rotation's cut did not keep off the disk: damaged, after the first file's
        // last block.
        let first = dir.join(file_name(0));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes.extend_from_slice(&[0x00, 0x00, 0x00, 0x0b, 0xde, 0xad, 0xbe, 0xef]);
        bytes.extend_from_slice(&[7u8; 11]);
        std::fs::write(&first, &bytes).unwrap();
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        assert_eq!(keys(&log), (0..8).map(|i| format!("a-{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn no_end_mark_means_no_acknowledged_entry() {
        let (_d, db, dir) = setup();
        let log = OutboxLog::open(&dir, &db, 1 << 20).unwrap();
        let _never = group(&log, 0, 3, "a");
        drop(log);
        let log = OutboxLog::open(&dir, &db, 1 << 20).unwrap();
        assert!(log.is_empty());
        assert_eq!(log.file_count(), 0);
    }

    #[test]
    fn the_end_marks_file_gone_means_it_was_forwarded_and_deleted() {
        let (_d, db, dir) = setup();
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        let staged = group(&log, 0, 4, "a");
        durable(&log, &db, staged);
        // A group starts the next file and fails; the forwarder then deletes the first, all forwarded.
        let _failed = group(&log, 4, 4, "b");
        log.forwarded(&db, &[0]).unwrap();
        assert!(!dir.join(file_name(0)).exists());
        drop(log);
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        assert!(log.is_empty());
        assert_eq!(log.file_count(), 0);
    }

    #[test]
    fn a_missing_or_damaged_file_is_reported_never_skipped() {
        let (_d, db, dir) = setup();
        let log = OutboxLog::open(&dir, &db, ONE_GROUP).unwrap();
        for g in 0..3u64 {
            let staged = group(&log, g * 4, 4, "a");
            durable(&log, &db, staged);
        }
        assert_eq!(log.file_count(), 3);
        drop(log);
        // A flipped byte in the middle file's block.
        let middle = dir.join(file_name(4));
        let mut bytes = std::fs::read(&middle).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        std::fs::write(&middle, &bytes).unwrap();
        let e = OutboxLog::open(&dir, &db, ONE_GROUP).err().expect("damage is refused").to_string();
        assert!(e.contains("outbox file") && e.contains("checksum"), "{e}");
        // The middle file gone: a gap in the sequences.
        std::fs::remove_file(&middle).unwrap();
        let e = OutboxLog::open(&dir, &db, ONE_GROUP).err().expect("a gap is refused").to_string();
        assert!(e.contains("hold entries up to sequence 4, but entries up to 12"), "{e}");
        // The last file shorter than its mark says.
        let last = dir.join(file_name(8));
        let f = File::options().write(true).open(&last).unwrap();
        f.set_len(f.metadata().unwrap().len() - 3).unwrap();
        std::fs::write(&middle, {
            bytes[n - 10] ^= 1;
            &bytes
        })
        .unwrap();
        let e = OutboxLog::open(&dir, &db, ONE_GROUP).err().expect("a short file is refused").to_string();
        assert!(e.contains("before its last acknowledged block ends"), "{e}");
    }
}
