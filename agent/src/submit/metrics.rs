//! What the submitters count, and the collector that renders it with each account's [`SubmitStats`] and the
//! deployment start-up checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::SubmitStats;
use super::register::DeploymentChecks;
use crate::metrics::{Collect, Encoder, Histogram};

/// Bucket bounds (seconds) for call latency.
const LATENCY_BOUNDS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bucket bounds for records per call.
const BATCH_BOUNDS: [f64; 6] = [1.0, 2.0, 5.0, 10.0, 20.0, 25.0];

/// Shared by every submitter of the pipeline (the histograms are fleet-of-accounts wide, as before).
#[derive(Debug)]
pub struct SubmitMetrics {
    pub call_latency: Histogram,
    pub batch_size: Histogram,
    /// Records sent again after a failed or unanswered attempt.
    pub retries: AtomicU64,
}

impl Default for SubmitMetrics {
    fn default() -> Self {
        Self {
            call_latency: Histogram::new(&LATENCY_BOUNDS),
            batch_size: Histogram::new(&BATCH_BOUNDS),
            retries: AtomicU64::new(0),
        }
    }
}

/// The pipeline's metrics, registered when it starts.
pub struct SubmitCollector {
    pub metrics: Arc<SubmitMetrics>,
    pub accounts: Arc<Vec<(String, Arc<SubmitStats>)>>,
    pub deployment: Arc<DeploymentChecks>,
}

impl Collect for SubmitCollector {
    fn collect(&self, out: &mut Encoder) -> Result<(), String> {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let accounts = self.accounts.as_slice();
        let sum = |f: fn(&SubmitStats) -> &AtomicU64| accounts.iter().map(|(_, a)| ld(f(a))).sum::<u64>();
        out.single("meterd_records_accepted_total", "counter", "Records AWS accepted.", sum(|a| &a.records_accepted));
        out.family("meterd_records_rejected_total", "counter", "Records rejected, by reason.");
        let mut rejected = std::collections::BTreeMap::<String, u64>::new();
        for (_, a) in accounts {
            for (reason, n) in a.rejected.snapshot() {
                *rejected.entry(reason).or_default() += n;
            }
        }
        for (reason, n) in rejected {
            out.sample("meterd_records_rejected_total", &[("reason", &reason)], n);
        }
        out.single(
            "meterd_records_expired_total",
            "counter",
            "Records that missed their deadline (never sent).",
            sum(|a| &a.records_expired),
        );
        out.family("meterd_submit_calls_total", "counter", "BatchMeterUsage calls, by account and outcome.");
        for (acct, a) in accounts {
            for (outcome, v) in [("ok", &a.calls_ok), ("throttled", &a.calls_throttled), ("failed", &a.calls_failed)] {
                out.sample("meterd_submit_calls_total", &[("account", acct), ("outcome", outcome)], ld(v));
            }
        }
        out.family("meterd_throttles_total", "counter", "ThrottlingException answers, by account.");
        for (acct, a) in accounts {
            out.sample("meterd_throttles_total", &[("account", acct)], ld(&a.calls_throttled));
        }
        out.single(
            "meterd_submit_retries_total",
            "counter",
            "Records sent again after a failed or unanswered attempt.",
            ld(&self.metrics.retries),
        );
        out.single(
            "meterd_bisections_total",
            "counter",
            "Batches split to isolate a record AWS refused.",
            sum(|a| &a.bisections),
        );
        out.single(
            "meterd_unprocessed_records_total",
            "counter",
            "Records AWS returned as UnprocessedRecords.",
            sum(|a| &a.records_unprocessed),
        );
        out.family("meterd_clock_skew_seconds", "gauge", "AWS's clock (Date header) minus ours, by account.");
        for (acct, a) in accounts {
            if a.skew.observed.load(Ordering::Relaxed) {
                let skew = a.skew.millis.load(Ordering::Relaxed) as f64 / 1000.0;
                out.sample("meterd_clock_skew_seconds", &[("account", acct)], skew);
            }
        }
        out.family(
            "meterd_last_successful_call_timestamp_seconds",
            "gauge",
            "When AWS last answered a call, by account.",
        );
        for (acct, a) in accounts {
            let t = a.last_success_ms.load(Ordering::Relaxed);
            if t != 0 {
                out.sample("meterd_last_successful_call_timestamp_seconds", &[("account", acct)], t / 1000);
            }
        }
        out.histogram("meterd_submit_call_seconds", "BatchMeterUsage call latency.", &self.metrics.call_latency);
        out.histogram("meterd_submit_batch_records", "Records per BatchMeterUsage call.", &self.metrics.batch_size);
        self.deployment.collect(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Registry;

    #[test]
    fn rejections_are_counted_once_and_summed_over_accounts() {
        let a = Arc::new(SubmitStats::default());
        let b = Arc::new(SubmitStats::default());
        a.reject("DuplicateRecord");
        a.reject("Invalid");
        b.reject("Invalid");
        let registry = Registry::default();
        registry.register(Arc::new(SubmitCollector {
            metrics: Arc::default(),
            accounts: Arc::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())]),
            deployment: Arc::default(),
        }));
        let text = registry.render().unwrap();
        assert!(text.contains("meterd_records_rejected_total{reason=\"DuplicateRecord\"} 1\n"), "{text}");
        assert!(text.contains("meterd_records_rejected_total{reason=\"Invalid\"} 2\n"), "{text}");
        // Status reads the same counter: its per-account totals add up to the metric's.
        assert_eq!(a.rejected.total() + b.rejected.total(), 3);
        assert!(text.contains("meterd_submit_calls_total{account=\"b\",outcome=\"ok\"} 0\n"), "{text}");
        // No deployment-mode product: no check families.
        assert!(!text.contains("meterd_deployment_check_ok"), "{text}");
    }
}
