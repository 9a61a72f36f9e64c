//! The redo log: the store's commit point (store v5).
//!
//! Every write the writer makes to the default tree is first appended here as one record (its ops exactly as
//! sled applies them, plus the dedupe journal record it goes with, if any), then applied to sled. A reply waits
//! for the `fdatasync` of this one file, not for sled's: sled and the dedupe segment files are made durable
//! lazily, by a checkpoint every [`CHECKPOINT_EVERY`] off the write path, after which the log files it covers
//! are deleted whole. One barrier per group instead of two in series (the journal's, then sled's flush and
//! fdatasync), and the slower one — sled's, which syncs a log that grows and rewrites its metadata — leaves the
//! write path.
//!
//! **Order.** A group that stores new events is logged *and fsynced* before its sled batch is applied: sled may
//! write any page back at any time, so it must never hold a `g/` count or journal mark for dedupe entries that
//! could still be lost (their bytes live only in the log until a checkpoint syncs the segment file). Other
//! writes are applied right after they are logged and answered after the next barrier: sled holding one of them
//! without its record only means the crash came after the write and before its answer.
//!
//! **Recovery** ([`replay`]). sled comes back as a prefix of its writes, the last of which names its record
//! (`m/redo_seq`, written in every logged batch). The open reads every log file in order up to the first torn or
//! damaged record, applies the records after that number to sled in order, and writes every record's dedupe bytes
//! back to their segment file at their offset (idempotent: the same bytes at the same place), then syncs both and
//! deletes the log. Writes the writer does not log — the open's own, a migration's, the forwarder's removal of
//! outbox blocks it has shipped — are either synced before anything is logged after them or harmless to redo
//! after (a removed block that comes back is forwarded again and replays).
//!
//! **Bounds.** The log holds what the last checkpoint did not cover: about a second of writes, in files of at
//! most [`ROTATE_BYTES`]; the open reads at most that.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::batch::Batch;
use super::schema::redo as layout;
use super::{StoreError, durable, journal, keys};
use crate::clock::UnixMillis;

pub const DIR: &str = "redo";
/// A log file this long is closed and the next one started; the checkpoint deletes closed files whole, but for
/// those it keeps as spares the next rotations reuse. Files are this long from the start (zero-filled once):
/// an `fdatasync` after writing inside a file's allocated length persists data only, while one after a write
/// that grows the file also writes its size and block map (`fsync_buffers_list` in a profile of the writer).
pub const ROTATE_BYTES: u64 = 4 << 20;
/// At most this many spares (32 MiB): enough for a checkpoint interval of a spool's log (its records carry the
/// outbox's bytes, ~20 MB/s at full load), so that a rotation on the write path renames a file rather than
/// writing and syncing 4 MiB of zeros (`new_file` was ~2% of a spool agent's CPU with one spare, and a stall of
/// the writer at every rotation).
const MAX_SPARES: usize = 8;
/// The names of spare files start so (no log file's name: [`replay`] never reads them).
const SPARE: &str = "spare";
/// How often sled and the dedupe segments are synced so that log files can go.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

fn file_name(first_seq: u64) -> String {
    format!("{first_seq:016x}.log")
}

fn first_seq_of(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".log").filter(|h| h.len() == 16)?;
    u64::from_str_radix(hex, 16).ok()
}

fn io_error(what: impl std::fmt::Display, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("redo log {what}: {e}"))
}

struct Active {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes written (header and whole records).
    len: u64,
    /// Bytes known durable.
    synced: u64,
    next_seq: u64,
}

/// The log (shared by the writer, which appends, the flusher, which syncs, and the checkpointer, which deletes).
pub struct Redo {
    dir: PathBuf,
    active: Mutex<Active>,
    /// Closed files and the last record each holds, oldest first.
    closed: Mutex<Vec<(PathBuf, u64)>>,
    /// Closed files the checkpoint kept for the next rotations (held while renaming one either way), and the
    /// number the next spare's name takes.
    spares: Mutex<(Vec<PathBuf>, u64)>,
    /// The last record applied to sled.
    applied: AtomicU64,
    /// Why nothing more may be logged: a sync failed (the kernel may have dropped what it had not written).
    poisoned: Mutex<Option<String>>,
}

impl Redo {
    /// Starts a log in `dir` (which [`replay`] has emptied) whose first record will be `next_seq`.
    pub fn create(dir: &Path, next_seq: u64) -> Result<Redo, StoreError> {
        let (file, path) = new_file(dir, next_seq)?;
        Ok(Redo {
            dir: dir.to_path_buf(),
            active: Mutex::new(Active {
                file: Arc::new(file),
                path,
                len: layout::HEADER_LEN as u64,
                synced: layout::HEADER_LEN as u64,
                next_seq,
            }),
            closed: Mutex::new(Vec::new()),
            spares: Mutex::new((Vec::new(), 0)),
            applied: AtomicU64::new(next_seq.saturating_sub(1)),
            poisoned: Mutex::new(None),
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        match &*self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(StoreError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Why writes are refused, if they are.
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn poison(&self, why: String) {
        tracing::error!(error = %why, "the store refuses every write from now on; restart meterd to recover");
        self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why);
    }

    /// Appends `batch` (with `m/redo_seq` added to it as its last op: a write applied key by key is whole once its
    /// number is there) and the dedupe record it goes with, as the next record; returns its number. Not synced:
    /// see [`Self::sync`]. A failed write leaves the log as it was.
    pub fn append(
        &self,
        batch: &mut Batch,
        dedupe: Option<(UnixMillis, u64, &[u8])>,
        outbox: Option<(u64, u64, &[u8])>,
    ) -> Result<u64, StoreError> {
        self.check()?;
        let mut a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if a.len >= ROTATE_BYTES {
            self.rotate(&mut a)?;
        }
        let seq = a.next_seq;
        batch.insert(keys::REDO_SEQ_KEY, &seq.to_be_bytes()[..]);
        let record = layout::encode_record(seq, dedupe, outbox, batch.ops());
        if record.len() - layout::FRAME_LEN > layout::MAX_BODY {
            // Replay would take it for damage and stop there: refuse it whole instead (the caller drops the write).
            return Err(StoreError::Io(format!(
                "a write of {} bytes is larger than the redo log takes ({} bytes)",
                record.len(),
                layout::MAX_BODY
            )));
        }
        if let Err(e) = a.file.write_all_at(&record, a.len) {
            // Cut what may have been written, so the next record follows the last whole one.
            if let Err(cut) = a.file.set_len(a.len) {
                self.poison(format!("redo log {}: a failed write could not be cut off: {cut}", a.path.display()));
            }
            return Err(io_error(a.path.display(), e));
        }
        a.len += record.len() as u64;
        a.next_seq += 1;
        Ok(seq)
    }

    /// Closes the active file (synced whole) and starts the next.
    fn rotate(&self, a: &mut Active) -> Result<(), StoreError> {
        if let Err(e) = a.file.sync_data() {
            self.poison(format!("redo log {}: fdatasync failed: {e}", a.path.display()));
            return Err(io_error(a.path.display(), e));
        }
        let (file, path) = {
            let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
            match spares.0.pop() {
                Some(p) => reuse(&self.dir, &p, a.next_seq)?,
                None => new_file(&self.dir, a.next_seq)?,
            }
        };
        let old = std::mem::replace(&mut a.path, path);
        self.closed.lock().unwrap_or_else(|e| e.into_inner()).push((old, a.next_seq - 1));
        a.file = Arc::new(file);
        a.len = layout::HEADER_LEN as u64;
        a.synced = a.len;
        Ok(())
    }

    /// Whether every record appended so far is durable.
    pub fn is_synced(&self) -> bool {
        let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        a.synced == a.len
    }

    /// Makes every record appended so far durable (`fdatasync`; nothing when it already is). Returns whether it
    /// had to sync. A failure poisons the log.
    pub fn sync(&self) -> Result<bool, StoreError> {
        self.check()?;
        let (file, len, path) = {
            let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if a.synced == a.len {
                return Ok(false);
            }
            (a.file.clone(), a.len, a.path.clone())
        };
        if let Err(e) = file.sync_data() {
            let why = format!("redo log {}: fdatasync failed: {e}", path.display());
            self.poison(why.clone());
            return Err(StoreError::Poisoned(why));
        }
        let mut a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        // A rotation meanwhile synced that file whole and started another.
        if Arc::ptr_eq(&a.file, &file) {
            a.synced = a.synced.max(len);
        }
        Ok(true)
    }

    /// Records that sled now holds record `seq`'s write.
    pub fn applied(&self, seq: u64) {
        self.applied.store(seq, Ordering::Release);
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Deletes the closed files whose every record is at most `seq` (sled and the segments hold them durably),
    /// keeping up to [`MAX_SPARES`] as spares.
    pub fn release_through(&self, seq: u64) -> usize {
        let gone: Vec<PathBuf> = {
            let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
            let n = closed.iter().take_while(|(_, last)| *last <= seq).count();
            closed.drain(..n).map(|(p, _)| p).collect()
        };
        if gone.is_empty() {
            return 0;
        }
        // A file that comes back after a power loss, under its name, is harmless: its records are at most sled's
        // mark. A spare's rename is made durable (by `reuse`) before the file is written again.
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        for p in &gone {
            let kept = spares.0.len() < MAX_SPARES && {
                let to = self.dir.join(format!("{SPARE}-{}", spares.1));
                spares.1 += 1;
                std::fs::rename(p, &to).is_ok().then(|| spares.0.push(to)).is_some()
            };
            if !kept && let Err(e) = std::fs::remove_file(p) {
                tracing::warn!(file = %p.display(), error = %e, "could not delete a redo log file a checkpoint covers");
            }
        }
        drop(spares);
        if let Err(e) = durable::sync_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not sync the redo log's directory");
        }
        gone.len()
    }
}

/// A new log file: its header, zeros to [`ROTATE_BYTES`], all durable, and its entry in `dir`.
fn new_file(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), StoreError> {
    let path = dir.join(file_name(first_seq));
    let io = |e| io_error(path.display(), e);
    let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).map_err(io)?;
    file.write_all_at(&layout::encode_header(first_seq), 0).map_err(io)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = layout::HEADER_LEN as u64;
    while at < ROTATE_BYTES {
        let n = zeros.len().min((ROTATE_BYTES - at) as usize);
        file.write_all_at(&zeros[..n], at).map_err(io)?;
        at += n as u64;
    }
    file.sync_data().map_err(io)?;
    durable::sync_dir(dir).map_err(io)?;
    Ok((file, path))
}

/// A spare file renamed (durably) to the log file starting at `first_seq`, with that header. Its old records
/// stay behind the new ones until overwritten: their numbers are older, so [`replay`] stops at the first.
fn reuse(dir: &Path, spare: &Path, first_seq: u64) -> Result<(File, PathBuf), StoreError> {
    let path = dir.join(file_name(first_seq));
    let io = |e| io_error(path.display(), e);
    std::fs::rename(spare, &path).map_err(io)?;
    durable::sync_dir(dir).map_err(io)?;
    let file = File::options().read(true).write(true).open(&path).map_err(io)?;
    // Made durable with the first record's sync; until then the file names records it does not hold, and
    // replay stops at it (none of them was synced, so none was answered).
    file.write_all_at(&layout::encode_header(first_seq), 0).map_err(io)?;
    Ok((file, path))
}

/// What [`replay`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Records read (whole and valid).
    pub records: u64,
    /// Of them, applied to sled (after its mark).
    pub applied: u64,
    /// The number the next record takes.
    pub next_seq: u64,
}

/// Brings sled, the dedupe segments in `journal_dir` and the outbox files in `outbox_dir` up to the log in `dir`
/// (see the module docs). The caller syncs sled, then calls [`clear`]; the touched files are synced here.
pub fn replay(dir: &Path, db: &sled::Db, journal_dir: &Path, outbox_dir: &Path) -> Result<Replayed, StoreError> {
    durable::create_dir_all(dir, 0o700).map_err(|e| io_error(dir.display(), e))?;
    let mark = match db.get(keys::REDO_SEQ_KEY)? {
        Some(v) => u64::from_be_bytes(
            v.as_ref().try_into().map_err(|_| StoreError::Corrupt("m/redo_seq is not 8 bytes".into()))?,
        ),
        None => 0,
    };
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir.display(), e))? {
        let entry = entry.map_err(|e| io_error(dir.display(), e))?;
        if let Some(first) = first_seq_of(&entry.file_name().to_string_lossy()) {
            files.push((first, entry.path()));
        }
    }
    files.sort();
    let mut done = Replayed { next_seq: mark + 1, ..Default::default() };
    let mut expect: Option<u64> = None;
    let mut segments: std::collections::BTreeMap<UnixMillis, Option<File>> = Default::default();
    let mut outboxes: std::collections::BTreeMap<u64, Option<File>> = Default::default();
    for (first, path) in &files {
        let io = |e| io_error(path.display(), e);
        let bytes = std::fs::read(path).map_err(io)?;
        let version = match layout::decode_header(&bytes) {
            Ok((f, _)) if expect.is_none() && f > mark + 1 => {
                return Err(StoreError::Corrupt(format!(
                    "redo log {} starts at record {f} but the store holds only up to record {mark}: records \
                     {}..{f} are in neither",
                    path.display(),
                    mark + 1
                )));
            }
            Ok((f, version)) if f == *first && expect.is_none_or(|e| e == f) => version,
            // A file whose header never made it holds no record; any other mismatch ends the log here.
            _ => break,
        };
        let mut at = layout::HEADER_LEN;
        while let Some(frame) = bytes.get(at..at + layout::FRAME_LEN) {
            // The end of this file's records (zeros, a torn record, or a spare's older records): the next file
            // goes on only if it starts with the next number.
            let Some(len) = layout::frame_len(frame.try_into().expect("frame")) else { break };
            let Some(framed) = bytes.get(at..at + layout::FRAME_LEN + len) else { break };
            let Ok(record) = layout::decode_record(framed, version) else { break };
            if expect.is_some_and(|e| e != record.seq) || (expect.is_none() && record.seq != *first) {
                break;
            }
            if let Some(d) = &record.dedupe {
                let file = match segments.entry(d.start) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let p = journal_dir.join(journal::file_name(d.start));
                        // No file: the segment was dropped since (its bytes are not needed any more).
                        v.insert(File::options().write(true).open(&p).ok())
                    }
                };
                if let Some(f) = file {
                    f.write_all_at(&d.bytes, d.at).map_err(|e| io_error("dedupe segment", e))?;
                }
            }
            if let Some(o) = &record.outbox {
                let file = outboxes.entry(o.file).or_insert_with(|| {
                    // No file: every entry in it was forwarded and the file deleted (one is durable before any
                    // record names it, see `outbox_log`).
                    File::options().write(true).open(outbox_dir.join(super::outbox_log::file_name(o.file))).ok()
                });
                if let Some(f) = file {
                    f.write_all_at(&o.bytes, o.at).map_err(|e| io_error("outbox file", e))?;
                }
            }
            if record.seq > mark {
                Batch::from(record.ops).apply_unlogged(db)?;
                done.applied += 1;
            }
            done.records += 1;
            done.next_seq = done.next_seq.max(record.seq + 1);
            expect = Some(record.seq + 1);
            at += layout::FRAME_LEN + len;
        }
    }
    for f in segments.values().flatten() {
        f.sync_data().map_err(|e| io_error("dedupe segment", e))?;
    }
    for f in outboxes.values().flatten() {
        f.sync_data().map_err(|e| io_error("outbox file", e))?;
    }
    Ok(done)
}

/// Deletes every log file in `dir` (after [`replay`] and a sync of sled: everything they held is durable there).
pub fn clear(dir: &Path) -> Result<(), StoreError> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir.display(), e))? {
        let entry = entry.map_err(|e| io_error(dir.display(), e))?;
        std::fs::remove_file(entry.path()).map_err(|e| io_error(entry.path().display(), e))?;
        removed = true;
    }
    if removed {
        durable::sync_dir(dir).map_err(|e| io_error(dir.display(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq_of(db: &sled::Db) -> u64 {
        db.get(keys::REDO_SEQ_KEY).unwrap().map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
    }

    fn put(k: &str, v: &str) -> Batch {
        let mut b = Batch::default();
        b.insert(k.as_bytes(), v.as_bytes());
        b
    }

    /// Logs `n` writes (`k<i>` = `v<i>`) without applying them, as a crash before sled saw them leaves it.
    fn log_only(redo: &Redo, from: u64, n: u64) {
        for i in from..from + n {
            redo.append(&mut put(&format!("k{i}"), &format!("v{i}")), None, None).unwrap();
        }
        redo.sync().unwrap();
    }

    #[test]
    fn replay_applies_what_sled_lacks_in_order_and_skips_what_it_has() {
        let d = tempfile::tempdir().unwrap();
        let (log, segs, outs) = (d.path().join(DIR), d.path().join("dedupe"), d.path().join("outbox"));
        std::fs::create_dir_all(&log).unwrap();
        let db = sled::open(d.path().join("db")).unwrap();
        let redo = Redo::create(&log, 1).unwrap();
        // Records 1-3 reached sled (with their marks); 4-6 only the log. Record 2 rewrote k0, which sled shows.
        for (i, b) in [put("k0", "old"), put("k0", "new"), put("k1", "v1")].into_iter().enumerate() {
            let mut b = b;
            let seq = redo.append(&mut b, None, None).unwrap();
            assert_eq!(seq, i as u64 + 1);
            b.apply_unlogged(&db).unwrap();
        }
        let mut gone = Batch::default();
        gone.remove(b"k1");
        redo.append(&mut gone, None, None).unwrap();
        log_only(&redo, 5, 2);
        drop(redo);
        // Sled changed k0 after record 3 (a write not logged, which must not be undone by records it has).
        db.insert(b"k0", b"unlogged").unwrap();
        let done = replay(&log, &db, &segs, &outs).unwrap();
        assert_eq!(done, Replayed { records: 6, applied: 3, next_seq: 7 });
        assert_eq!(db.get(b"k0").unwrap().unwrap().as_ref(), b"unlogged");
        assert!(db.get(b"k1").unwrap().is_none(), "record 4 removed k1");
        assert_eq!(db.get(b"k5").unwrap().unwrap().as_ref(), b"v5");
        assert_eq!(db.get(b"k6").unwrap().unwrap().as_ref(), b"v6");
        assert_eq!(seq_of(&db), 6);
        // Twice is once.
        assert_eq!(replay(&log, &db, &segs, &outs).unwrap(), Replayed { records: 6, applied: 0, next_seq: 7 });
        clear(&log).unwrap();
        assert_eq!(std::fs::read_dir(&log).unwrap().count(), 0);
        assert_eq!(replay(&log, &db, &segs, &outs).unwrap(), Replayed { records: 0, applied: 0, next_seq: 7 });
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_log() {
        let d = tempfile::tempdir().unwrap();
        let (log, segs, outs) = (d.path().join(DIR), d.path().join("dedupe"), d.path().join("outbox"));
        std::fs::create_dir_all(&log).unwrap();
        let redo = Redo::create(&log, 1).unwrap();
        log_only(&redo, 1, 3);
        let len = redo.active.lock().unwrap().len;
        drop(redo);
        let path = log.join(file_name(1));
        // A torn tail: the last record half written.
        let f = File::options().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let db = sled::open(d.path().join("db")).unwrap();
        assert_eq!(replay(&log, &db, &segs, &outs).unwrap(), Replayed { records: 2, applied: 2, next_seq: 3 });
        assert!(db.get(b"k3").unwrap().is_none());
        // A flipped byte in record 2 (of a fresh db): only record 1 counts.
        let db2 = sled::open(d.path().join("db2")).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let second =
            layout::HEADER_LEN + layout::FRAME_LEN + u32::from_be_bytes(bytes[24..28].try_into().unwrap()) as usize;
        bytes[second + 12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(replay(&log, &db2, &segs, &outs).unwrap(), Replayed { records: 1, applied: 1, next_seq: 2 });
    }

    #[test]
    fn rotation_keeps_the_order_and_a_checkpoint_deletes_only_covered_files() {
        let d = tempfile::tempdir().unwrap();
        let (log, segs, outs) = (d.path().join(DIR), d.path().join("dedupe"), d.path().join("outbox"));
        std::fs::create_dir_all(&log).unwrap();
        let redo = Redo::create(&log, 1).unwrap();
        let big = "x".repeat(ROTATE_BYTES as usize / 3);
        for i in 1..=7u64 {
            redo.append(&mut put(&format!("k{i}"), &big), None, None).unwrap();
        }
        redo.sync().unwrap();
        // A file is closed once past ROTATE_BYTES: records 1-3 in the first, 4-6 in the second, 7 in the active one.
        assert_eq!(std::fs::read_dir(&log).unwrap().count(), 3);
        assert_eq!(redo.release_through(2), 0, "record 3 is not covered yet");
        let db = sled::open(d.path().join("db")).unwrap();
        assert_eq!(replay(&log, &db, &segs, &outs).unwrap(), Replayed { records: 7, applied: 7, next_seq: 8 });
        assert_eq!(redo.release_through(7), 2, "the active file stays");
        // Both are kept as spares, which replay never reads.
        assert_eq!(std::fs::read_dir(&log).unwrap().count(), 3);
        assert!(log.join(format!("{SPARE}-0")).exists() && log.join(format!("{SPARE}-1")).exists());
        // sled holds through 7 (replayed above): the last file alone is a whole log again.
        assert_eq!(replay(&log, &db, &segs, &outs).unwrap(), Replayed { records: 1, applied: 0, next_seq: 8 });
        // The next rotation reuses the last spare kept: its older records (4-6) stay behind the new ones, and
        // replay stops at them. Record 13 is as long as the spare's record 4, so a whole, valid, older record 5
        // follows it.
        for i in 8..=10u64 {
            redo.append(&mut put(&format!("k{i}"), "new"), None, None).unwrap();
        }
        redo.append(&mut put("k11", &big), None, None).unwrap();
        redo.append(&mut put("k12", &big), None, None).unwrap();
        redo.append(&mut put("k4", &big), None, None).unwrap();
        redo.sync().unwrap();
        assert!(!log.join(format!("{SPARE}-1")).exists() && log.join(format!("{SPARE}-0")).exists());
        assert_eq!(std::fs::read_dir(&log).unwrap().count(), 3);
        assert!(std::fs::metadata(log.join(file_name(13))).unwrap().len() >= ROTATE_BYTES);
        assert_eq!(replay(&log, &db, &segs, &outs).unwrap(), Replayed { records: 7, applied: 6, next_seq: 14 });
        // A store that lost what a checkpoint covered is reported, never silently continued.
        let empty = sled::open(d.path().join("empty")).unwrap();
        assert!(matches!(replay(&log, &empty, &segs, &outs), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_checkpoint_keeps_at_most_max_spares_and_rotations_use_them_up_first() {
        let d = tempfile::tempdir().unwrap();
        let redo = Redo::create(d.path(), 1).unwrap();
        let big = "x".repeat(ROTATE_BYTES as usize / 2);
        let files = MAX_SPARES + 2;
        // Two records fill a file, the next one closes it: `files` closed files and the active one.
        for i in 0..2 * files as u64 + 1 {
            redo.append(&mut put(&format!("k{i}"), &big), None, None).unwrap();
        }
        redo.sync().unwrap();
        let spares = || {
            std::fs::read_dir(d.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(SPARE))
                .count()
        };
        assert_eq!(redo.release_through(2 * files as u64), files);
        assert_eq!(spares(), MAX_SPARES, "the rest are deleted");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), MAX_SPARES + 1);
        // Each rotation renames a spare: no file is made until they are used up.
        for i in 0..2 * MAX_SPARES as u64 {
            redo.append(&mut put(&format!("n{i}"), &big), None, None).unwrap();
        }
        assert_eq!(spares(), 0);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), MAX_SPARES + 1);
    }

    #[test]
    fn dedupe_bytes_go_back_to_their_segment_file_if_it_still_exists() {
        let d = tempfile::tempdir().unwrap();
        let (log, segs, outs) = (d.path().join(DIR), d.path().join("dedupe"), d.path().join("outbox"));
        std::fs::create_dir_all(&log).unwrap();
        std::fs::create_dir_all(&segs).unwrap();
        let seg = segs.join(journal::file_name(0));
        std::fs::write(&seg, b"HEADER").unwrap();
        let redo = Redo::create(&log, 1).unwrap();
        redo.append(&mut put("a", "1"), Some((0, 6, b"record-one")), None).unwrap();
        // A segment dropped since: no file, nothing written.
        redo.append(&mut put("b", "2"), Some((43_200_000, 24, b"gone")), None).unwrap();
        redo.sync().unwrap();
        let db = sled::open(d.path().join("db")).unwrap();
        assert_eq!(replay(&log, &db, &segs, &outs).unwrap().applied, 2);
        assert_eq!(std::fs::read(&seg).unwrap(), b"HEADERrecord-one");
        assert!(!segs.join(journal::file_name(43_200_000)).exists());
    }

    #[test]
    fn the_record_number_is_the_last_op_of_its_write() {
        let d = tempfile::tempdir().unwrap();
        let redo = Redo::create(d.path(), 9).unwrap();
        let mut b = put("a", "1");
        b.remove(b"z");
        assert_eq!(redo.append(&mut b, None, None).unwrap(), 9);
        let ops: Vec<_> = b.ops().collect();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[2], (keys::REDO_SEQ_KEY, Some(&9u64.to_be_bytes()[..])));
    }

    #[test]
    fn a_failed_sync_poisons_the_log() {
        let d = tempfile::tempdir().unwrap();
        let redo = Redo::create(d.path(), 1).unwrap();
        redo.poison("fdatasync failed: EIO".into());
        assert!(matches!(redo.append(&mut put("a", "1"), None, None), Err(StoreError::Poisoned(_))));
        assert!(matches!(redo.sync(), Err(StoreError::Poisoned(_))));
    }
}
