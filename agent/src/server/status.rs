//! What `Admin.Status` and `Admin.Report` answer, gathered once here so the gRPC service and the dashboard's
//! JSON endpoint (`server/dashboard.rs`) show the same numbers from the same code.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use meterd_proto::v1;
use tonic::Status;

use super::convert::{drop_to_wire, store_status, timestamp};
use crate::clock::{SharedClock, UnixMillis};
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::store::{SCHEMA_VERSION, Store};

/// Everything status and report read.
#[derive(Clone)]
pub struct Source {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: SharedClock,
    pub pipeline: Pipeline,
    pub started_at_ms: UnixMillis,
}

impl Source {
    /// `Admin.Status`, and the dashboard's status part.
    pub async fn status(&self) -> Result<v1::StatusResponse, Status> {
        let store = self.store.clone();
        let (settings, now) = (crate::silence::settings(&self.config), self.clock.now_ms());
        let snapshot = tokio::task::spawn_blocking(move || {
            // Kept totals and the first queue key: no scan, however many records are pending.
            let view = store.pending_view()?;
            // Counts kept in the same writes as the buckets and customers: no scan either.
            let customers = store.customer_counts()?;
            let by_status: std::collections::HashMap<String, u64> = customers.by_status.into_iter().collect();
            let not_subscribed = customers.not_subscribed;
            Ok::<_, crate::store::StoreError>((
                store.open_bucket_count()?,
                store.size_on_disk(),
                view,
                store.sealed_through()?,
                by_status,
                not_subscribed,
                store.lost()?,
                crate::silence::last_ended_hour(&store, &settings, now)?,
            ))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(store_status)?;
        let (open_buckets, size, view, sealed_through, by_status, not_subscribed, lost, drops) = snapshot;
        let backlog = backlog_of(&view);
        let counters = self.store.counters();
        let rate: f64 = self
            .pipeline
            .submit_stats
            .iter()
            .map(|(_, s)| s.pace_milli_calls.load(Ordering::Relaxed) as f64 / 1000.0)
            .sum();
        let mut status = v1::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: Some(timestamp(self.started_at_ms)),
            now: Some(timestamp(now)),
            data_dir: self.store.data_dir().display().to_string(),
            schema_version: SCHEMA_VERSION,
            events_stored: counters.events_stored.load(Ordering::Relaxed),
            open_buckets,
            store_size_bytes: size,
            products: self
                .config
                .products
                .iter()
                .map(|(name, p)| v1::ProductStatus {
                    name: name.clone(),
                    identity: p.identity.as_str().to_string(),
                    dimensions: p.dimensions.clone(),
                })
                .collect(),
            pending_records: backlog.pending,
            oldest_pending_age_seconds: backlog.oldest_pending_age_seconds(now),
            most_urgent_deadline: backlog.most_urgent_deadline_ms.map(timestamp),
            sealed_through: sealed_through.map(timestamp),
            accounts: self
                .pipeline
                .submit_stats
                .iter()
                .map(|(name, s)| {
                    let last = s.last_success_ms.load(Ordering::Relaxed);
                    v1::AccountStatus {
                        name: name.clone(),
                        last_successful_call: (last != 0).then(|| timestamp(last)),
                        clock_skew_ms: s
                            .skew
                            .observed
                            .load(Ordering::Relaxed)
                            .then(|| s.skew.millis.load(Ordering::Relaxed)),
                        calls_ok: s.calls_ok.load(Ordering::Relaxed),
                        calls_throttled: s.calls_throttled.load(Ordering::Relaxed),
                        calls_failed: s.calls_failed.load(Ordering::Relaxed),
                        records_accepted: s.records_accepted.load(Ordering::Relaxed),
                        records_rejected: s.rejected.total(),
                        records_expired: s.records_expired.load(Ordering::Relaxed),
                    }
                })
                .collect(),
            late_events: counters.late_events.load(Ordering::Relaxed),
            records_at_risk: backlog.at_risk,
            customers_by_status: by_status,
            customers_not_subscribed: not_subscribed,
            records_lost: lost.records,
            units_lost: lost.units,
            disk_free_bytes: counters.disk_free_bytes.load(std::sync::atomic::Ordering::Relaxed),
            disk_reserve_bytes: counters.disk_reserve_bytes.load(std::sync::atomic::Ordering::Relaxed),
            disk_full: counters.disk_full.load(std::sync::atomic::Ordering::Relaxed),
            usage_drops: drops.iter().map(drop_to_wire).collect(),
            pending_in_flight: view.totals.in_flight,
            pending_units: view.totals.units,
            units_at_risk: view.totals.at_risk_units,
            projected_drain_seconds: crate::domain::backlog::Backlog::drain_seconds(
                view.totals.records,
                crate::submit::MAX_RECORDS_PER_CALL,
                rate,
            )
            .unwrap_or(0),
            policy: Some(submission_policy(&self.config)),
            deployment_checks: self
                .pipeline
                .deployment
                .snapshot()
                .into_iter()
                .map(|(product, check, r)| v1::DeploymentCheck {
                    product,
                    check,
                    state: r.state.to_string(),
                    error_code: r.error_code,
                    message: r.message,
                    at: Some(timestamp(r.at_ms)),
                    attempts: r.attempts,
                    signature: r.signature,
                })
                .collect(),
            fleet: None,
        };
        if let Some(node) = &self.pipeline.fleet {
            crate::fleet::status_view::fill(node, &self.store, &self.config, now, rate, &mut status).await;
        }
        Ok(status)
    }

    /// `Admin.Report`: the reconciliation report in one reply, read in pages (re-read if a seal moved usage
    /// meanwhile, so its parts cannot disagree), refused once it would pass what a client decodes; and the usage
    /// drops of the last ended hour.
    pub async fn report(&self) -> Result<v1::ReportResponse, Status> {
        let pages = self.pipeline.report_pages(&self.store);
        let report =
            super::report_stream::bounded_report(pages.as_ref(), super::report_stream::CLIENT_DECODE_LIMIT).await?;
        let store = self.store.clone();
        let (settings, now) = (crate::silence::settings(&self.config), self.clock.now_ms());
        let drops = match &self.pipeline.fleet {
            // The shared ledger's (the spool holds no usage).
            Some(node) => crate::fleet::hours::of_fleet(node, &self.config, now).await.map_err(Status::unavailable)?,
            None => tokio::task::spawn_blocking(move || crate::silence::last_ended_hour(&store, &settings, now))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(store_status)?,
        };
        let mut wire = super::convert::report_to_wire(&report);
        wire.usage_drops = drops.iter().map(drop_to_wire).collect();
        Ok(wire)
    }
}

/// What `status` and `/metrics` show of the queue, from its kept totals.
pub fn backlog_of(view: &crate::store::pending::PendingView) -> crate::domain::backlog::Backlog {
    view.backlog()
}

/// `meterd status --json`, and the dashboard's `status`: one rendering of a status answer.
pub fn to_json(s: &v1::StatusResponse) -> serde_json::Value {
    let ts = |t: &Option<meterd_proto::Timestamp>| {
        t.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000 + i64::from(t.nanos / 1_000_000))).unwrap_or_default()
    };
    serde_json::json!({
        "version": s.version,
        "started_at": ts(&s.started_at),
        "now": ts(&s.now),
        "data_dir": s.data_dir,
        "schema_version": s.schema_version,
        "events_stored": s.events_stored,
        "open_buckets": s.open_buckets,
        "store_size_bytes": s.store_size_bytes,
        "disk_free_bytes": s.disk_free_bytes,
        "disk_reserve_bytes": s.disk_reserve_bytes,
        "disk_full": s.disk_full,
        "late_events": s.late_events,
        "records_at_risk": s.records_at_risk,
        "customers_by_status": s.customers_by_status,
        "customers_not_subscribed": s.customers_not_subscribed,
        "records_lost": s.records_lost,
        "units_lost": s.units_lost,
        "sealed_through": ts(&s.sealed_through),
        "pending_records": s.pending_records,
        "pending_in_flight": s.pending_in_flight,
        "pending_units": s.pending_units,
        "units_at_risk": s.units_at_risk,
        "projected_drain_seconds": s.projected_drain_seconds,
        "oldest_pending_age_seconds": s.oldest_pending_age_seconds,
        "most_urgent_deadline": ts(&s.most_urgent_deadline),
        "usage_drops": s.usage_drops.iter().map(super::convert::drop_json).collect::<Vec<_>>(),
        "accounts": s.accounts.iter().map(|a| serde_json::json!({
            "name": a.name,
            "last_successful_call": ts(&a.last_successful_call),
            "clock_skew_ms": a.clock_skew_ms,
            "calls_ok": a.calls_ok, "calls_throttled": a.calls_throttled, "calls_failed": a.calls_failed,
            "records_accepted": a.records_accepted, "records_rejected": a.records_rejected,
            "records_expired": a.records_expired,
        })).collect::<Vec<_>>(),
        "products": s.products.iter().map(|p| serde_json::json!({
            "name": p.name, "identity": p.identity, "dimensions": p.dimensions,
        })).collect::<Vec<_>>(),
        "fleet": s.fleet.as_ref().map(crate::fleet::status_view::json),
        "deployment_checks": s.deployment_checks.iter().map(|c| serde_json::json!({
            "product": c.product, "check": c.check, "state": c.state, "error_code": c.error_code,
            "message": c.message, "at": ts(&c.at), "attempts": c.attempts, "signature": c.signature,
        })).collect::<Vec<_>>(),
    })
}

/// The pipeline rules a client checks usage against before sending it (`meterd import`).
fn submission_policy(config: &Config) -> v1::SubmissionPolicy {
    let p = &config.pipeline;
    v1::SubmissionPolicy {
        submission_window_seconds: p.submission_window.as_secs(),
        safety_margin_seconds: p.safety_margin.as_secs(),
        max_lateness_seconds: p.max_lateness.as_secs(),
        late_usage: match p.late_usage {
            crate::config::LateUsage::Carry => "carry",
            crate::config::LateUsage::Reject => "reject",
        }
        .to_string(),
        max_batch_events: u32::try_from(config.ingest.max_batch_events).unwrap_or(u32::MAX),
    }
}
