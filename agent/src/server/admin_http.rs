//! The admin listener (plain HTTP, loopback by default): `/metrics` for Prometheus, `/healthz` (the process
//! answers), `/readyz` (the store accepts reads; the agent can take usage) and the dashboard (`/`,
//! `/api/dashboard`, `server/dashboard.rs`). On a non-loopback address (allowed only with `server.token_file`),
//! `/metrics` and `/api/…` need the same bearer token as gRPC; probes and the page's static assets stay open.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::clock::SharedClock;
use crate::metrics::{Metrics, Snapshot, render};
use crate::pipeline::Pipeline;
use crate::store::Store;

#[derive(Clone)]
struct Admin {
    config: Arc<crate::config::Config>,
    store: Store,
    clock: SharedClock,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
}

/// `token`: required on `/metrics` and `/api/…` when set (the listener is not loopback).
pub fn router(source: super::status::Source, metrics: Arc<Metrics>, token: Option<String>) -> Router {
    let admin = Admin {
        config: source.config.clone(),
        store: source.store.clone(),
        clock: source.clock.clone(),
        pipeline: source.pipeline.clone(),
        metrics,
    };
    let guarded = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(admin.clone())
        .merge(super::dashboard::api(source));
    let guarded = match token {
        Some(t) => {
            let token: Arc<[u8]> = Arc::from(t.into_bytes());
            guarded.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
                let token = token.clone();
                async move { require_token(&token, req, next).await }
            }))
        }
        None => guarded,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(admin)
        .merge(super::dashboard::assets())
        .merge(guarded)
}

async fn require_token(expected: &[u8], req: Request, next: Next) -> Response {
    if super::auth::authorized(expected, req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    super::auth::REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(path = %req.uri().path(), "admin request refused: missing or wrong bearer token");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a valid bearer token is required (authorization: Bearer <token>, the token of server.token_file)\n",
    )
        .into_response()
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
        let backlog = super::status::backlog_of(&a.store.pending_view()?);
        let settings = crate::silence::settings(&a.config);
        let drops = crate::silence::last_ended_hour(&a.store, &settings, now_ms)?;
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
        let mut body = render(&a.metrics, &snapshot);
        body.push_str(&a.pipeline.deployment.render_metrics());
        body.push_str(&crate::silence::render_metric(&a.config, &drops));
        Ok::<_, crate::store::StoreError>(body)
    })
    .await;
    match gathered {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
