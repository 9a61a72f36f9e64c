//! The admin listener (plain HTTP, loopback): `/metrics` for Prometheus, `/healthz` (the process answers) and
//! `/readyz` (the store accepts reads; the agent can take usage).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::clock::SharedClock;
use crate::metrics::{Metrics, Snapshot, render};
use crate::pipeline::Pipeline;
use crate::store::Store;

#[derive(Clone)]
struct Admin {
    store: Store,
    clock: SharedClock,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
}

pub fn router(store: Store, clock: SharedClock, pipeline: Pipeline, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Admin { store, clock, pipeline, metrics })
}

async fn ready(State(a): State<Admin>) -> Response {
    let c = a.store.counters();
    if c.disk_full.load(std::sync::atomic::Ordering::Relaxed) {
        let full = crate::store::space::DiskFull {
            free_bytes: c.disk_free_bytes.load(std::sync::atomic::Ordering::Relaxed),
            reserve_bytes: c.disk_reserve_bytes.load(std::sync::atomic::Ordering::Relaxed),
            free_inodes: u64::MAX,
        };
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{full}: ingest refused\n")).into_response();
    }
    match tokio::task::spawn_blocking(move || a.store.sealed_through()).await {
        Ok(Ok(_)) => "ready\n".into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn metrics_text(State(a): State<Admin>) -> Response {
    let now_ms = a.clock.now_ms();
    let gathered = tokio::task::spawn_blocking(move || {
        let pending = a.store.pending_records(usize::MAX)?;
        let backlog = crate::domain::backlog::Backlog::of(&pending, |t| a.store.mapping(t).map(|m| m.is_some()))?;
        let snapshot = Snapshot {
            now_ms,
            store: a.store.counters(),
            submit: &a.pipeline.submit_stats,
            pending: backlog.pending,
            oldest_pending_hour_ms: backlog.oldest_pending_hour_ms,
            most_urgent_deadline_ms: backlog.most_urgent_deadline_ms,
            at_risk: backlog.at_risk,
            open_buckets: a.store.open_bucket_count(),
            store_bytes: a.store.size_on_disk(),
            lost: a.store.lost()?,
        };
        Ok::<_, crate::store::StoreError>(render(&a.metrics, &snapshot))
    })
    .await;
    match gathered {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
