//! The dedupe window in files of meterd's own: one append-only file per time segment of arrival
//! (`<data_dir>/dedupe/<start>.seg`, layout in [`super::schema::journal`]), dropped whole once past the window.
//!
//! Why not sled trees (store v2 kept one tree per segment): sled holds ~210–230 bytes per short key between
//! repacks, every key costs the writer a tree insert under sled's process-wide lock, and getting the space back
//! takes a repack that copies the whole window. A segment is written once, in arrival order, and read only by key
//! lookups — an append-only file with a checksum per record does exactly that at ~60 bytes per event, and a
//! dropped segment is one `unlink`.
//!
//! **One commit point.** A group's entries are appended as one record and `fdatasync`ed *before* its sled batch
//! (bucket totals, the segment's `g/` count and the journal mark `m/journal`: the record's number and end) is
//! applied. The reply waits for sled's own barrier. So on disk:
//! - sled never holds a group whose record is not durable (the record's barrier came first);
//! - a record may be durable while its sled batch is not (a crash in between): its number is above the mark, so
//!   [`Journal::open`] cuts it off. Its caller was never answered; the group never happened.
//!
//! **Lookups stay exact.** Each segment keeps an index from a 64-bit hash of the key (keyed per process) to the
//! entry's offset; a hit reads the entry and compares the whole key, so a hash collision costs a read, never a
//! wrong answer. Memory: ~16–32 bytes per key inside the window.
//!
//! **Crash states at open**: a torn or unchecksummed tail is cut off (it was never acknowledged); a file without
//! its `g/` record is a segment whose drop, or whose first group, a crash cut short: deleted; a `g/` record whose
//! file is gone is a drop cut short after the unlink: the caller folds its count as the drop would have; a file
//! that ends before the mark, or holds another number of keys than its `g/` record says, is corruption, reported.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::schema::journal as layout;
use super::{StoreError, durable};
use crate::clock::UnixMillis;
use crate::domain::event::StoredEvent;

/// The journal's directory inside the data dir.
pub const DIR: &str = "dedupe";

/// The last record whose group sled holds (`m/journal`, written in that group's sled batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub seq: u64,
    pub start: UnixMillis,
    /// Where the record ends in its file.
    pub end: u64,
}

impl Mark {
    /// `seq`, `start`, `end` as big-endian 8-byte integers, then a CRC32 of those 24 bytes.
    pub fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..16].copy_from_slice(&self.start.to_be_bytes());
        b[16..24].copy_from_slice(&self.end.to_be_bytes());
        let crc = crc32fast::hash(&b[..24]);
        b[24..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    pub fn decode(v: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt("the journal mark (m/journal) is damaged".into());
        if v.len() != 28 || crc32fast::hash(&v[..24]).to_be_bytes() != v[24..] {
            return Err(bad());
        }
        let n = |r: std::ops::Range<usize>| u64::from_be_bytes(v[r].try_into().expect("8 bytes"));
        Ok(Mark { seq: n(0..8), start: n(8..16) as i64, end: n(16..24) })
    }
}

/// The index's keys are already hashes: use them as they are.
#[derive(Default)]
struct AsIs(u64);

impl Hasher for AsIs {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyIndex = HashMap<u64, u64, BuildHasherDefault<AsIs>>;

/// One live segment's file and what is known of it in memory.
pub struct SegmentFile {
    file: File,
    /// Bytes that hold whole, acknowledged-or-applied records; the next record goes here.
    len: u64,
    /// Keys it holds (its `g/` record).
    pub count: u64,
    /// Key hash → entry offset; further entries whose key hashes collide go to `more`.
    index: KeyIndex,
    more: HashMap<u64, Vec<u64>>,
    products: Vec<String>,
    product_ids: HashMap<String, u32, foldhash::fast::RandomState>,
    /// Each record's offset and base time, in file order (an entry's base is its record's).
    records: Vec<(u64, UnixMillis)>,
    last_seq: u64,
}

impl SegmentFile {
    fn new(file: File) -> Self {
        SegmentFile {
            file,
            len: layout::HEADER_LEN as u64,
            count: 0,
            index: KeyIndex::default(),
            more: HashMap::new(),
            products: Vec::new(),
            product_ids: HashMap::default(),
            records: Vec::new(),
            last_seq: 0,
        }
    }

    fn add_key(&mut self, hash: u64, offset: u64) {
        if let Some(prev) = self.index.insert(hash, offset) {
            // Keep the first in the index, the rest beside it (only collisions ever get here).
            self.index.insert(hash, prev);
            self.more.entry(hash).or_default().push(offset);
        }
    }

    fn read_entry(&self, offset: u64, start: UnixMillis) -> Result<(Vec<u8>, StoredEvent), StoreError> {
        let damaged = |what: String| StoreError::Corrupt(format!("dedupe segment {start}: entry at {offset}: {what}"));
        let i = self.records.partition_point(|r| r.0 <= offset);
        let base = self.records.get(i.wrapping_sub(1)).map(|r| r.1).ok_or_else(|| damaged("no record".into()))?;
        let mut want = 256usize;
        loop {
            let n = want.min(self.len.saturating_sub(offset) as usize);
            let mut buf = vec![0u8; n];
            self.file.read_exact_at(&mut buf, offset).map_err(|e| damaged(e.to_string()))?;
            match layout::decode_entry(&buf, base, |id| self.products.get(id as usize).cloned()) {
                Ok(Some((key, e))) => return Ok((key.to_vec(), e)),
                // Keys are at most a few hundred bytes: an entry that needs more is damage.
                Ok(None) if n == want && want < 64 << 10 => want *= 4,
                Ok(None) => return Err(damaged("it runs past the end of the file".into())),
                Err(e) => return Err(damaged(e.to_string())),
            }
        }
    }
}

/// The live segments of the dedupe window.
pub struct Journal {
    dir: PathBuf,
    pub span_ms: i64,
    pub keep_ms: i64,
    hasher: RandomState,
    pub live: BTreeMap<UnixMillis, SegmentFile>,
    /// The last record number written and applied.
    last_seq: u64,
}

/// A record written (not synced: the redo log holds its bytes until a checkpoint syncs the file) but not yet part
/// of the journal in memory: [`Journal::commit`] once its sled batch is applied; dropped otherwise (the next
/// record overwrites it; [`Journal::open`] cuts it off).
pub struct Appended {
    pub start: UnixMillis,
    /// Where the record starts in its segment file, and its bytes.
    pub at: u64,
    pub bytes: Vec<u8>,
    pub mark: Mark,
    /// The segment's key count with this record's.
    pub count: u64,
    base: UnixMillis,
    new_products: Vec<String>,
    keys: Vec<(u64, u64)>,
}

pub fn file_name(start: UnixMillis) -> String {
    format!("{:016x}.seg", (start as u64) ^ (1 << 63))
}

fn start_of(name: &str) -> Option<UnixMillis> {
    let hex = name.strip_suffix(".seg").filter(|h| h.len() == 16)?;
    Some((u64::from_str_radix(hex, 16).ok()? ^ (1 << 63)) as i64)
}

/// What [`Journal::open`] found besides the live segments.
pub struct Opened {
    pub journal: Journal,
    /// Segments with a `g/` record but no file: dropped, but the drop's sled batch did not survive.
    pub missing: Vec<UnixMillis>,
}

impl Journal {
    /// Opens the journal in `dir` for the live segments `counts` (start → its `g/` count), cutting off whatever
    /// follows `mark` and deleting files no `g/` record names.
    pub fn open(
        dir: &Path,
        keep_ms: i64,
        mark: Mark,
        counts: &BTreeMap<UnixMillis, u64>,
    ) -> Result<Opened, StoreError> {
        let io =
            |what: &str, e: std::io::Error| StoreError::Io(format!("dedupe journal {}: {what}: {e}", dir.display()));
        durable::create_dir_all(dir, 0o700).map_err(|e| io("create", e))?;
        let hasher = RandomState::new();
        let mut live = BTreeMap::new();
        let mut removed = false;
        for entry in std::fs::read_dir(dir).map_err(|e| io("list", e))? {
            let entry = entry.map_err(|e| io("list", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match start_of(&name) {
                Some(start) if counts.contains_key(&start) => {
                    let seg = load(&entry.path(), start, mark.seq, &hasher)?;
                    live.insert(start, seg);
                }
                // No `g/` record: a drop or a first group cut short, or a temporary file. Never acknowledged.
                _ => {
                    std::fs::remove_file(entry.path()).map_err(|e| io(&name, e))?;
                    removed = true;
                }
            }
        }
        if removed {
            durable::sync_dir(dir).map_err(|e| io("sync", e))?;
        }
        let missing: Vec<UnixMillis> = counts.keys().filter(|s| !live.contains_key(s)).copied().collect();
        for (start, seg) in &live {
            if seg.count != counts[start] {
                return Err(StoreError::Corrupt(format!(
                    "dedupe segment {} holds {} keys but the store counted {}",
                    dir.join(file_name(*start)).display(),
                    seg.count,
                    counts[start]
                )));
            }
        }
        if mark.seq > 0
            && let Some(seg) = live.get(&mark.start)
            && (seg.len != mark.end || seg.last_seq != mark.seq)
        {
            return Err(StoreError::Corrupt(format!(
                "dedupe segment {} ends at byte {} (record {}) but the store applied record {} ending at byte {}",
                dir.join(file_name(mark.start)).display(),
                seg.len,
                seg.last_seq,
                mark.seq,
                mark.end
            )));
        }
        let journal = Journal {
            dir: dir.to_path_buf(),
            span_ms: super::segments::span_for(keep_ms),
            keep_ms,
            hasher,
            live,
            last_seq: mark.seq,
        };
        Ok(Opened { journal, missing })
    }

    pub fn start_of(&self, at_ms: UnixMillis) -> UnixMillis {
        at_ms.div_euclid(self.span_ms) * self.span_ms
    }

    /// The stored entry of `key`, from whichever live segment holds it (newest first: retries are usually recent).
    pub fn get(&self, key: &str) -> Result<Option<StoredEvent>, StoreError> {
        let h = self.hasher.hash_one(key.as_bytes());
        for (start, seg) in self.live.iter().rev() {
            let Some(first) = seg.index.get(&h) else { continue };
            for off in std::iter::once(first).chain(seg.more.get(&h).into_iter().flatten()) {
                let (found, e) = seg.read_entry(*off, *start)?;
                if found == key.as_bytes() {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }

    /// Segments entirely past the window at `now_ms`.
    pub fn expired(&self, now_ms: UnixMillis) -> Vec<UnixMillis> {
        self.live
            .keys()
            .copied()
            .filter(|s| s.saturating_add(self.span_ms).saturating_add(self.keep_ms) <= now_ms)
            .collect()
    }

    /// Writes `events` as the next record of the segment at `start` (made first if need be, durably), without a
    /// sync: the caller logs [`Appended::bytes`] in the redo log. Nothing in memory changes until [`Self::commit`].
    pub fn write(&mut self, start: UnixMillis, events: &[(String, StoredEvent)]) -> Result<Appended, StoreError> {
        let path = self.dir.join(file_name(start));
        let io = |e: std::io::Error| StoreError::Io(format!("dedupe segment {}: {e}", path.display()));
        if !self.live.contains_key(&start) {
            // A file by this name is no live segment's (a leftover the open or a drop has not deleted yet).
            let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).map_err(io)?;
            file.write_all_at(&layout::encode_header(start), 0).map_err(io)?;
            file.sync_data().map_err(io)?;
            durable::sync_dir(&self.dir).map_err(io)?;
            self.live.insert(start, SegmentFile::new(file));
        }
        let seg = &self.live[&start];
        let seq = self.last_seq + 1;
        let base = events.iter().map(|(_, e)| e.recorded_at_ms).min().unwrap_or(start);
        let mut b = layout::RecordBuilder::new(seq, base, start);
        let mut new_products: Vec<String> = Vec::new();
        for (key, e) in events {
            let id = match seg.product_ids.get(&e.product) {
                Some(id) => *id,
                None => match new_products.iter().position(|p| *p == e.product) {
                    Some(i) => (seg.products.len() + i) as u32,
                    None => {
                        b.new_product(&e.product);
                        new_products.push(e.product.clone());
                        (seg.products.len() + new_products.len() - 1) as u32
                    }
                },
            };
            b.entry(key, e, id);
        }
        let (bytes, entries_at, offsets) = b.finish();
        let at = seg.len;
        seg.file.write_all_at(&bytes, at).map_err(io)?;
        let keys = events
            .iter()
            .zip(offsets)
            .map(|((k, _), off)| (self.hasher.hash_one(k.as_bytes()), at + (entries_at + off) as u64))
            .collect();
        Ok(Appended {
            start,
            at,
            mark: Mark { seq, start, end: at + bytes.len() as u64 },
            count: seg.count + events.len() as u64,
            base,
            new_products,
            keys,
            bytes,
        })
    }

    /// Handles on the live segments' files, for a checkpoint to sync.
    pub fn files(&self) -> std::io::Result<Vec<File>> {
        self.live.values().map(|s| s.file.try_clone()).collect()
    }

    /// Makes a written record part of the journal, once its sled batch is applied.
    pub fn commit(&mut self, a: Appended) {
        let seg = self.live.get_mut(&a.start).expect("written into a live segment");
        seg.records.push((seg.len, a.base));
        for p in a.new_products {
            seg.product_ids.insert(p.clone(), seg.products.len() as u32);
            seg.products.push(p);
        }
        for (h, off) in a.keys {
            seg.add_key(h, off);
        }
        seg.len = a.mark.end;
        seg.count = a.count;
        seg.last_seq = a.mark.seq;
        self.last_seq = a.mark.seq;
    }

    /// Forgets the segment at `start` in memory; returns its file for the caller to delete.
    pub fn remove(&mut self, start: UnixMillis) -> Option<PathBuf> {
        self.live.remove(&start).map(|_| self.dir.join(file_name(start)))
    }

    /// Bytes of the live segments' files.
    pub fn bytes(&self) -> u64 {
        self.live.values().map(|s| s.len).sum()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every entry of the live segment at `start`, in no particular order (reads each one: for migrations and
    /// tests, never the write path).
    pub fn entries(&self, start: UnixMillis) -> Result<Vec<(String, StoredEvent)>, StoreError> {
        let Some(seg) = self.live.get(&start) else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(seg.count as usize);
        for off in seg.index.values().chain(seg.more.values().flatten()) {
            let (key, e) = seg.read_entry(*off, start)?;
            let key = String::from_utf8(key)
                .map_err(|_| StoreError::Corrupt(format!("dedupe segment {start}: a key is not UTF-8")))?;
            out.push((key, e));
        }
        Ok(out)
    }
}

/// Reads a segment file: checks its header and every record, indexes the entries of records up to `through`,
/// and cuts the file after the last of them (a torn tail, or records whose sled batch never landed).
fn load(path: &Path, start: UnixMillis, through: u64, hasher: &RandomState) -> Result<SegmentFile, StoreError> {
    let damaged = |what: String| StoreError::Corrupt(format!("dedupe segment {}: {what}", path.display()));
    let io = |e: std::io::Error| StoreError::Io(format!("dedupe segment {}: {e}", path.display()));
    let file = File::options().read(true).write(true).open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
    let mut header = [0u8; layout::HEADER_LEN];
    let mut seg = SegmentFile::new(file.try_clone().map_err(io)?);
    let header_ok = reader.read_exact(&mut header).is_ok();
    if !header_ok {
        // Created but its header never made it: no record can follow.
        seg.len = 0;
    } else {
        let found = layout::decode_header(&header).map_err(|e| damaged(format!("header: {e}")))?;
        if found != start {
            return Err(damaged(format!("its header names segment {found}")));
        }
        let mut frame = [0u8; layout::FRAME_LEN];
        let mut buf = Vec::new();
        loop {
            if reader.read_exact(&mut frame).is_err() {
                break;
            }
            let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
            if !(9..=layout::MAX_BODY).contains(&len) || seg.len + (layout::FRAME_LEN + len) as u64 > size {
                break;
            }
            buf.clear();
            buf.extend_from_slice(&frame);
            buf.resize(layout::FRAME_LEN + len, 0);
            if reader.read_exact(&mut buf[layout::FRAME_LEN..]).is_err() {
                break;
            }
            let Ok(Some((body, _))) = layout::split_record(&buf) else { break };
            let rb = layout::read_body(body, start).map_err(|e| damaged(format!("record at {}: {e}", seg.len)))?;
            if rb.seq > through {
                break;
            }
            let at = seg.len;
            seg.records.push((at, rb.base));
            for p in rb.new_products {
                seg.product_ids.insert(p.clone(), seg.products.len() as u32);
                seg.products.push(p);
            }
            for (key, off) in &rb.entries {
                seg.add_key(hasher.hash_one(key), at + (layout::FRAME_LEN + off) as u64);
            }
            seg.count += rb.entries.len() as u64;
            seg.last_seq = seg.last_seq.max(rb.seq);
            seg.len = at + buf.len() as u64;
        }
    }
    drop(reader);
    if seg.len < size {
        if seg.len == 0 {
            file.write_all_at(&layout::encode_header(start), 0).map_err(io)?;
            seg.len = layout::HEADER_LEN as u64;
        }
        file.set_len(seg.len).map_err(io)?;
        file.sync_data().map_err(io)?;
        tracing::info!(segment = %path.display(), cut = size - seg.len,
            "cut off the end of a dedupe segment that was never acknowledged");
    }
    Ok(seg)
}

/// Deletes dropped segments' files off the writer.
pub fn delete_in_background(dir: PathBuf, files: Vec<PathBuf>) -> Option<std::thread::JoinHandle<()>> {
    if files.is_empty() {
        return None;
    }
    let spawned = std::thread::Builder::new().name("meterd-forget".into()).spawn(move || {
        for f in &files {
            match std::fs::remove_file(f) {
                Ok(()) => tracing::info!(segment = %f.display(), "deleted a dedupe segment past the dedupe window"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(segment = %f.display(), error = %e, "could not delete a dropped dedupe segment; the next start will"),
            }
        }
        let _ = durable::sync_dir(&dir);
    });
    spawned.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::ContentDigest;
    use crate::domain::quantity::Micros;

    const KEEP: i64 = 4 * crate::clock::HOUR_MS;

    fn ev(i: u64) -> (String, StoredEvent) {
        (
            format!("key-{i}"),
            StoredEvent {
                digest: ContentDigest::V2([i as u8; 16]),
                late: false,
                product: format!("prod-{}", i % 3),
                event_time_ms: 1_000 + i as i64,
                hour_ms: 0,
                recorded_at_ms: 2_000 + i as i64,
                quantity: Micros(u128::from(i)),
            },
        )
    }

    fn counts(j: &Journal) -> BTreeMap<UnixMillis, u64> {
        j.live.iter().map(|(s, seg)| (*s, seg.count)).collect()
    }

    #[test]
    fn entries_written_are_found_exactly_after_a_reopen_and_others_are_not() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), KEEP, Mark::default(), &BTreeMap::new()).unwrap().journal;
        let mut mark = Mark::default();
        for g in 0..3u64 {
            let group: Vec<_> = (g * 10..g * 10 + 10).map(ev).collect();
            let a = j.write(0, &group).unwrap();
            mark = a.mark;
            j.commit(a);
        }
        assert_eq!(j.get("key-17").unwrap(), Some(ev(17).1));
        assert_eq!(j.get("key-30").unwrap(), None);
        let c = counts(&j);
        drop(j);
        let j = Journal::open(d.path(), KEEP, mark, &c).unwrap().journal;
        for i in 0..30 {
            assert_eq!(j.get(&format!("key-{i}")).unwrap(), Some(ev(i).1), "key-{i}");
        }
        assert_eq!(j.get("key-30").unwrap(), None);
    }

    #[test]
    fn a_record_past_the_mark_and_a_torn_tail_are_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), KEEP, Mark::default(), &BTreeMap::new()).unwrap().journal;
        let a = j.write(0, &[ev(1)]).unwrap();
        let mark = a.mark;
        j.commit(a);
        let c = counts(&j);
        // Written and fsynced, but its sled batch never landed (the caller was never answered).
        let b = j.write(0, &[ev(2)]).unwrap();
        drop((b, j));
        let path = d.path().join(file_name(0));
        let f = File::options().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &f, &[0, 0, 0, 40, 1, 2, 3]).unwrap();
        let j = Journal::open(d.path(), KEEP, mark, &c).unwrap().journal;
        assert_eq!(j.get("key-1").unwrap(), Some(ev(1).1));
        assert_eq!(j.get("key-2").unwrap(), None, "a record past the mark never happened");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), mark.end);
    }

    #[test]
    fn a_record_never_committed_is_overwritten_by_the_next_and_never_found() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), KEEP, Mark::default(), &BTreeMap::new()).unwrap().journal;
        // Written and fsynced, then its sled batch failed: the writer drops it without a commit.
        let failed = j.write(0, &[ev(1), ev(2), ev(3)]).unwrap();
        assert_eq!(failed.mark.seq, 1);
        drop(failed);
        assert_eq!(j.get("key-1").unwrap(), None);
        let a = j.write(0, &[ev(4)]).unwrap();
        assert_eq!(a.mark.seq, 1, "the next record takes its number and its place");
        let mark = a.mark;
        j.commit(a);
        let c = counts(&j);
        drop(j);
        let j = Journal::open(d.path(), KEEP, mark, &c).unwrap().journal;
        assert_eq!(j.get("key-4").unwrap(), Some(ev(4).1));
        for k in ["key-1", "key-2", "key-3"] {
            assert_eq!(j.get(k).unwrap(), None, "{k} was never applied");
        }
        assert_eq!(std::fs::metadata(d.path().join(file_name(0))).unwrap().len(), mark.end);
    }

    #[test]
    fn a_segment_that_lost_acknowledged_records_is_reported_not_cut() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), KEEP, Mark::default(), &BTreeMap::new()).unwrap().journal;
        let a = j.write(0, &[ev(1), ev(2)]).unwrap();
        let mark = a.mark;
        j.commit(a);
        let c = counts(&j);
        drop(j);
        let path = d.path().join(file_name(0));
        let f = File::options().write(true).open(&path).unwrap();
        f.set_len(mark.end - 3).unwrap();
        assert!(matches!(Journal::open(d.path(), KEEP, mark, &c), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn files_without_a_count_are_deleted_and_counts_without_a_file_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), KEEP, Mark::default(), &BTreeMap::new()).unwrap().journal;
        let a = j.write(0, &[ev(1)]).unwrap();
        j.commit(a);
        drop(j);
        let hour = crate::clock::HOUR_MS;
        let o = Journal::open(d.path(), KEEP, Mark::default(), &BTreeMap::from([(hour, 5)])).unwrap();
        assert!(o.journal.live.is_empty());
        assert_eq!(o.missing, vec![hour]);
        assert!(!d.path().join(file_name(0)).exists());
    }

    #[test]
    fn colliding_key_hashes_are_told_apart_by_the_key() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), KEEP, Mark::default(), &BTreeMap::new()).unwrap().journal;
        let a = j.write(0, &[ev(1), ev(2)]).unwrap();
        j.commit(a);
        // Force both keys under one hash, as a collision would.
        let seg = j.live.get_mut(&0).unwrap();
        let offs: Vec<u64> = seg.index.values().copied().collect();
        seg.index.clear();
        let h = j.hasher.hash_one(b"key-2".as_slice());
        let seg = j.live.get_mut(&0).unwrap();
        for off in offs {
            seg.add_key(h, off);
        }
        assert_eq!(j.get("key-2").unwrap(), Some(ev(2).1));
        assert_eq!(j.get("key-3").unwrap(), None);
    }

    #[test]
    fn the_mark_round_trips_and_refuses_damage() {
        let m = Mark { seq: 9, start: -3_600_000, end: 1234 };
        assert_eq!(Mark::decode(&m.encode()).unwrap(), m);
        let mut b = m.encode();
        b[3] ^= 1;
        assert!(Mark::decode(&b).is_err());
    }
}
