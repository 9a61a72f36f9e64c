//! The metrics registry: Prometheus text exposition, served on the admin listener's `/metrics`.
//!
//! Shaped like linkerd2-proxy's metrics: each component owns its metrics and registers a [`Collect`] with the
//! [`Registry`] when it is built (ingest, submitters, the ledger's gauges, the auth layer, the marketplace
//! listener, lifecycle handling, silence detection). This module knows none of them: it is on the ground floor
//! next to `clock` and `domain`, so no component imports another to be counted, there is no process-wide
//! static, and every figure is counted in exactly one place.
//!
//! Label values are bounded: products and dimensions come from the config, reasons from fixed sets (field
//! names, AWS exception names); tenant ids and customers never become labels.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A component's metrics, written into the exposition at scrape time.
pub trait Collect: Send + Sync {
    /// Writes every family this component owns. An error (a store read that failed) fails the whole scrape
    /// rather than serving a partial page that would look like counters reset.
    fn collect(&self, out: &mut Encoder) -> Result<(), String>;
}

/// Every registered component, in registration order.
#[derive(Default)]
pub struct Registry {
    components: Mutex<Vec<Arc<dyn Collect>>>,
}

impl Registry {
    pub fn register(&self, component: Arc<dyn Collect>) {
        self.components.lock().unwrap_or_else(|e| e.into_inner()).push(component);
    }

    /// The exposition text (format 0.0.4). Blocking: components may read the store.
    pub fn render(&self) -> Result<String, String> {
        let components = self.components.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Encoder { out: String::with_capacity(8192) };
        for c in components {
            c.collect(&mut out)?;
        }
        Ok(out.out)
    }
}

/// Writes families and samples in the text format.
pub struct Encoder {
    out: String,
}

impl Encoder {
    /// `# HELP` and `# TYPE` of a family; its samples follow.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` are escaped here.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            self.sample(&bucket, &[("le", &b.to_string())], c.load(Ordering::Relaxed));
        }
        let n = h.count.load(Ordering::Relaxed);
        self.sample(&bucket, &[("le", "+Inf")], n);
        self.sample(&format!("{name}_sum"), &[], h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        self.sample(&format!("{name}_count"), &[], n);
    }
}

/// Prometheus label value escaping.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
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
}

/// A counter per label value (reasons, endpoints): label sets are small and fixed, so a map under a lock.
#[derive(Debug)]
pub struct CounterVec<K: Ord> {
    counts: Mutex<BTreeMap<K, u64>>,
}

impl<K: Ord> Default for CounterVec<K> {
    fn default() -> Self {
        Self { counts: Mutex::default() }
    }
}

impl<K: Ord + Clone> CounterVec<K> {
    pub fn add(&self, key: K, n: u64) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += n;
    }

    pub fn snapshot(&self) -> BTreeMap<K, u64> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn total(&self) -> u64 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Two;
    impl Collect for Two {
        fn collect(&self, out: &mut Encoder) -> Result<(), String> {
            out.single("a_total", "counter", "A.", 1);
            out.family("b", "gauge", "B.");
            out.sample("b", &[("x", "q\"uo\\te\n")], 2);
            Ok(())
        }
    }

    struct Failing;
    impl Collect for Failing {
        fn collect(&self, _: &mut Encoder) -> Result<(), String> {
            Err("store read failed".into())
        }
    }

    #[test]
    fn renders_registered_components_in_order_with_escaped_labels() {
        let r = Registry::default();
        r.register(Arc::new(Two));
        let text = r.render().unwrap();
        assert_eq!(
            text,
            "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n# HELP b B.\n# TYPE b gauge\nb{x=\"q\\\"uo\\\\te\\n\"} 2\n"
        );
    }

    #[test]
    fn a_failing_component_fails_the_scrape() {
        let r = Registry::default();
        r.register(Arc::new(Two));
        r.register(Arc::new(Failing));
        assert_eq!(r.render().unwrap_err(), "store read failed");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        static BOUNDS: [f64; 2] = [1.0, 2.0];
        let h = Histogram::new(&BOUNDS);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut e = Encoder { out: String::new() };
        e.histogram("h", "H.", &h);
        assert!(e.out.contains("h_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 2\nh_bucket{le=\"+Inf\"} 3\n"), "{}", e.out);
        assert!(e.out.contains("h_count 3\n"));
    }

    #[test]
    fn counter_vec_counts_per_key() {
        let c = CounterVec::default();
        c.add("x".to_string(), 2);
        c.add("y".to_string(), 1);
        c.add("x".to_string(), 1);
        assert_eq!(c.total(), 4);
        assert_eq!(c.snapshot().get("x"), Some(&3));
    }
}
