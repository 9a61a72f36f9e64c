//! How the agent's heap is handed back to the system (glibc malloc).
//!
//! glibc serves an allocation of at least `M_MMAP_THRESHOLD` bytes with its own `mmap`, unmapped again when freed
//! — but by default it raises that threshold to the size of every such block freed (up to 32 MiB), after which
//! blocks of that size come from the heap arenas instead, where they fragment and stay mapped. The agent makes
//! large short-lived buffers all the time (an ingest group's redo record and dedupe record, a seal chunk, a
//! report page) on several threads, and the 30-minute soak's RSS rose ~1.4 MiB a minute while its live heap
//! (heaptrack) stayed near 35 MiB. Pinning the threshold turns the dynamic adjustment off: at 128 KiB (glibc's
//! starting value) the same soak's RSS stayed flat (docs/ARCHITECTURE.md, "Soak on store v5").

/// Pins glibc's mmap threshold (see the module docs). Call before the runtime starts its threads.
pub fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; it has no preconditions.
    unsafe {
        // glibc's own starting value, before it adapts.
        const MMAP_THRESHOLD: i32 = 128 * 1024;
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 {
            eprintln!("warning: glibc refused M_MMAP_THRESHOLD; memory may not be handed back as promptly");
        }
    }
}

/// Hands freed heap pages back to the system: glibc keeps them mapped otherwise (after a repack drops the old
/// generation's cache, the agent's memory would ratchet up by one cache at each repack).
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
