//! Store v3 → v4, at open: the dedupe segments move out of sled trees (`d/<start>`) into the journal's files
//! ([`crate::store::journal`]); everything else stays as it is.
//!
//! Crash-safe by construction: every file is written and fsynced, then one sled batch sets the journal mark and
//! the schema version 4 (the caller makes it durable). Until that batch is durable the trees are what counts: a
//! SIGKILL or power loss before it leaves version 3, and the next open deletes the files and starts over. After it,
//! the trees are left-overs the open drops in the background.

use std::collections::BTreeMap;
use std::path::Path;

use crate::store::journal::{Journal, Mark};
use crate::store::{StoreError, keys, schema, segments};

/// Entries per record: bounds the memory a record takes while it is built.
const CHUNK: usize = 10_000;

/// Copies every live dedupe segment tree into a journal file in `dir` and marks the store v4. Returns how many
/// keys it copied.
pub fn v3_to_v4(db: &sled::Db, dir: &Path, keep_ms: i64) -> Result<u64, StoreError> {
    let io = |e: std::io::Error| StoreError::Io(format!("store v3 → v4 in {}: {e}", dir.display()));
    // Files of a migration a crash cut short: the trees still count, start over.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    let mut journal = Journal::open(dir, keep_ms, Mark::default(), &BTreeMap::new())?.journal;
    let mut batch = sled::Batch::default();
    let mut mark = None;
    let mut copied = 0u64;
    for name in segments::tree_names(db) {
        let Some(start) = segments::start_of_tree(&name) else { continue };
        // A tree without its `g/` record was being dropped: already forgotten.
        if db.get(segments::index_key(start))?.is_none() {
            continue;
        }
        let tree = db.open_tree(&name)?;
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut kvs = tree.iter();
        loop {
            let next = kvs.next().transpose()?;
            if let Some((k, v)) = &next {
                let key = String::from_utf8(k.to_vec())
                    .map_err(|_| StoreError::Corrupt(format!("segment {start}: an idempotency key is not UTF-8")))?;
                let stored = schema::decode_entry(v, start)
                    .map_err(|e| StoreError::Corrupt(format!("idempotency entry {key:?} (segment {start}): {e}")))?;
                chunk.push((key, stored));
            }
            if chunk.len() == CHUNK || (next.is_none() && !chunk.is_empty()) {
                let a = journal.write(start, &chunk)?;
                mark = Some(a.mark);
                copied += chunk.len() as u64;
                journal.commit(a);
                chunk.clear();
            }
            if next.is_none() {
                break;
            }
        }
        let count = journal.live.get(&start).map_or(0, |s| s.count);
        batch.insert(segments::index_key(start), &segments::encode_count(count)[..]);
        tracing::info!(start, keys = count, "store v3 → v4: dedupe segment copied into its file");
    }
    if let Some(m) = mark {
        batch.insert(keys::JOURNAL_MARK_KEY, &m.encode()[..]);
    }
    batch.insert(keys::SCHEMA_VERSION_KEY, &4u32.to_be_bytes());
    db.apply_batch(batch)?;
    Ok(copied)
}

/// The other way, for tests that build a store as meterd before v4 left it: the closed store in `data_dir` (whose
/// live generation is `db`) gets its journal's entries back in segment trees, in the entry layout v2–v3 kept
/// there, without the journal and its mark, marked v3.
pub fn journal_into_trees(db: &sled::Db, data_dir: &Path, keep_ms: i64) -> Result<u64, StoreError> {
    let dir = data_dir.join(crate::store::journal::DIR);
    let mark = match db.get(keys::JOURNAL_MARK_KEY)? {
        Some(v) => Mark::decode(&v)?,
        None => Mark::default(),
    };
    let counts = segments::counts(db)?;
    let journal = Journal::open(&dir, keep_ms, mark, &counts)?.journal;
    let mut moved = 0u64;
    for start in counts.keys() {
        let tree = db.open_tree(segments::tree_name(*start))?;
        let mut batch = sled::Batch::default();
        for (key, e) in journal.entries(*start)? {
            batch.insert(key.as_bytes(), schema::encode_entry(&e, *start));
            moved += 1;
        }
        tree.apply_batch(batch)?;
    }
    drop(journal);
    std::fs::remove_dir_all(&dir).map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
    db.remove(keys::JOURNAL_MARK_KEY)?;
    db.insert(keys::SCHEMA_VERSION_KEY, &3u32.to_be_bytes())?;
    db.flush()?;
    Ok(moved)
}
