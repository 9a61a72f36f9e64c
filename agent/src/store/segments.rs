//! The dedupe window: idempotency keys kept in time segments of their arrival, each its own sled tree, and a
//! segment entirely past the window dropped whole (`Db::drop_tree`: no per-key deletes, no repack).
//!
//! A segment holds the keys that arrived in `[start, start + span)` (a group goes to the segment of its newest
//! arrival, so a key may only be remembered longer, never shorter). It is dropped once `start + span + keep ≤ now`,
//! `keep` being `storage.dedupe_window` plus the future-skew allowance: a key that arrived at `r` is still there at
//! `r + keep`. A lookup asks every live segment, newest first: exact, no false positives.
//!
//! Each segment has an index record `g/<start>` in the default tree holding how many keys it received, written
//! in the same sled transaction as its keys and the bucket totals; `m/events_stored` counts every event ever
//! stored the same way, so start-up reads two small records instead of counting keys.
//!
//! Dropping a segment is two steps: one default-tree batch removes `g/<start>` and folds its count into
//! `m/compacted` (the totals retention keeps), then the tree itself is dropped (off the writer thread: freeing its
//! pages takes time in proportion to its size). A tree without its `g/` record is therefore one whose drop was cut
//! short, and `open` finishes it: never counted twice, never consulted again.

use std::collections::BTreeMap;

use super::{StoreError, keys, schema};
use crate::clock::{HOUR_MS, UnixMillis};
use crate::domain::event::StoredEvent;

/// Segment tree names: `d/` + the start (sign-flipped big-endian ms, so names sort in time order).
const TREE_PREFIX: &[u8] = b"d/";

/// The span of one segment for a window of `keep_ms`: about a quarter of it (so a lookup asks at most ~6 trees),
/// whole hours, between 1 h and 1 day.
pub fn span_for(keep_ms: i64) -> i64 {
    ((keep_ms / 4) / HOUR_MS).clamp(1, 24) * HOUR_MS
}

pub fn tree_name(start_ms: UnixMillis) -> Vec<u8> {
    [TREE_PREFIX, &keys::hour_bytes(start_ms)[..]].concat()
}

pub fn start_of_tree(name: &[u8]) -> Option<UnixMillis> {
    let b: [u8; 8] = name.strip_prefix(TREE_PREFIX)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

pub fn index_key(start_ms: UnixMillis) -> Vec<u8> {
    [keys::SEGMENT_INDEX_PREFIX, &keys::hour_bytes(start_ms)[..]].concat()
}

pub fn encode_count(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn decode_count(what: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(
        v.try_into()
            .map_err(|_| StoreError::Corrupt(format!("{} is not an 8-byte count", String::from_utf8_lossy(what))))?,
    ))
}

/// One live segment.
pub struct Segment {
    pub tree: sled::Tree,
    /// Keys it received (its `g/` record).
    pub count: u64,
}

/// The live segments, by start.
pub struct Segments {
    pub span_ms: i64,
    pub keep_ms: i64,
    pub live: BTreeMap<UnixMillis, Segment>,
}

impl Segments {
    /// Loads the live segments (their `g/` records and trees: no key is read) and returns the trees whose drop was
    /// cut short, for the caller to finish.
    pub fn load(db: &sled::Db, keep_ms: i64) -> Result<(Self, Vec<Vec<u8>>), StoreError> {
        let mut live = BTreeMap::new();
        let mut orphans = Vec::new();
        for name in db.tree_names() {
            let Some(start) = start_of_tree(&name) else { continue };
            match db.get(index_key(start))? {
                Some(v) => {
                    let count = decode_count(&index_key(start), &v)?;
                    live.insert(start, Segment { tree: db.open_tree(&name)?, count });
                }
                None => orphans.push(name.to_vec()),
            }
        }
        Ok((Segments { span_ms: span_for(keep_ms), keep_ms, live }, orphans))
    }

    pub fn start_of(&self, at_ms: UnixMillis) -> UnixMillis {
        at_ms.div_euclid(self.span_ms) * self.span_ms
    }

    /// The stored entry of `key`, from whichever live segment holds it (newest first: retries are usually recent).
    pub fn get(&self, key: &str) -> Result<Option<StoredEvent>, StoreError> {
        lookup(self.live.iter().rev().map(|(s, seg)| (*s, &seg.tree)), key)
    }

    /// Segments entirely past the window at `now_ms`.
    pub fn expired(&self, now_ms: UnixMillis) -> Vec<UnixMillis> {
        self.live
            .keys()
            .copied()
            .filter(|s| s.saturating_add(self.span_ms).saturating_add(self.keep_ms) <= now_ms)
            .collect()
    }
}

/// Looks `key` up in `trees` (start, tree), in the order given.
pub fn lookup<'a>(
    trees: impl Iterator<Item = (UnixMillis, &'a sled::Tree)>,
    key: &str,
) -> Result<Option<StoredEvent>, StoreError> {
    for (start, tree) in trees {
        let found = match tree.get(key.as_bytes()) {
            // Dropped since the caller listed it (a reader racing the drop): forgotten, as it should be.
            Err(sled::Error::CollectionNotFound(_)) => continue,
            other => other?,
        };
        if let Some(v) = found {
            return schema::decode_entry(&v, start)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("idempotency entry {key:?} (segment {start}): {e}")));
        }
    }
    Ok(None)
}

/// The stored entry of `key` in `db`, for readers off the writer thread: asks every segment tree that has its
/// `g/` record (a segment being dropped is already forgotten).
pub fn read(db: &sled::Db, key: &str) -> Result<Option<StoredEvent>, StoreError> {
    let mut trees = Vec::new();
    for name in db.tree_names().into_iter().rev() {
        let Some(start) = start_of_tree(&name) else { continue };
        // Only live segments: opening a dropped tree would make it anew.
        if db.contains_key(index_key(start))? {
            trees.push((start, db.open_tree(&name)?));
        }
    }
    lookup(trees.iter().map(|(s, t)| (*s, t)), key)
}

/// Every segment tree's name, live or not.
pub fn tree_names(db: &sled::Db) -> Vec<sled::IVec> {
    db.tree_names().into_iter().filter(|n| start_of_tree(n).is_some()).collect()
}

/// Entries read from each segment to estimate its bytes (see [`live_bytes`]).
const SAMPLE_ENTRIES: usize = 256;

/// Bytes of keys and values in the live segments (those with their `g/` record), for the hourly repack check off
/// the writer: each segment's exact key count (its `g/` record) times the mean size of its first
/// [`SAMPLE_ENTRIES`] entries, so the check reads a few hundred entries per segment instead of every key in the
/// window (a full read competed with ingest for the CPU and sled's locks every hour). A segment dropped meanwhile
/// counts as empty, and a tree already dropped is not opened (that would make it anew).
pub fn live_bytes(db: &sled::Db) -> Result<u64, StoreError> {
    let mut total = 0u64;
    for name in tree_names(db) {
        let Some(start) = start_of_tree(&name) else { continue };
        let Some(v) = db.get(index_key(start))? else { continue };
        let count = decode_count(&index_key(start), &v)?;
        let tree = db.open_tree(&name)?;
        let (mut sampled, mut bytes) = (0u64, 0u64);
        for kv in tree.iter().take(SAMPLE_ENTRIES) {
            match kv {
                Ok((k, v)) => {
                    sampled += 1;
                    bytes += (k.len() + v.len()) as u64;
                }
                Err(sled::Error::CollectionNotFound(_)) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if sampled > 0 {
            total += (bytes as u128 * u128::from(count.max(sampled)) / u128::from(sampled)) as u64;
        }
    }
    Ok(total)
}

/// Every live segment's key count (its `g/` record), by start: a scan of the small `g/` family only.
pub fn counts(db: &sled::Db) -> Result<BTreeMap<UnixMillis, u64>, StoreError> {
    let mut out = BTreeMap::new();
    for kv in db.scan_prefix(keys::SEGMENT_INDEX_PREFIX) {
        let (k, v) = kv?;
        let b: [u8; 8] = k[keys::SEGMENT_INDEX_PREFIX.len()..].try_into().map_err(|_| {
            StoreError::Corrupt(format!("segment index key {:?} is malformed", String::from_utf8_lossy(&k)))
        })?;
        out.insert((u64::from_be_bytes(b) ^ (1 << 63)) as i64, decode_count(&k, &v)?);
    }
    Ok(out)
}

/// The events-ever-stored counter (`m/events_stored`).
pub fn events_stored(db: &sled::Db) -> Result<u64, StoreError> {
    match db.get(keys::EVENTS_STORED_KEY)? {
        Some(v) => decode_count(keys::EVENTS_STORED_KEY, &v),
        None => Ok(0),
    }
}

/// Frees dropped trees' pages on a thread of its own, so the writer never waits for it. A crash midway leaves a
/// tree without its `g/` record, which the next `open` drops again.
pub fn drop_in_background(db: sled::Db, names: Vec<Vec<u8>>) -> Option<std::thread::JoinHandle<()>> {
    if names.is_empty() {
        return None;
    }
    let spawned = std::thread::Builder::new().name("meterd-forget".into()).spawn(move || {
        for name in names {
            let started = std::time::Instant::now();
            match db.drop_tree(&name) {
                Ok(_) => tracing::info!(start = ?start_of_tree(&name),
                    millis = started.elapsed().as_millis() as u64, "dropped an idempotency segment past the dedupe window"),
                Err(e) => tracing::warn!(error = %e, "could not drop an idempotency segment; the next start will"),
            }
        }
    });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "could not start the thread that drops old idempotency segments; the next start will");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_whole_hours_about_a_quarter_of_the_window() {
        assert_eq!(span_for(48 * HOUR_MS + 300_000), 12 * HOUR_MS);
        assert_eq!(span_for(HOUR_MS), HOUR_MS);
        assert_eq!(span_for(45 * 24 * HOUR_MS), 24 * HOUR_MS);
    }

    #[test]
    fn live_bytes_scales_a_sample_of_each_segment_by_its_count_and_skips_dropped_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        // Uniform entries (8-byte key, 20-byte value): the estimate is exact, past the sample and below it.
        for (start, n) in [(0, 1_000u64), (12 * HOUR_MS, 10), (24 * HOUR_MS, 500)] {
            let tree = db.open_tree(tree_name(start)).unwrap();
            for i in 0..n {
                tree.insert(format!("key{i:05}"), &[7u8; 20][..]).unwrap();
            }
            if start != 24 * HOUR_MS {
                db.insert(index_key(start), &encode_count(n)[..]).unwrap();
            }
        }
        // The third has no `g/` record (a drop cut short): not counted.
        assert_eq!(live_bytes(&db).unwrap(), (1_000 + 10) * 28);
    }

    #[test]
    fn tree_names_round_trip_and_sort_in_time_order() {
        for s in [-7 * HOUR_MS, 0, 1_764_460_800_000] {
            assert_eq!(start_of_tree(&tree_name(s)), Some(s));
        }
        assert!(tree_name(-HOUR_MS) < tree_name(0) && tree_name(0) < tree_name(HOUR_MS));
        assert_eq!(start_of_tree(b"__sled__default"), None);
    }
}
