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

use crate::metrics::Registry;
use crate::store::Store;

#[derive(Clone)]
struct Admin {
    store: Store,
    registry: Arc<Registry>,
}

/// `token`: required on `/metrics` and `/api/…` when set (the listener is not loopback); refusals are counted
/// in `refused`, with the gRPC listener's.
pub fn router(
    source: super::status::Source,
    registry: Arc<Registry>,
    token: Option<String>,
    refused: Arc<super::auth::Refused>,
    extra: Router,
) -> Router {
    let admin = Admin { store: source.store.clone(), registry };
    // `extra`: more views behind the same token (fleet mode's `/fleet`).
    let guarded = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(admin.clone())
        .merge(super::dashboard::api(source))
        .merge(extra);
    let guarded = match token {
        Some(t) => {
            let token: Arc<[u8]> = Arc::from(t.into_bytes());
            guarded.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
                let (token, refused) = (token.clone(), refused.clone());
                async move { require_token(&token, &refused, req, next).await }
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

async fn require_token(expected: &[u8], refused: &super::auth::Refused, req: Request, next: Next) -> Response {
    if super::auth::authorized(expected, req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    refused.count();
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
    // Components may read the store: off the async workers.
    match tokio::task::spawn_blocking(move || a.registry.render()).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
