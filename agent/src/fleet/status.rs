//! This node's fleet figures, for `status` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::clock::SharedClock;
use crate::metrics::{Collect, Encoder};
use crate::store::Store;

#[derive(Debug, Default)]
pub struct FleetStatus {
    /// Events this node forwarded that the shared ledger stored / answered as replays / refused as conflicts.
    pub forwarded: AtomicU64,
    pub replayed: AtomicU64,
    pub conflicts: AtomicU64,
    /// Forwarded events counted in the open hour because their own hour was sealed fleet-wide.
    pub late: AtomicU64,
    pub forward_failures: AtomicU64,
    /// The node's forward watermark as last committed (its clock), and when the last forward committed.
    pub watermark_ms: AtomicI64,
    pub last_forward_ms: AtomicI64,
    pub database_up: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    /// Accounts this node submits for (it holds their lease), with the lease epoch.
    pub leading: Mutex<BTreeMap<String, i64>>,
}

impl FleetStatus {
    pub(crate) fn failed(&self, error: &str) {
        self.forward_failures.fetch_add(1, Ordering::Relaxed);
        self.database_up.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }

    pub(crate) fn ok(&self, now_ms: i64) {
        self.database_up.store(true, Ordering::Relaxed);
        self.last_forward_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn lead(&self, account: &str, epoch: Option<i64>) {
        let mut l = self.leading.lock().unwrap_or_else(|e| e.into_inner());
        match epoch {
            Some(e) => l.insert(account.to_string(), e),
            None => l.remove(account),
        };
    }
}

/// Registered in fleet mode.
pub struct FleetMetrics {
    pub status: std::sync::Arc<FleetStatus>,
    pub store: Store,
    pub clock: SharedClock,
}

impl Collect for FleetMetrics {
    fn collect(&self, out: &mut Encoder) -> Result<(), String> {
        let s = &self.status;
        let depth = self.store.outbox_depth().map_err(|e| e.to_string())?;
        out.single(
            "meterd_fleet_spool_events",
            "gauge",
            "Acknowledged events in this agent's spool, not yet in the shared ledger.",
            depth.entries,
        );
        let age = depth.oldest_received_ms.map_or(0.0, |t| (self.clock.now_ms() - t).max(0) as f64 / 1000.0);
        out.single(
            "meterd_fleet_spool_oldest_age_seconds",
            "gauge",
            "Age of the oldest event waiting in the spool (0 when empty): alert when it grows.",
            age,
        );
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.single(
            "meterd_fleet_forwarded_events_total",
            "counter",
            "Events stored in the shared ledger.",
            ld(&s.forwarded),
        );
        out.single(
            "meterd_fleet_replayed_events_total",
            "counter",
            "Forwarded events the shared ledger already held (a retry on another agent, or a resend).",
            ld(&s.replayed),
        );
        out.single(
            "meterd_fleet_conflicts_total",
            "counter",
            "Forwarded events whose key another agent holds with other content (recorded, not counted).",
            ld(&s.conflicts),
        );
        out.single(
            "meterd_fleet_forward_failures_total",
            "counter",
            "Failed forwards (the database unreachable or refusing); retried.",
            ld(&s.forward_failures),
        );
        out.single(
            "meterd_fleet_database_up",
            "gauge",
            "1 when the last forward reached the fleet database.",
            u8::from(s.database_up.load(Ordering::Relaxed)),
        );
        out.single(
            "meterd_fleet_watermark_seconds",
            "gauge",
            "This node's forward watermark (Unix time): everything acknowledged before it is in the shared ledger.",
            s.watermark_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        let leading = s.leading.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.family("meterd_fleet_submitter_lease", "gauge", "1 for each account this agent submits for (its lease).");
        for (account, _) in leading {
            out.sample("meterd_fleet_submitter_lease", &[("account", &account)], 1);
        }
        Ok(())
    }
}
