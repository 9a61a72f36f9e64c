//! `meterd.v1.Admin`: what operators and `meterd status|flush|report` ask the agent.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use meterd_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::convert::{store_status, timestamp};
use crate::clock::{SharedClock, UnixMillis};
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::store::{SCHEMA_VERSION, Store};

pub struct AdminService {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: SharedClock,
    pub pipeline: Pipeline,
    pub started_at_ms: UnixMillis,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        let store = self.store.clone();
        let snapshot = tokio::task::spawn_blocking(move || {
            let pending = store.pending_records(usize::MAX)?;
            let backlog = crate::domain::backlog::Backlog::of(&pending, |t| store.mapping(t).map(|m| m.is_some()))?;
            let mut by_status = std::collections::HashMap::new();
            let mut not_subscribed = 0u64;
            for l in store.lifecycles()? {
                *by_status.entry(l.status.name().to_string()).or_insert(0u64) += 1;
                not_subscribed += u64::from(l.not_subscribed_at_ms.is_some());
            }
            Ok::<_, crate::store::StoreError>((
                store.open_bucket_count(),
                store.size_on_disk(),
                backlog,
                store.sealed_through()?,
                by_status,
                not_subscribed,
                store.lost()?,
            ))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(store_status)?;
        let (open_buckets, size, backlog, sealed_through, by_status, not_subscribed, lost) = snapshot;
        let now = self.clock.now_ms();
        let counters = self.store.counters();
        Ok(Response::new(v1::StatusResponse {
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
                        records_rejected: s.records_rejected.load(Ordering::Relaxed),
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
        }))
    }

    async fn flush(&self, _: Request<v1::FlushRequest>) -> Result<Response<v1::FlushResponse>, Status> {
        let s = self.pipeline.flush().await.map_err(store_status)?;
        Ok(Response::new(v1::FlushResponse {
            records_sealed: s.records,
            hours_carried_only: s.carried_only,
            sealed_through: s.sealed_through.map(timestamp),
        }))
    }

    async fn repack(&self, _: Request<v1::RepackRequest>) -> Result<Response<v1::RepackResponse>, Status> {
        let r = self.store.repack().await.map_err(store_status)?;
        Ok(Response::new(v1::RepackResponse {
            keys: r.keys,
            bytes_before: r.bytes_before,
            bytes_after: r.bytes_after,
            duration_ms: r.millis,
        }))
    }

    async fn report(&self, _: Request<v1::ReportRequest>) -> Result<Response<v1::ReportResponse>, Status> {
        let snapshot = self.store.snapshot().await.map_err(store_status)?;
        // Building the rows is pure work over the snapshot, kept off the async workers.
        let report = tokio::task::spawn_blocking(move || crate::report::from_snapshot(&snapshot))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)?;
        Ok(Response::new(super::convert::report_to_wire(&report)))
    }
}
