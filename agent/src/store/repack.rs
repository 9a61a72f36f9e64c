//! The part of a repack that runs beside the writer: copying the dedupe segments into the next generation.
//!
//! A repack copies every live key into a fresh sled generation (see [`super::generation`]). Most of those keys
//! are the dedupe window's idempotency entries (millions of them at a busy product), and copying them with the
//! writer stopped stalled every caller for seconds (about 0.8 s per 100,000 keys). But an entry is written once
//! and never changed, and a segment is only ever dropped whole, so the segments can be copied while the writer
//! goes on:
//!
//! 1. the writer opens the fresh generation and starts a [`SegmentCopy`] over the segment trees live then;
//! 2. while it runs, every entry the writer adds to any segment is also appended to a catch-up log, and no
//!    segment is dropped (a drop waits for the switch: a key is only ever kept longer, never shorter);
//! 3. the copy thread copies each segment, then applies the catch-up log until what is left is small, and tells
//!    the writer (`Command::RepackCopied`); it writes small batches and syncs them without sled, because sled locks
//!    all of its instances at once ([`pace`]);
//! 4. the writer stops only for the rest: the last of the log, the default tree (buckets, records, counters —
//!    what the job needs now, not the window), the fsyncs and the switch of `CURRENT`.
//!
//! Inserting an entry twice (copied, then applied from the log) writes the same bytes: the order does not
//! matter. A crash at any point leaves either the old generation live (the fresh one is deleted at open) or the
//! new one complete, exactly as before.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{StoreError, segments};
use crate::clock::UnixMillis;

/// Keys per atomic batch while the writer copies the default tree into the new generation.
pub const BATCH_KEYS: usize = 10_000;
/// The copy thread hands over once a pass over the catch-up log found fewer entries than this: what is left
/// for the writer to apply with writes stopped is a few milliseconds' worth.
const HAND_OVER_BELOW: usize = 2_000;
/// Bytes the catch-up log may hold (~1.5 M entries of 20-byte keys). Past it the copy cannot keep up with ingest,
/// and the repack is given up (the old generation stays live, untouched) rather than let the log take the
/// agent's memory.
pub const LOG_CAP_BYTES: usize = 128 << 20;

/// Entries the writer added to the segments since the copy began, not yet applied to the fresh generation:
/// packed into one buffer (segment start `i64`, key length `u32`, value length `u32`, key, value; native endian,
/// never stored). One buffer, not an allocation per entry: the copy thread freeing ~450,000 small allocations the
/// writer had made (glibc frees each into its owner's arena, under that arena's lock) slowed the writer's own
/// allocations and made its groups take 450-590 ms during the catch-up at the 10 M history benchmark.
#[derive(Default)]
pub struct Log {
    bytes: Vec<u8>,
    entries: usize,
}

impl Log {
    fn push(&mut self, start: UnixMillis, key: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(&start.to_ne_bytes());
        self.bytes.extend_from_slice(&(key.len() as u32).to_ne_bytes());
        self.bytes.extend_from_slice(&(value.len() as u32).to_ne_bytes());
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.entries += 1;
    }

    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    fn iter(&self) -> impl Iterator<Item = (UnixMillis, &[u8], &[u8])> {
        let mut at = 0;
        std::iter::from_fn(move || {
            let b = &self.bytes;
            if at >= b.len() {
                return None;
            }
            let start = i64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"));
            let klen = u32::from_ne_bytes(b[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
            let vlen = u32::from_ne_bytes(b[at + 12..at + 16].try_into().expect("4 bytes")) as usize;
            let k = &b[at + 16..at + 16 + klen];
            let v = &b[at + 16 + klen..at + 16 + klen + vlen];
            at += 16 + klen + vlen;
            Some((start, k, v))
        })
    }
}

/// The catch-up log, shared by the writer (appends) and the copy thread (takes it whole).
pub type CatchUp = Arc<Mutex<Log>>;

/// A segment copy under way (see the module docs).
pub struct SegmentCopy {
    pub fresh: sled::Db,
    /// The fresh generation's directory and name.
    pub path: PathBuf,
    pub next: String,
    pub log: CatchUp,
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<u64, StoreError>>>,
}

impl SegmentCopy {
    /// Starts copying `trees` (the live segments: start, tree in the old generation) into `fresh`; `done` runs
    /// on the copy thread once it has finished (or failed), to wake the writer.
    pub fn start(
        fresh: sled::Db,
        path: PathBuf,
        next: String,
        trees: Vec<(UnixMillis, sled::Tree)>,
        done: impl FnOnce() + Send + 'static,
    ) -> Result<Self, StoreError> {
        let log: CatchUp = Arc::default();
        let cancel = Arc::new(AtomicBool::new(false));
        let thread = {
            let (fresh, log, cancel) = (fresh.clone(), log.clone(), cancel.clone());
            let data_dir = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
            let name = next.clone();
            std::thread::Builder::new()
                .name("meterd-repack".into())
                .spawn(move || {
                    let copied = copy(&fresh, &data_dir, &name, &trees, &log, &cancel);
                    done();
                    copied
                })
                .map_err(|e| StoreError::Io(format!("could not start the repack thread: {e}")))?
        };
        Ok(SegmentCopy { fresh, path, next, log, cancel, thread: Some(thread) })
    }

    /// Notes the entries the writer just added to the segment starting at `start`; returns the log's bytes.
    pub fn log_entries<'a>(&self, start: UnixMillis, entries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> usize {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in entries {
            log.push(start, k, v);
        }
        log.bytes()
    }

    /// Takes what the log holds (the copy thread, or the writer at the switch).
    pub fn take_log(&self) -> Log {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits for the copy thread; returns the keys it wrote.
    pub fn join(&mut self) -> Result<u64, StoreError> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| StoreError::Io("the repack thread panicked".into()))?,
            None => Ok(0),
        }
    }

    /// Stops the copy thread and deletes the fresh generation (the old one stays live, untouched). The copy
    /// stops within one batch; deleting a copy of the window (~150 MB at the 10 M benchmark: 1.5 s of writes
    /// waiting) happens on a thread of its own, and a start deletes it anyway if that thread never finishes.
    pub fn abandon(mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        let _ = self.join();
        drop(self.fresh);
        // Renamed first, so the next repack can reuse the name while this copy is being deleted.
        let path = match self.path.parent().map(|dir| super::generation::set_aside(dir, &self.next)) {
            Some(Ok(aside)) => aside,
            _ => self.path,
        };
        let spawned = std::thread::Builder::new().name("meterd-repack-rm".into()).spawn({
            let path = path.clone();
            move || drop(std::fs::remove_dir_all(path))
        });
        if spawned.is_err() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Data dirs whose repacks wait between copying the segments and catching up, and those waiting there now: a
/// test holds a copy there to write while it runs ([`hold_copies`]). Empty, one lock per repack, otherwise.
static HELD: Mutex<(Vec<PathBuf>, Vec<PathBuf>)> = Mutex::new((Vec::new(), Vec::new()));

/// Tests: makes repacks in `data_dir` wait after copying the dedupe segments (`true`) or lets them go on.
#[doc(hidden)]
pub fn hold_copies(data_dir: &std::path::Path, hold: bool) {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.0.retain(|d| d != data_dir);
    if hold {
        held.0.push(data_dir.to_path_buf());
    }
}

/// Tests: whether a repack in `data_dir` is waiting where [`hold_copies`] holds it.
#[doc(hidden)]
pub fn copy_is_held(data_dir: &std::path::Path) -> bool {
    HELD.lock().unwrap_or_else(|e| e.into_inner()).1.iter().any(|d| d == data_dir)
}

fn wait_while_held(data_dir: &std::path::Path, cancel: &AtomicBool) {
    loop {
        {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            let holding = held.0.iter().any(|d| d == data_dir);
            held.1.retain(|d| d != data_dir);
            if !holding || cancel.load(Ordering::Relaxed) {
                return;
            }
            held.1.push(data_dir.to_path_buf());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn copy(
    fresh: &sled::Db,
    data_dir: &std::path::Path,
    fresh_name: &str,
    trees: &[(UnixMillis, sled::Tree)],
    log: &CatchUp,
    cancel: &AtomicBool,
) -> Result<u64, StoreError> {
    let cancelled = || StoreError::Io("repack given up".into());
    let mut keys = 0u64;
    lower_priority();
    // sled's log, through a descriptor of our own: see [`pace`].
    let log_file = std::fs::File::open(data_dir.join(fresh_name).join("db"))
        .map_err(|e| StoreError::Io(format!("repack: open the new generation's log: {e}")))?;
    for (start, tree) in trees {
        let into = fresh.open_tree(segments::tree_name(*start))?;
        let mut batch = sled::Batch::default();
        for kv in tree.iter() {
            let (k, v) = kv?;
            batch.insert(k, v);
            keys += 1;
            if keys.is_multiple_of(COPY_BATCH_KEYS as u64) {
                into.apply_batch(std::mem::take(&mut batch))?;
            }
            if keys.is_multiple_of(PACE_KEYS as u64) {
                if cancel.load(Ordering::Relaxed) {
                    return Err(cancelled());
                }
                pace(&log_file)?;
            }
        }
        into.apply_batch(batch)?;
    }
    tracing::debug!(keys, "repack: the segments are copied; catching up with what was written meanwhile");
    wait_while_held(data_dir, cancel);
    // Catch up with what the writer added meanwhile, until a pass finds little left.
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        let taken = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
        let n = taken.entries();
        // The catch-up only writes (the segment copy reads between its batches), and at full speed it slowed the
        // writer's groups to 0.7-0.8 s at the 10 M history benchmark: here it rests as long as it worked.
        let mut worked = std::time::Instant::now();
        keys += apply(fresh, &taken, || {
            pace(&log_file)?;
            std::thread::sleep(worked.elapsed());
            worked = std::time::Instant::now();
            Ok(())
        })?;
        tracing::debug!(entries = n, "repack: caught up with a pass of the catch-up log");
        if n < HAND_OVER_BELOW {
            break;
        }
    }
    // Most of the copy's bytes reach the disk now, not in the writer's pause.
    fresh.flush()?;
    Ok(keys)
}

/// Keys per batch the copy writes, and between two syncs of what it wrote ([`pace`]).
const COPY_BATCH_KEYS: usize = 1_000;
const PACE_KEYS: usize = 10_000;

/// Starts the disk on what the copy wrote so far (~1 MB), without sled. Why, and why the copy writes small
/// batches: sled 0.34 guards every tree of every `Db` in the process with one global reader-writer lock
/// (`concurrency_control`). A batch or transaction takes it exclusively for its whole length; a flush takes it
/// shared for its whole write and `sync_file_range`, and single reads take it shared. So the copy's first form
/// (batches of 10,000 and one flush at the end) stalled the writer's reads with every batch and its transactions
/// for the whole final flush: calls stalled 2-3.8 s just before the switch at the 10 M history benchmark.
/// Flushing every 2,000 keys through sled made it worse (the writer's transactions waited for each of them), and
/// single inserts instead of batches took 2.7x the disk (sled logs each insert apart). So: batches of 1,000
/// (a few ms of exclusive lock each), the fresh generation opened without sled's 500 ms background flush, and
/// an `fdatasync` of its log through a descriptor of our own (sled's own writes of its full buffers reach the
/// file without the lock), so that the final `flush` has little left to write while it holds the lock.
fn pace(log_file: &std::fs::File) -> Result<(), StoreError> {
    log_file.sync_data().map_err(|e| StoreError::Io(format!("repack: sync the new generation's log: {e}")))
}

/// Lowers the calling thread's CPU priority (nice +5): on a busy host the copy takes what ingest leaves. Linux
/// applies nice per thread. Best effort: without it the copy only competes harder.
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; they only affect this thread's scheduling.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 5);
    }
}

/// Inserts logged entries into their segment trees of `into` in batches of [`COPY_BATCH_KEYS`], with `between`
/// after every [`PACE_KEYS`]; returns how many.
pub fn apply(
    into: &sled::Db,
    log: &Log,
    mut between: impl FnMut() -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let mut entries = log.iter().peekable();
    let mut since = 0;
    while entries.peek().is_some() {
        let mut by_segment: std::collections::BTreeMap<UnixMillis, sled::Batch> = Default::default();
        for (start, k, v) in entries.by_ref().take(COPY_BATCH_KEYS) {
            by_segment.entry(start).or_default().insert(k, v);
        }
        for (start, batch) in by_segment {
            into.open_tree(segments::tree_name(start))?.apply_batch(batch)?;
        }
        since += COPY_BATCH_KEYS;
        if since >= PACE_KEYS {
            between()?;
            since = 0;
        }
    }
    Ok(log.entries() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catch_up_log_gives_back_every_entry_in_order_byte_for_byte() {
        let mut log = Log::default();
        let entries: Vec<(UnixMillis, Vec<u8>, Vec<u8>)> = (0..300)
            .map(|i: i64| {
                (i * 43_200_000 - 7, vec![i as u8; (i % 41) as usize], vec![(i * 3) as u8; (i % 97) as usize])
            })
            .collect();
        for (s, k, v) in &entries {
            log.push(*s, k, v);
        }
        assert_eq!(log.entries(), 300);
        let back: Vec<_> = log.iter().map(|(s, k, v)| (s, k.to_vec(), v.to_vec())).collect();
        assert_eq!(back, entries);
        assert_eq!(Log::default().iter().count(), 0);
    }
}
