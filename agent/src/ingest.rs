//! Recording usage: validate every event against the catalog, then let the store decide and apply the valid
//! ones in one durable write. Transport-free, so the gRPC layer only converts and tests can call it directly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::clock::SharedClock;
use crate::domain::catalog::Catalog;
use crate::domain::ingest::{IngestOutcome, IngestRules};
use crate::domain::quantity::Micros;
use crate::domain::validate::{RawEvent, validate};
use crate::metrics::{Collect, CounterVec, Encoder, Registry};
use crate::store::stamps::Stamps;
use crate::store::{Ledger, StoreError};

#[derive(Clone)]
pub struct Ingest {
    catalog: Arc<Catalog>,
    store: Arc<dyn Ledger>,
    /// Each call's `received_ms`, held until its write is done (the fleet forwarder's watermark stays below it).
    stamps: Arc<Stamps>,
    clock: SharedClock,
    metrics: Arc<IngestMetrics>,
}

/// What ingest counts: refusals by reason and the exact quantity accepted per (product, dimension). Events
/// stored, replays and late events are the store's (counted in the write that stores them).
#[derive(Default)]
pub struct IngestMetrics {
    /// `invalid_<field>`, `conflict`, `late_rejected`, `too_late`, `not_active`, `overflow`, `disk_full`, ...
    refused: CounterVec<String>,
    accepted: Mutex<BTreeMap<(String, String), Micros>>,
}

impl Collect for IngestMetrics {
    fn collect(&self, out: &mut Encoder) -> Result<(), String> {
        out.family("meterd_events_refused_total", "counter", "Usage events refused, by reason.");
        for (reason, n) in self.refused.snapshot() {
            out.sample("meterd_events_refused_total", &[("reason", &reason)], n);
        }
        out.family("meterd_quantity_accepted", "counter", "Exact usage quantity accepted, by product and dimension.");
        for ((p, d), q) in self.accepted.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.sample("meterd_quantity_accepted", &[("product", p), ("dimension", d)], q);
        }
        Ok(())
    }
}

impl Ingest {
    /// Registers ingest's metrics with `registry`.
    pub fn new(
        catalog: Arc<Catalog>,
        store: Arc<dyn Ledger>,
        stamps: Arc<Stamps>,
        clock: SharedClock,
        registry: &Registry,
    ) -> Self {
        let metrics = Arc::new(IngestMetrics::default());
        registry.register(metrics.clone());
        Self { catalog, store, stamps, clock, metrics }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Validates all events, stores the valid ones atomically, and returns one outcome per event in order.
    /// Returns `Err` only if the store could not make the write durable; then nothing is acknowledged.
    pub async fn record(&self, events: Vec<RawEvent>) -> Result<Vec<IngestOutcome>, StoreError> {
        // Held to the end of the call. A call given up while its write is still queued gives it back early: its
        // events may then reach the shared ledger after the watermark passed them, and count late (not lost).
        let stamp = self.stamps.take(&self.clock);
        let now = stamp.ms;
        let mut results: Vec<Option<IngestOutcome>> = Vec::with_capacity(events.len());
        let mut valid = Vec::with_capacity(events.len());
        for ev in events {
            match validate(ev, &self.catalog, now) {
                Ok(e) => {
                    valid.push(e);
                    results.push(None);
                }
                Err(f) => results.push(Some(IngestOutcome::Invalid(f))),
            }
        }
        // For the per-(product, dimension) quantity metric, without cloning events: a few distinct series.
        let mut series: Vec<(String, String)> = Vec::new();
        let tally: Vec<(usize, Micros)> = valid
            .iter()
            .map(|e| {
                let i = series.iter().position(|(p, d)| *p == e.product && *d == e.dimension).unwrap_or_else(|| {
                    series.push((e.product.clone(), e.dimension.clone()));
                    series.len() - 1
                });
                (i, e.quantity)
            })
            .collect();
        let mut outcomes = if valid.is_empty() {
            Vec::new()
        } else {
            let n = valid.len();
            match self.store.ingest(valid, now, IngestRules::from(&self.catalog.limits)).await {
                Ok(o) => o,
                Err(e) => {
                    if let StoreError::DiskFull(_) = e {
                        self.metrics.refused.add("disk_full".to_string(), n as u64);
                    }
                    return Err(e);
                }
            }
        }
        .into_iter()
        .zip(tally);
        // Summed per series first, so the metrics lock is taken once per series, not once per event. A sum too
        // large for the counter (beyond any real hour) is capped by the metric, never the ledger.
        let mut accepted = vec![Micros::ZERO; series.len()];
        let results: Vec<IngestOutcome> = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    let (outcome, (i, quantity)) = outcomes.next().expect("one outcome per valid event");
                    if let IngestOutcome::Stored(_) = outcome {
                        accepted[i] = accepted[i].checked_add(quantity).unwrap_or(Micros(u128::MAX));
                    }
                    outcome
                })
            })
            .collect();
        for ((product, dimension), q) in series.iter().zip(accepted) {
            if q != Micros::ZERO {
                let mut m = self.metrics.accepted.lock().unwrap_or_else(|e| e.into_inner());
                let e = m.entry((product.clone(), dimension.clone())).or_default();
                // Capped: a metric beyond any real total; the ledger itself refuses an overflow.
                *e = e.checked_add(q).unwrap_or(Micros(u128::MAX));
            }
        }
        for r in &results {
            if let Some(reason) = r.refusal_reason() {
                self.metrics.refused.add(reason, 1);
            }
        }
        Ok(results)
    }
}
