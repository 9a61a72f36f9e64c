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
//! 3. the copy thread copies each segment, then applies the catch-up log until what is left is small, flushes the
//!    fresh generation and tells the writer (`Command::RepackCopied`);
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
/// Entries the catch-up log may hold. Past it the copy cannot keep up with ingest, and the repack is given up
/// (the old generation stays live, untouched) rather than let the log take the agent's memory.
pub const LOG_CAP: usize = 1_000_000;

/// One idempotency entry written while the copy ran: its segment's start, key and stored value.
pub type Logged = (UnixMillis, Vec<u8>, Vec<u8>);

/// Entries the writer added to the segments since the copy began, not yet applied to the fresh generation.
pub type CatchUp = Arc<Mutex<Vec<Logged>>>;

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
            std::thread::Builder::new()
                .name("meterd-repack".into())
                .spawn(move || {
                    let copied = copy(&fresh, &data_dir, &trees, &log, &cancel);
                    done();
                    copied
                })
                .map_err(|e| StoreError::Io(format!("could not start the repack thread: {e}")))?
        };
        Ok(SegmentCopy { fresh, path, next, log, cancel, thread: Some(thread) })
    }

    /// Notes an entry the writer just added to the segment starting at `start`; returns the log's length.
    pub fn log_entries<'a>(&self, start: UnixMillis, entries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> usize {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.extend(entries.map(|(k, v)| (start, k.to_vec(), v.to_vec())));
        log.len()
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
    trees: &[(UnixMillis, sled::Tree)],
    log: &CatchUp,
    cancel: &AtomicBool,
) -> Result<u64, StoreError> {
    let cancelled = || StoreError::Io("repack given up".into());
    let mut keys = 0u64;
    lower_priority();
    for (start, tree) in trees {
        let into = fresh.open_tree(segments::tree_name(*start))?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0usize;
        for kv in tree.iter() {
            let (k, v) = kv?;
            batch.insert(k, v);
            keys += 1;
            in_batch += 1;
            if in_batch == PACE_KEYS {
                if cancel.load(Ordering::Relaxed) {
                    return Err(cancelled());
                }
                into.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
                pace(fresh)?;
            }
        }
        into.apply_batch(batch)?;
    }
    wait_while_held(data_dir, cancel);
    // Catch up with what the writer added meanwhile, until a pass finds little left.
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        let mut taken = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
        let n = taken.len();
        while !taken.is_empty() {
            let rest = taken.split_off(taken.len().min(PACE_KEYS));
            keys += apply(fresh, std::mem::replace(&mut taken, rest))?;
            pace(fresh)?;
        }
        if n < HAND_OVER_BELOW {
            break;
        }
    }
    // Most of the copy's bytes reach the disk now, not in the writer's pause.
    fresh.flush()?;
    Ok(keys)
}

/// Keys the copy writes between two flushes of the fresh generation ([`pace`]).
const PACE_KEYS: usize = 10_000;

/// Makes what the copy wrote durable in small steps (~1 MB). Left to pile up, the copy's dirty pages made the
/// next ack `fdatasync` wait for all of them at its final flush (a journalling filesystem commits other files'
/// data with it): calls stalled 2-3.8 s just before the switch at the 10 M history benchmark. (Resting as long
/// as it worked after each step was tried too: the copy then fell behind ingest at that benchmark and was given
/// up at the catch-up log's cap, every time.)
fn pace(fresh: &sled::Db) -> Result<(), StoreError> {
    fresh.flush()?;
    Ok(())
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

/// Inserts logged entries into their segment trees of `into`; returns how many.
pub fn apply(into: &sled::Db, entries: Vec<Logged>) -> Result<u64, StoreError> {
    let n = entries.len() as u64;
    let mut by_segment: std::collections::BTreeMap<UnixMillis, sled::Batch> = Default::default();
    for (start, k, v) in entries {
        by_segment.entry(start).or_default().insert(k, v);
    }
    for (start, batch) in by_segment {
        into.open_tree(segments::tree_name(start))?.apply_batch(batch)?;
    }
    Ok(n)
}
