//! The store's metrics: the writer's counters (kept as it writes) and the ledger's gauges (read at scrape time
//! from durable state).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::SharedClock;
use crate::metrics::{Collect, Encoder};

/// Registered by the agent once the store is open.
pub struct LedgerMetrics {
    pub store: super::Store,
    pub clock: SharedClock,
}

impl Collect for LedgerMetrics {
    fn collect(&self, out: &mut Encoder) -> Result<(), String> {
        let st = self.store.counters();
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.single(
            "meterd_events_accepted_total",
            "counter",
            "Usage events stored (each idempotency key once).",
            ld(&st.events_stored),
        );
        out.single(
            "meterd_idempotent_replays_total",
            "counter",
            "Events answered from their stored receipt.",
            ld(&st.replays),
        );
        out.single(
            "meterd_late_events_total",
            "counter",
            "Events for an already sealed hour, counted in the open hour.",
            ld(&st.late_events),
        );
        out.single(
            "meterd_buckets_sealed_total",
            "counter",
            "Hourly buckets frozen into sealed records.",
            ld(&st.buckets_sealed),
        );
        out.single("meterd_records_sealed_total", "counter", "Records sealed for submission.", ld(&st.records_sealed));
        out.single(
            "meterd_write_groups_total",
            "counter",
            "Atomic store writes (each carries every call that was waiting).",
            ld(&st.write_groups),
        );
        out.single(
            "meterd_fsyncs_total",
            "counter",
            "Redo log fsyncs: the barrier every reply waits for (shared by all writes in a group).",
            ld(&st.fsyncs),
        );
        out.single(
            "meterd_fsync_seconds_total",
            "counter",
            "Time spent in store fsyncs.",
            ld(&st.fsync_micros) as f64 / 1e6,
        );
        out.single(
            "meterd_checkpoints_total",
            "counter",
            "Checkpoints: sled and the dedupe segments synced off the write path, redo log files deleted.",
            ld(&st.checkpoints),
        );
        out.single(
            "meterd_checkpoint_seconds_total",
            "counter",
            "Time spent in checkpoints.",
            ld(&st.checkpoint_micros) as f64 / 1e6,
        );
        out.single(
            "meterd_records_merged_total",
            "counter",
            "Held tenant records merged into their identity's next hour because their AWS key was taken.",
            ld(&st.records_merged),
        );

        let err = |e: super::StoreError| e.to_string();
        let lost = self.store.lost().map_err(err)?;
        out.single(
            "meterd_records_lost_total",
            "counter",
            "Records AWS answered DuplicateRecord for on their first send: it holds another quantity, never billed.",
            lost.records,
        );
        out.single("meterd_units_lost_total", "counter", "Whole units of those records.", lost.units);

        let now_ms = self.clock.now_ms();
        // Kept totals and the first queue key: no scan of the queue.
        let backlog = self.store.pending_view().map_err(err)?.backlog();
        out.single("meterd_records_pending", "gauge", "Sealed records not yet in a terminal state.", backlog.pending);
        out.single(
            "meterd_records_at_risk",
            "gauge",
            "Pending records held for tenants with no marketplace identity.",
            backlog.at_risk,
        );
        out.single(
            "meterd_open_buckets",
            "gauge",
            "Hourly buckets not sealed yet.",
            self.store.open_bucket_count().map_err(err)?,
        );
        out.single(
            "meterd_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest pending record's hour (0 if none).",
            backlog.oldest_pending_age_seconds(now_ms),
        );
        out.family(
            "meterd_deadline_seconds",
            "gauge",
            "Seconds until the most urgent pending record's deadline (absent if none).",
        );
        if let Some(d) = backlog.most_urgent_deadline_ms {
            out.sample("meterd_deadline_seconds", &[], (d - now_ms) / 1000);
        }

        out.single("meterd_store_size_bytes", "gauge", "Bytes the store occupies on disk.", self.store.size_on_disk());
        out.family(
            "meterd_store_busy_seconds",
            "gauge",
            "How long each store worker has been on its current piece of work (0 when idle); past \
             storage.stuck_after the agent exits for its supervisor to restart it.",
        );
        for w in super::watch::WORKERS {
            out.sample(
                "meterd_store_busy_seconds",
                &[("worker", w.label())],
                self.store.watch().busy_for(w).as_secs_f64(),
            );
        }
        out.single(
            "meterd_store_live_bytes",
            "gauge",
            "Bytes of keys and values in the store's sled generation (the dedupe window's files are not counted), as the last hourly repack check measured (0 before it).",
            ld(&st.live_bytes),
        );
        out.single(
            "meterd_store_repacks_total",
            "counter",
            "Store repacks (copies into a fresh generation).",
            ld(&st.repacks),
        );
        out.single(
            "meterd_store_repack_seconds_total",
            "counter",
            "Time writes waited for store repacks.",
            ld(&st.repack_micros) as f64 / 1e6,
        );
        out.single(
            "meterd_disk_free_bytes",
            "gauge",
            "Free bytes on the data dir's filesystem (last ingest).",
            ld(&st.disk_free_bytes),
        );
        out.single(
            "meterd_disk_reserve_bytes",
            "gauge",
            "Free space kept on the data dir's filesystem.",
            ld(&st.disk_reserve_bytes),
        );
        out.single(
            "meterd_disk_full",
            "gauge",
            "1 while ingest is refused because free space is below the reserve.",
            u8::from(st.disk_full.load(Ordering::Relaxed)),
        );
        Ok(())
    }
}
