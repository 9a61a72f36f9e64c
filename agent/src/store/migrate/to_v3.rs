//! Store v2 → v3, at open: every value v2 kept as postcard of a Rust struct ([`super::v2::Family`]) is rewritten
//! in its explicit stored layout ([`crate::store::schema`]); keys do not change.
//!
//! Crash-safe by construction: values are converted in key order, a chunk of them per atomic sled batch (flushed
//! before the next), and the same batch records the last key it converted (`m/migrate_v3`). A SIGKILL leaves whole chunks converted and
//! the rest in the v2 layout; the next open carries on after the recorded key, so no value is converted twice
//! (a v3 value read as v2 would be refused as corrupt). The schema version moves to 3, and the progress key goes,
//! in one batch once no value is left.

use std::ops::Bound;

use super::v2::{Family, to_v3};
use crate::store::{StoreError, keys};

/// The last key converted so far (absent before the first chunk and after the last).
pub const PROGRESS_KEY: &[u8] = b"m/migrate_v3";

/// Values per batch: bounds the memory a chunk takes and the work a crash can undo.
const CHUNK: usize = 10_000;

/// Converts every v2 value and marks the store v3. Returns how many values this call converted.
pub fn v2_to_v3(db: &sled::Db) -> Result<u64, StoreError> {
    let mut after = db.get(PROGRESS_KEY)?;
    let mut converted = 0u64;
    loop {
        let from = match &after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        let mut batch = sled::Batch::default();
        let mut last = None;
        let mut n = 0;
        for kv in db.range::<sled::IVec, _>((from, Bound::Unbounded)) {
            let (k, v) = kv?;
            let Some(family) = Family::of(&k) else { continue };
            batch.insert(k.clone(), to_v3(family, &k, &v)?);
            last = Some(k);
            n += 1;
            if n == CHUNK {
                break;
            }
        }
        let Some(last) = last else { break };
        batch.insert(PROGRESS_KEY, last.clone());
        db.apply_batch(batch)?;
        // Each chunk durable before the next starts: a crash or power loss costs at most the chunk under way.
        db.flush()?;
        converted += n as u64;
        after = Some(last);
        tracing::info!(converted, "store v2 → v3: values rewritten in their stored layouts");
    }
    let mut done = sled::Batch::default();
    done.remove(PROGRESS_KEY);
    done.insert(keys::SCHEMA_VERSION_KEY, &3u32.to_be_bytes());
    db.apply_batch(done)?;
    Ok(converted)
}
