//! Prometheus metrics in the text exposition format, served on the admin listener.
//!
//! Label values are bounded: products and dimensions come from the config, reasons from fixed sets (field
//! names, AWS exception names); tenant ids and customers never become labels.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::UnixMillis;
use crate::domain::quantity::Micros;

/// Bucket bounds (seconds) for BatchMeterUsage call latency.
const LATENCY_BOUNDS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bucket bounds for records per call.
const BATCH_BOUNDS: [f64; 6] = [1.0, 2.0, 5.0, 10.0, 20.0, 25.0];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Ordering::Relaxed));
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// What the request path and the submitters count; gauges are read from the store at scrape time.
#[derive(Debug)]
pub struct Metrics {
    /// Refused events by reason (`invalid_<field>`, `conflict`, `late_rejected`, `too_late`, `not_active`,
    /// `overflow`).
    pub events_refused: Mutex<BTreeMap<String, u64>>,
    /// Exact quantity accepted per (product, dimension), in micro-units.
    pub quantity_accepted: Mutex<BTreeMap<(String, String), Micros>>,
    pub records_rejected: Mutex<BTreeMap<String, u64>>,
    pub call_latency: Histogram,
    pub batch_size: Histogram,
    pub retries: AtomicU64,
    /// Marketplace HTTP requests refused, by (endpoint, reason): unauthenticated events, rate limits.
    pub marketplace_refused: Mutex<BTreeMap<(String, String), u64>>,
    /// End-of-subscription events AWS did not confirm (not applied), by reason.
    pub lifecycle_unconfirmed: Mutex<BTreeMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events_refused: Mutex::default(),
            quantity_accepted: Mutex::default(),
            records_rejected: Mutex::default(),
            call_latency: Histogram::new(&LATENCY_BOUNDS),
            batch_size: Histogram::new(&BATCH_BOUNDS),
            retries: AtomicU64::new(0),
            marketplace_refused: Mutex::default(),
            lifecycle_unconfirmed: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn refused(&self, reason: &str) {
        *self.events_refused.lock().expect("metrics lock").entry(reason.to_string()).or_default() += 1;
    }

    pub fn accepted(&self, product: &str, dimension: &str, q: Micros) {
        let mut m = self.quantity_accepted.lock().expect("metrics lock");
        let e = m.entry((product.to_string(), dimension.to_string())).or_default();
        *e = e.checked_add(q).unwrap_or(*e);
    }

    pub fn marketplace_refused(&self, endpoint: &str, reason: &str) {
        let mut m = self.marketplace_refused.lock().expect("metrics lock");
        *m.entry((endpoint.to_string(), reason.to_string())).or_default() += 1;
    }

    pub fn lifecycle_unconfirmed(&self, reason: &str) {
        *self.lifecycle_unconfirmed.lock().expect("metrics lock").entry(reason.to_string()).or_default() += 1;
    }

    pub fn rejected(&self, reason: &str) {
        *self.records_rejected.lock().expect("metrics lock").entry(reason.to_string()).or_default() += 1;
    }
}

/// Gauges and counters owned elsewhere, gathered at scrape time.
pub struct Snapshot<'a> {
    pub now_ms: UnixMillis,
    pub store: &'a crate::store::StoreCounters,
    pub submit: &'a [(String, std::sync::Arc<crate::submit::SubmitStats>)],
    pub pending: u64,
    pub oldest_pending_hour_ms: Option<UnixMillis>,
    pub most_urgent_deadline_ms: Option<UnixMillis>,
    pub at_risk: u64,
    pub open_buckets: u64,
    pub store_bytes: u64,
    /// Revenue lost (DuplicateRecord on a first send), durable in the store: never goes back, even on restart.
    pub lost: crate::store::Lost,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn render(m: &Metrics, s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(8192);
    let st = s.store;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);

    metric(&mut out, "meterd_events_accepted_total", "counter", "Usage events stored (each idempotency key once).");
    let _ = writeln!(out, "meterd_events_accepted_total {}", ld(&st.events_stored));
    metric(&mut out, "meterd_events_refused_total", "counter", "Usage events refused, by reason.");
    for (reason, n) in m.events_refused.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "meterd_events_refused_total{{reason=\"{}\"}} {n}", esc(reason));
    }
    metric(&mut out, "meterd_idempotent_replays_total", "counter", "Events answered from their stored receipt.");
    let _ = writeln!(out, "meterd_idempotent_replays_total {}", ld(&st.replays));
    metric(
        &mut out,
        "meterd_late_events_total",
        "counter",
        "Events for an already sealed hour, counted in the open hour.",
    );
    let _ = writeln!(out, "meterd_late_events_total {}", ld(&st.late_events));
    metric(&mut out, "meterd_quantity_accepted", "counter", "Exact usage quantity accepted, by product and dimension.");
    for ((p, d), q) in m.quantity_accepted.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "meterd_quantity_accepted{{product=\"{}\",dimension=\"{}\"}} {q}", esc(p), esc(d));
    }
    metric(&mut out, "meterd_buckets_sealed_total", "counter", "Hourly buckets frozen into sealed records.");
    let _ = writeln!(out, "meterd_buckets_sealed_total {}", ld(&st.buckets_sealed));
    metric(&mut out, "meterd_records_sealed_total", "counter", "Records sealed for submission.");
    let _ = writeln!(out, "meterd_records_sealed_total {}", ld(&st.records_sealed));
    metric(
        &mut out,
        "meterd_write_groups_total",
        "counter",
        "Atomic store writes (each carries every call that was waiting).",
    );
    let _ = writeln!(out, "meterd_write_groups_total {}", ld(&st.write_groups));
    metric(&mut out, "meterd_fsyncs_total", "counter", "Store fsyncs (shared by all writes in a group).");
    let _ = writeln!(out, "meterd_fsyncs_total {}", ld(&st.fsyncs));
    metric(&mut out, "meterd_fsync_seconds_total", "counter", "Time spent in store fsyncs.");
    let _ = writeln!(out, "meterd_fsync_seconds_total {}", ld(&st.fsync_micros) as f64 / 1e6);

    let mut accepted = 0;
    let mut expired = 0;
    for (_, a) in s.submit {
        accepted += ld(&a.records_accepted);
        expired += ld(&a.records_expired);
    }
    metric(&mut out, "meterd_records_accepted_total", "counter", "Records AWS accepted.");
    let _ = writeln!(out, "meterd_records_accepted_total {accepted}");
    metric(&mut out, "meterd_records_rejected_total", "counter", "Records rejected, by reason.");
    for (reason, n) in m.records_rejected.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "meterd_records_rejected_total{{reason=\"{}\"}} {n}", esc(reason));
    }
    metric(
        &mut out,
        "meterd_marketplace_requests_refused_total",
        "counter",
        "Marketplace HTTP requests refused, by endpoint and reason (unauthenticated, rate limited, ...).",
    );
    for ((e, reason), n) in m.marketplace_refused.lock().expect("metrics lock").iter() {
        let _ = writeln!(
            out,
            "meterd_marketplace_requests_refused_total{{endpoint=\"{}\",reason=\"{}\"}} {n}",
            esc(e),
            esc(reason)
        );
    }
    metric(
        &mut out,
        "meterd_lifecycle_events_unconfirmed_total",
        "counter",
        "End-of-subscription events AWS did not confirm, so not applied, by reason.",
    );
    for (reason, n) in m.lifecycle_unconfirmed.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "meterd_lifecycle_events_unconfirmed_total{{reason=\"{}\"}} {n}", esc(reason));
    }
    metric(
        &mut out,
        "meterd_records_lost_total",
        "counter",
        "Records AWS answered DuplicateRecord for on their first send: it holds another quantity, never billed.",
    );
    let _ = writeln!(out, "meterd_records_lost_total {}", s.lost.records);
    metric(&mut out, "meterd_units_lost_total", "counter", "Whole units of those records.");
    let _ = writeln!(out, "meterd_units_lost_total {}", s.lost.units);
    metric(
        &mut out,
        "meterd_records_merged_total",
        "counter",
        "Held tenant records merged into their identity's next hour because their AWS key was taken.",
    );
    let _ = writeln!(out, "meterd_records_merged_total {}", ld(&st.records_merged));
    metric(&mut out, "meterd_records_expired_total", "counter", "Records that missed their deadline (never sent).");
    let _ = writeln!(out, "meterd_records_expired_total {expired}");
    metric(&mut out, "meterd_records_pending", "gauge", "Sealed records not yet in a terminal state.");
    let _ = writeln!(out, "meterd_records_pending {}", s.pending);
    metric(
        &mut out,
        "meterd_records_at_risk",
        "gauge",
        "Pending records held for tenants with no marketplace identity.",
    );
    let _ = writeln!(out, "meterd_records_at_risk {}", s.at_risk);
    metric(&mut out, "meterd_open_buckets", "gauge", "Hourly buckets not sealed yet.");
    let _ = writeln!(out, "meterd_open_buckets {}", s.open_buckets);
    metric(
        &mut out,
        "meterd_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest pending record's hour (0 if none).",
    );
    let age = s.oldest_pending_hour_ms.map_or(0, |h| (s.now_ms - h).max(0) / 1000);
    let _ = writeln!(out, "meterd_oldest_pending_age_seconds {age}");
    metric(
        &mut out,
        "meterd_deadline_seconds",
        "gauge",
        "Seconds until the most urgent pending record's deadline (absent if none).",
    );
    if let Some(d) = s.most_urgent_deadline_ms {
        let _ = writeln!(out, "meterd_deadline_seconds {}", (d - s.now_ms) / 1000);
    }
    metric(&mut out, "meterd_store_size_bytes", "gauge", "Bytes the store occupies on disk.");
    let _ = writeln!(out, "meterd_store_size_bytes {}", s.store_bytes);
    metric(
        &mut out,
        "meterd_store_live_bytes",
        "gauge",
        "Bytes of keys and values in the store, as the last hourly repack check measured (0 before it).",
    );
    let _ = writeln!(out, "meterd_store_live_bytes {}", ld(&st.live_bytes));
    metric(&mut out, "meterd_store_repacks_total", "counter", "Store repacks (copies into a fresh generation).");
    let _ = writeln!(out, "meterd_store_repacks_total {}", ld(&st.repacks));
    metric(&mut out, "meterd_store_repack_seconds_total", "counter", "Time writes waited for store repacks.");
    let _ = writeln!(out, "meterd_store_repack_seconds_total {}", ld(&st.repack_micros) as f64 / 1e6);
    metric(&mut out, "meterd_disk_free_bytes", "gauge", "Free bytes on the data dir's filesystem (last ingest).");
    let _ = writeln!(out, "meterd_disk_free_bytes {}", ld(&st.disk_free_bytes));
    metric(&mut out, "meterd_disk_reserve_bytes", "gauge", "Free space kept on the data dir's filesystem.");
    let _ = writeln!(out, "meterd_disk_reserve_bytes {}", ld(&st.disk_reserve_bytes));
    metric(&mut out, "meterd_disk_full", "gauge", "1 while ingest is refused because free space is below the reserve.");
    let _ = writeln!(out, "meterd_disk_full {}", u8::from(st.disk_full.load(Ordering::Relaxed)));

    metric(&mut out, "meterd_submit_calls_total", "counter", "BatchMeterUsage calls, by account and outcome.");
    for (acct, a) in s.submit {
        for (outcome, v) in [("ok", &a.calls_ok), ("throttled", &a.calls_throttled), ("failed", &a.calls_failed)] {
            let _ =
                writeln!(out, "meterd_submit_calls_total{{account=\"{}\",outcome=\"{outcome}\"}} {}", esc(acct), ld(v));
        }
    }
    metric(&mut out, "meterd_throttles_total", "counter", "ThrottlingException answers, by account.");
    for (acct, a) in s.submit {
        let _ = writeln!(out, "meterd_throttles_total{{account=\"{}\"}} {}", esc(acct), ld(&a.calls_throttled));
    }
    metric(
        &mut out,
        "meterd_submit_retries_total",
        "counter",
        "Records sent again after a failed or unanswered attempt.",
    );
    let _ = writeln!(out, "meterd_submit_retries_total {}", ld(&m.retries));
    metric(&mut out, "meterd_bisections_total", "counter", "Batches split to isolate a record AWS refused.");
    let bisections: u64 = s.submit.iter().map(|(_, a)| ld(&a.bisections)).sum();
    let _ = writeln!(out, "meterd_bisections_total {bisections}");
    metric(&mut out, "meterd_unprocessed_records_total", "counter", "Records AWS returned as UnprocessedRecords.");
    let unprocessed: u64 = s.submit.iter().map(|(_, a)| ld(&a.records_unprocessed)).sum();
    let _ = writeln!(out, "meterd_unprocessed_records_total {unprocessed}");
    metric(&mut out, "meterd_clock_skew_seconds", "gauge", "AWS's clock (Date header) minus ours, by account.");
    for (acct, a) in s.submit {
        if a.skew.observed.load(Ordering::Relaxed) {
            let _ = writeln!(
                out,
                "meterd_clock_skew_seconds{{account=\"{}\"}} {}",
                esc(acct),
                a.skew.millis.load(Ordering::Relaxed) as f64 / 1000.0
            );
        }
    }
    metric(
        &mut out,
        "meterd_last_successful_call_timestamp_seconds",
        "gauge",
        "When AWS last answered a call, by account.",
    );
    for (acct, a) in s.submit {
        let t = a.last_success_ms.load(Ordering::Relaxed);
        if t != 0 {
            let _ = writeln!(
                out,
                "meterd_last_successful_call_timestamp_seconds{{account=\"{}\"}} {}",
                esc(acct),
                t / 1000
            );
        }
    }
    metric(&mut out, "meterd_auth_refused_total", "counter", "TCP calls refused for a missing or wrong bearer token.");
    let _ = writeln!(out, "meterd_auth_refused_total {}", crate::server::auth::REFUSED.load(Ordering::Relaxed));
    m.call_latency.render(&mut out, "meterd_submit_call_seconds", "BatchMeterUsage call latency.");
    m.batch_size.render(&mut out, "meterd_submit_batch_records", "Records per BatchMeterUsage call.");
    out
}
