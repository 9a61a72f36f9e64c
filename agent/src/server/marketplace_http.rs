//! Optional plain-HTTP endpoints for the marketplace's own callers: the SaaS fulfillment form the buyer's
//! browser posts (`x-amzn-marketplace-token`), and lifecycle events (EventBridge → API destination, or SNS
//! → HTTP). Serve it behind the seller's HTTPS reverse proxy; it only listens on loopback itself.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::customers::{CustomerError, Customers};

#[derive(Clone)]
struct Http {
    customers: Customers,
    redirect_url: String,
    product: String,
}

pub fn router(customers: Customers, redirect_url: String, product: String) -> Router {
    Router::new()
        .route("/marketplace/fulfillment", post(fulfillment))
        .route("/marketplace/events", post(events))
        .with_state(Http { customers, redirect_url, product })
}

fn error_status(e: &CustomerError) -> StatusCode {
    match e {
        CustomerError::Invalid { .. } | CustomerError::TokenExpired(_) => StatusCode::BAD_REQUEST,
        CustomerError::NotFound(_) => StatusCode::NOT_FOUND,
        CustomerError::Unavailable(_) | CustomerError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn fulfillment(
    State(h): State<Http>,
    Query(q): Query<HashMap<String, String>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(token) = form.get("x-amzn-marketplace-token").filter(|t| !t.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "x-amzn-marketplace-token: missing from the form\n").into_response();
    };
    let product = q.get("product").cloned().unwrap_or_else(|| h.product.clone());
    match h.customers.resolve_new_tenant(token, &product).await {
        Ok((m, _)) => {
            let sep = if h.redirect_url.contains('?') { '&' } else { '?' };
            let location = format!("{}{sep}tenant_id={}", h.redirect_url, m.tenant_id);
            (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
        }
        Err(e) => (error_status(&e), format!("{e}\n")).into_response(),
    }
}

async fn events(State(h): State<Http>, body: String) -> Response {
    match h.customers.apply_event(&body).await {
        Ok((ev, out)) => axum::Json(serde_json::json!({
            "applied": out.applied,
            "status": out.status.as_ref().map(|s| s.name()),
            "records_sealed": out.records_sealed,
            "unknown_agreement": out.unknown_agreement,
            "event": ev.source_type,
        }))
        .into_response(),
        Err(e) => (error_status(&e), axum::Json(serde_json::json!({ "error": e.to_string() }))).into_response(),
    }
}
