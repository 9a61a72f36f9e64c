//! The dedupe window's bookkeeping in sled: each segment's `g/<start>` record (how many keys it holds; its presence
//! means the segment is live) and `m/events_stored` (every event ever stored), written in the same sled batch as a
//! group's bucket totals, so start-up reads a few small records instead of counting keys. The keys themselves are
//! in the journal's files (`super::journal`, store v4).
//!
//! Segment spans, and the sled trees `d/<start>` that held the keys in store v2–v3: read by the migration to v4
//! and dropped once it is done (off the writer thread: freeing a tree's pages takes time in proportion to its size).

use std::collections::BTreeMap;

use super::{StoreError, keys};
use crate::clock::{HOUR_MS, UnixMillis};

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

/// Every segment tree's name, live or not.
pub fn tree_names(db: &sled::Db) -> Vec<sled::IVec> {
    db.tree_names().into_iter().filter(|n| start_of_tree(n).is_some()).collect()
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
    fn tree_names_round_trip_and_sort_in_time_order() {
        for s in [-7 * HOUR_MS, 0, 1_764_460_800_000] {
            assert_eq!(start_of_tree(&tree_name(s)), Some(s));
        }
        assert!(tree_name(-HOUR_MS) < tree_name(0) && tree_name(0) < tree_name(HOUR_MS));
        assert_eq!(start_of_tree(b"__sled__default"), None);
    }
}
