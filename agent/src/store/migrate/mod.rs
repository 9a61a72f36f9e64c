//! Migrations of the store's layout at open, one version at a time: v1 → v2 here, v2 → v3 in [`to_v3`], v3 → v4
//! (dedupe segments out of sled into the journal's files) in [`to_v4`].
//!
//! Store v1 → v2: the v1 `e/<key>` records (one per event for the whole retention) move into dedupe
//! segments by their arrival time, in the v2 entry layout; everything else is kept as it is.
//!
//! Crash-safe by construction: the events-ever-stored counter is written first (once: from the `e/` keys and the
//! compacted total, the only count of keys this store ever does), then each chunk of keys is one sled transaction
//! (flushed before the next) that writes their entries and segment counts and removes their `e/` keys; the schema version moves to 2 only
//! when no `e/` key is left. A SIGKILL at any point leaves whole chunks moved and the rest in place, and the next
//! open carries on from there.

use std::collections::BTreeMap;

use sled::Transactional;

use super::{StoreError, keys, schema, segments};

mod to_v3;
mod to_v4;
pub mod v2;

pub use to_v3::{PROGRESS_KEY as V3_PROGRESS_KEY, v2_to_v3};
pub use to_v4::{journal_into_trees, v3_to_v4};

/// Keys per transaction: bounds the memory a chunk takes and the work a crash can undo.
const CHUNK: usize = 10_000;

/// Moves every `e/` key into its segment and marks the store v2. Returns how many keys it moved.
pub fn v1_to_v2(db: &sled::Db, keep_ms: i64) -> Result<u64, StoreError> {
    if db.get(keys::EVENTS_STORED_KEY)?.is_none() {
        // A v1 store's values have the v2 layouts (v1 → v2 changed only the event keys).
        let compacted = v2::compacted(db)?;
        let held = db.scan_prefix(keys::EVENT_PREFIX).count() as u64;
        db.insert(keys::EVENTS_STORED_KEY, &segments::encode_count(held + compacted.events))?;
    }
    let span = segments::span_for(keep_ms);
    let mut moved = 0u64;
    loop {
        let mut chunk: BTreeMap<i64, Vec<(sled::IVec, Vec<u8>)>> = BTreeMap::new();
        let mut old_keys = Vec::new();
        for kv in db.scan_prefix(keys::EVENT_PREFIX).take(CHUNK) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let stored = schema::V1StoredEvent::decode(&v)
                .map_err(|e| StoreError::Corrupt(format!("v1 event record {name:?}: {e}")))?
                .into_stored();
            let start = stored.recorded_at_ms.div_euclid(span) * span;
            let entry = schema::encode_entry(&stored, start);
            chunk.entry(start).or_default().push((k.subslice(keys::EVENT_PREFIX.len(), k.len() - 2), entry));
            old_keys.push(k);
        }
        if old_keys.is_empty() {
            break;
        }
        let starts: Vec<i64> = chunk.keys().copied().collect();
        let trees =
            starts.iter().map(|s| db.open_tree(segments::tree_name(*s))).collect::<Result<Vec<_>, sled::Error>>()?;
        let mut all: Vec<&sled::Tree> = vec![db];
        all.extend(trees.iter());
        all.as_slice()
            .transaction(|views| {
                let main = &views[0];
                for k in &old_keys {
                    main.remove(k)?;
                }
                for (i, s) in starts.iter().enumerate() {
                    let entries = &chunk[s];
                    let index = segments::index_key(*s);
                    let before = match main.get(&index)? {
                        Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                            sled::transaction::ConflictableTransactionError::Abort(format!(
                                "segment index {} is not an 8-byte count",
                                String::from_utf8_lossy(&index)
                            ))
                        })?),
                        None => 0,
                    };
                    main.insert(index, &segments::encode_count(before + entries.len() as u64)[..])?;
                    for (k, e) in entries {
                        views[i + 1].insert(k, e.as_slice())?;
                    }
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<String>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::from(e),
                sled::transaction::TransactionError::Abort(why) => StoreError::Corrupt(why),
            })?;
        // Each chunk on disk before the next starts (and before its progress line): a crash costs at most the
        // chunk under way.
        db.flush()?;
        moved += old_keys.len() as u64;
        tracing::info!(moved, "store v1 → v2: idempotency keys moved into dedupe segments");
    }
    db.insert(keys::SCHEMA_VERSION_KEY, &2u32.to_be_bytes())?;
    Ok(moved)
}
