//! What more than one integration test of the store shares.

use meterd::store::StoreOptions;

/// A store for a test: a small cache, no free-space floor (a test's temp dir may sit on a nearly full disk), the
/// default seal chunk and dedupe window, and the default watchdog (a store that deadlocks ends the test binary
/// with the worker it was stuck in, instead of hanging the suite).
pub fn options() -> StoreOptions {
    StoreOptions {
        cache_bytes: 16 << 20,
        min_free: meterd::store::space::MinFree::Bytes(0),
        seal_chunk: meterd::store::SEAL_CHUNK_BUCKETS,
        dedupe_keep_ms: meterd::store::DEFAULT_DEDUPE_KEEP_MS,
        stuck_after: Some(meterd::store::watch::DEFAULT_STUCK_AFTER),
    }
}
