//! Optional plain-HTTP endpoints for the marketplace's own callers, on two paths a proxy can route apart:
//!
//! - `/marketplace/fulfillment`: the SaaS fulfillment form the buyer's browser posts (`x-amzn-marketplace-token`).
//!   Public by design; rate limited per client address because each valid form costs a ResolveCustomer call.
//! - `/internal/marketplace/events`: lifecycle events, machine to machine. Every event is authenticated — SNS
//!   deliveries by their signature and topic, EventBridge API destinations by a shared secret — or refused
//!   (401/403, counted, logged without the body). Without either configured the path does not exist (404).
//!
//! It only listens on loopback; the seller's HTTPS reverse proxy sits in front.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::rate_limit::{PerIp, client_ip};
use super::sns::{self, SnsError, SnsType, SnsVerifier};
use crate::config::{MarketplaceHttpConfig, SNS_CERT_HOST_PATTERN};
use crate::customers::{CustomerError, Customers, EventResult};
use crate::metrics::{Collect, CounterVec, Encoder, Registry};

pub const FULFILLMENT_PATH: &str = "/marketplace/fulfillment";
pub const EVENTS_PATH: &str = "/internal/marketplace/events";
const MAX_EVENT_BYTES: usize = 256 * 1024;

/// How events are authenticated; at least one of the two is set.
struct EventsAuth {
    /// (header name, secret) of the EventBridge API destination's connection.
    secret: Option<(String, Vec<u8>)>,
    accounts: Vec<String>,
    sns: Option<SnsVerifier>,
}

#[derive(Clone)]
pub struct MarketplaceHttp {
    customers: Customers,
    redirect_url: String,
    product: String,
    events: Option<Arc<EventsAuth>>,
    form_limit: Arc<PerIp>,
    events_limit: Arc<PerIp>,
    trusted_proxies: Arc<Vec<IpAddr>>,
    refused: Arc<Refused>,
}

/// Requests refused, by (endpoint, reason): unauthenticated events, rate limits, bad forms.
#[derive(Default)]
struct Refused(CounterVec<(String, String)>);

impl Collect for Refused {
    fn collect(&self, out: &mut Encoder) -> Result<(), String> {
        let name = "meterd_marketplace_requests_refused_total";
        out.family(
            name,
            "counter",
            "Marketplace HTTP requests refused, by endpoint and reason (unauthenticated, rate limited, ...).",
        );
        for ((endpoint, reason), n) in self.0.snapshot() {
            out.sample(name, &[("endpoint", &endpoint), ("reason", &reason)], n);
        }
        Ok(())
    }
}

impl MarketplaceHttp {
    /// Reads the secret and trust-root files named in the config; errors name the key.
    pub fn from_config(
        m: &MarketplaceHttpConfig,
        customers: Customers,
        product: String,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let secret = match &m.events_secret_file {
            Some(path) => {
                let raw = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("marketplace.events_secret_file: cannot read {}: {e}", path.display())
                })?;
                let s = raw.trim();
                anyhow::ensure!(
                    s.len() >= 16,
                    "marketplace.events_secret_file: the secret must be at least 16 characters (it is {})",
                    s.len()
                );
                Some((m.events_secret_header.clone(), s.as_bytes().to_vec()))
            }
            None => None,
        };
        let sns = if m.sns_topics.is_empty() {
            None
        } else {
            let roots = match &m.sns_extra_roots_file {
                Some(p) => Some(std::fs::read(p).map_err(|e| {
                    anyhow::anyhow!("marketplace.sns_extra_roots_file: cannot read {}: {e}", p.display())
                })?),
                None => None,
            };
            let pattern = m.sns_cert_host_pattern.as_deref().unwrap_or(SNS_CERT_HOST_PATTERN);
            Some(SnsVerifier::new(m.sns_topics.clone(), pattern, roots.as_deref())?)
        };
        let events = (secret.is_some() || sns.is_some())
            .then(|| Arc::new(EventsAuth { secret, accounts: m.events_accounts.clone(), sns }));
        let trusted = m.trusted_proxies.iter().filter_map(|p| p.parse().ok()).collect();
        Ok(Self {
            customers,
            redirect_url: m.redirect_url.clone(),
            product,
            events,
            form_limit: Arc::new(PerIp::new(&m.rate_limit)),
            events_limit: Arc::new(PerIp::new(&m.events_rate_limit)),
            trusted_proxies: Arc::new(trusted),
            refused: {
                let r = Arc::new(Refused::default());
                registry.register(r.clone());
                r
            },
        })
    }

    pub fn router(self) -> Router {
        let mut r = Router::new().route(FULFILLMENT_PATH, post(fulfillment));
        if self.events.is_some() {
            r = r.route(EVENTS_PATH, post(events));
        }
        r.with_state(self)
    }

    fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        client_ip(peer, xff, &self.trusted_proxies)
    }

    /// Counts and logs a refusal — never the body or the credentials.
    fn refuse(&self, endpoint: &str, client: IpAddr, code: StatusCode, reason: &str, detail: &str) -> Response {
        self.refused.0.add((endpoint.to_string(), reason.to_string()), 1);
        tracing::warn!(endpoint, %client, reason, detail, "marketplace request refused");
        (code, axum::Json(serde_json::json!({ "error": detail, "reason": reason }))).into_response()
    }
}

fn error_status(e: &CustomerError) -> StatusCode {
    match e {
        CustomerError::Invalid { .. } | CustomerError::TokenExpired(_) => StatusCode::BAD_REQUEST,
        CustomerError::NotFound(_) => StatusCode::NOT_FOUND,
        CustomerError::Unavailable(_) | CustomerError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn fulfillment(
    State(h): State<MarketplaceHttp>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let client = h.client(peer, &headers);
    if !h.form_limit.allow(client) {
        return h.refuse("fulfillment", client, StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests");
    }
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

/// Whether the request carries the API destination's secret: in its own header, or as the password of
/// `Authorization: Basic` (a basic-auth connection). Constant-time comparison.
fn has_secret(headers: &HeaderMap, name: &str, secret: &[u8]) -> bool {
    if let Some(v) = headers.get(name) {
        return bool::from(v.as_bytes().ct_eq(secret));
    }
    let basic = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "));
    let Some(decoded) = basic.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()) else {
        return false;
    };
    match decoded.iter().position(|&b| b == b':') {
        Some(i) => bool::from(decoded[i + 1..].ct_eq(secret)),
        None => false,
    }
}

async fn events(
    State(h): State<MarketplaceHttp>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const EP: &str = "events";
    let client = h.client(peer, &headers);
    if !h.events_limit.allow(client) {
        return h.refuse(EP, client, StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests");
    }
    let auth = h.events.clone().expect("route exists only with events auth");
    if body.len() > MAX_EVENT_BYTES {
        return h.refuse(EP, client, StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body: larger than 256 KiB");
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return h.refuse(EP, client, StatusCode::BAD_REQUEST, "malformed", "body: not UTF-8");
    };
    let doc: serde_json::Value = match serde_json::from_str(text) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => return h.refuse(EP, client, StatusCode::BAD_REQUEST, "malformed", "body: not a JSON object"),
    };
    if headers.contains_key("x-amz-sns-message-type") || sns::is_envelope(&doc) {
        return sns_delivery(&h, &auth, client, &doc).await;
    }
    let Some((name, secret)) = &auth.secret else {
        return h.refuse(
            EP,
            client,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "only signed SNS messages are accepted",
        );
    };
    if !has_secret(&headers, name, secret) {
        return h.refuse(EP, client, StatusCode::UNAUTHORIZED, "unauthenticated", "missing or wrong events secret");
    }
    let source = doc.get("source").and_then(|v| v.as_str()).unwrap_or("");
    if source != "aws.agreement-marketplace" {
        return h.refuse(EP, client, StatusCode::FORBIDDEN, "source", "source: must be aws.agreement-marketplace");
    }
    if doc.get("detail-type").and_then(|v| v.as_str()).is_none() {
        return h.refuse(EP, client, StatusCode::BAD_REQUEST, "malformed", "detail-type: is required");
    }
    let account = doc.get("account").and_then(|v| v.as_str()).unwrap_or("");
    if !auth.accounts.is_empty() && !auth.accounts.iter().any(|a| a == account) {
        return h.refuse(EP, client, StatusCode::FORBIDDEN, "account", "account: not in marketplace.events_accounts");
    }
    apply(&h, text).await
}

async fn sns_delivery(h: &MarketplaceHttp, auth: &EventsAuth, client: IpAddr, doc: &serde_json::Value) -> Response {
    const EP: &str = "events";
    let Some(verifier) = &auth.sns else {
        return h.refuse(EP, client, StatusCode::FORBIDDEN, "topic", "SNS: no marketplace.sns_topics configured");
    };
    let env = match sns::parse(doc) {
        Ok(e) => e,
        Err(e) => return h.refuse(EP, client, StatusCode::BAD_REQUEST, "malformed", &e.to_string()),
    };
    if let Err(e) = verifier.verify(&env).await {
        return sns_refusal(h, client, &e);
    }
    match env.kind {
        SnsType::SubscriptionConfirmation => match verifier.confirm(&env).await {
            Ok(()) => {
                tracing::info!(topic = %env.topic_arn, "SNS subscription confirmed");
                axum::Json(serde_json::json!({ "confirmed": true, "topic": env.topic_arn })).into_response()
            }
            Err(e) => sns_refusal(h, client, &e),
        },
        SnsType::UnsubscribeConfirmation => {
            tracing::warn!(topic = %env.topic_arn, "SNS says this endpoint was unsubscribed; resubscribe to keep events");
            axum::Json(serde_json::json!({ "unsubscribed": true, "topic": env.topic_arn })).into_response()
        }
        // The envelope carries the message and its MessageId (used to drop redeliveries).
        SnsType::Notification => apply(h, &doc.to_string()).await,
    }
}

fn sns_refusal(h: &MarketplaceHttp, client: IpAddr, e: &SnsError) -> Response {
    match e {
        SnsError::Malformed { .. } => h.refuse("events", client, StatusCode::BAD_REQUEST, "malformed", &e.to_string()),
        SnsError::Refused { reason, detail } => h.refuse("events", client, StatusCode::FORBIDDEN, reason, detail),
        // Not counted as a refusal: SNS retries, and the certificate host may just be unreachable for a moment.
        SnsError::Unavailable(m) => {
            tracing::warn!(%client, error = %m, "SNS certificate or confirmation fetch failed");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "error": m }))).into_response()
        }
    }
}

async fn apply(h: &MarketplaceHttp, text: &str) -> Response {
    match h.customers.apply_event(text).await {
        Ok(EventResult { event, outcome, unconfirmed }) => axum::Json(serde_json::json!({
            "applied": outcome.applied,
            "status": outcome.status.as_ref().map(|s| s.name()),
            "records_sealed": outcome.records_sealed,
            "unknown_agreement": outcome.unknown_agreement,
            "unconfirmed": unconfirmed,
            "event": event.source_type,
        }))
        .into_response(),
        Err(e) => (error_status(&e), axum::Json(serde_json::json!({ "error": e.to_string() }))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_in_its_header_or_as_basic_auth_password() {
        let secret = b"0123456789abcdef-secret";
        let mut h = HeaderMap::new();
        assert!(!has_secret(&h, "x-meterd-events-key", secret));
        h.insert("x-meterd-events-key", "0123456789abcdef-secret".parse().unwrap());
        assert!(has_secret(&h, "x-meterd-events-key", secret));
        h.insert("x-meterd-events-key", "0123456789abcdef-secreT".parse().unwrap());
        assert!(!has_secret(&h, "x-meterd-events-key", secret), "a wrong value in the header is not rescued by basic");
        let mut b = HeaderMap::new();
        let enc = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        b.insert(header::AUTHORIZATION, enc("meterd:0123456789abcdef-secret").parse().unwrap());
        assert!(has_secret(&b, "x-meterd-events-key", secret));
        b.insert(header::AUTHORIZATION, enc("meterd:wrong").parse().unwrap());
        assert!(!has_secret(&b, "x-meterd-events-key", secret));
        b.insert(header::AUTHORIZATION, enc("0123456789abcdef-secret").parse().unwrap());
        assert!(!has_secret(&b, "x-meterd-events-key", secret), "no user:password form");
    }
}
