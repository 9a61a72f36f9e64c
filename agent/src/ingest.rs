//! Recording usage: validate every event, then store the valid ones in one durable write.
//!
//! Transport-free, so the gRPC layer only converts and tests can call it directly.

use std::sync::Arc;

use meterd_proto::v1;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::domain::event::Receipt;
use crate::domain::validate::{FieldError, validate};
use crate::store::{IngestOutcome, Store, StoreError};

/// Why one event was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRefusal {
    Invalid(FieldError),
    /// The idempotency key was used before for different content.
    Conflict {
        existing: Receipt,
    },
    Overflow,
    /// The event's hour is sealed and `pipeline.late_usage = "reject"`.
    LateRejected {
        hour_ms: crate::clock::UnixMillis,
    },
    /// The event's timestamp is older than `pipeline.max_lateness`: too late to bill for its own period.
    TooLate {
        event_time_ms: crate::clock::UnixMillis,
        max_lateness: std::time::Duration,
    },
    /// The customer is deprovisioned or ended, or the tenant maps to another product.
    NotActive {
        message: String,
    },
}

#[derive(Clone)]
pub struct Ingest {
    config: Arc<Config>,
    store: Store,
    clock: SharedClock,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Ingest {
    pub fn new(config: Arc<Config>, store: Store, clock: SharedClock, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { config, store, clock, metrics }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Validates all events, stores the valid ones atomically, and returns one result per event in order.
    /// Returns `Err` only if the store could not make the write durable; then nothing is acknowledged.
    pub async fn record(&self, events: &[v1::UsageEvent]) -> Result<Vec<Result<Receipt, EventRefusal>>, StoreError> {
        let now = self.clock.now_ms();
        let mut results: Vec<Option<Result<Receipt, EventRefusal>>> = Vec::with_capacity(events.len());
        let mut valid = Vec::with_capacity(events.len());
        let max_lateness = self.config.pipeline.max_lateness;
        let oldest_ms = now.saturating_sub(max_lateness.as_millis() as i64);
        for ev in events {
            match validate(ev, &self.config, now) {
                // Refused before the store: AWS would not take usage this old, and counting it in today's hour
                // would bill the buyer for the wrong period.
                // A retry of an event stored while it was young enough still gets its receipt.
                Ok(e) if e.timestamp_ms.is_some_and(|t| t < oldest_ms) => {
                    let key = &e.idempotency_key;
                    results.push(Some(match self.store.event(key)? {
                        Some(s) if s.digest == e.content_digest() => Ok(Receipt::from_stored(key, &s, true)),
                        Some(s) => Err(EventRefusal::Conflict { existing: Receipt::from_stored(key, &s, false) }),
                        None => {
                            Err(EventRefusal::TooLate { event_time_ms: e.timestamp_ms.unwrap_or(now), max_lateness })
                        }
                    }));
                }
                Ok(e) => {
                    valid.push(e);
                    results.push(None);
                }
                Err(f) => results.push(Some(Err(EventRefusal::Invalid(f)))),
            }
        }
        // For the per-(product, dimension) quantity metric, without cloning events: a few distinct series.
        let mut series: Vec<(String, String)> = Vec::new();
        let tally: Vec<(usize, crate::domain::quantity::Micros)> = valid
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
            match self.store.ingest(valid, now, self.config.pipeline.late_usage).await {
                Ok(o) => o,
                Err(e) => {
                    if let StoreError::DiskFull(_) = e {
                        for _ in 0..n {
                            self.metrics.refused("disk_full");
                        }
                    }
                    return Err(e);
                }
            }
        }
        .into_iter()
        .zip(tally);
        // Summed per series first, so the metrics lock is taken once per series, not once per event.
        let mut accepted = vec![crate::domain::quantity::Micros::ZERO; series.len()];
        let results: Vec<Result<Receipt, EventRefusal>> = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    let (outcome, (i, quantity)) = outcomes.next().expect("one outcome per valid event");
                    if let IngestOutcome::Stored(_) = outcome {
                        accepted[i] = accepted[i].checked_add(quantity).unwrap_or(accepted[i]);
                    }
                    match outcome {
                        IngestOutcome::Stored(r) | IngestOutcome::Replayed(r) => Ok(r),
                        IngestOutcome::Conflict { existing } => Err(EventRefusal::Conflict { existing }),
                        IngestOutcome::Overflow => Err(EventRefusal::Overflow),
                        IngestOutcome::LateRejected { hour_ms } => Err(EventRefusal::LateRejected { hour_ms }),
                        IngestOutcome::NotActive { message } => Err(EventRefusal::NotActive { message }),
                    }
                })
            })
            .collect();
        for ((product, dimension), q) in series.iter().zip(accepted) {
            if q != crate::domain::quantity::Micros::ZERO {
                self.metrics.accepted(product, dimension, q);
            }
        }
        for r in &results {
            if let Err(e) = r {
                self.metrics.refused(&match e {
                    EventRefusal::Invalid(f) => {
                        // The field's root (no indices or map keys): a bounded label.
                        let root = f.field.split(['.', '[']).next().unwrap_or("event");
                        format!("invalid_{}", if root.is_empty() { "event" } else { root })
                    }
                    EventRefusal::Conflict { .. } => "conflict".into(),
                    EventRefusal::Overflow => "overflow".into(),
                    EventRefusal::LateRejected { .. } => "late_rejected".into(),
                    EventRefusal::TooLate { .. } => "too_late".into(),
                    EventRefusal::NotActive { .. } => "not_active".into(),
                });
            }
        }
        Ok(results)
    }
}
