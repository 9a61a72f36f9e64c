//! The inspection API under `/_emulator/`: plain JSON (snake_case), separate from the AWS API, never faulted.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::Emulator;
use crate::config::{EmuCustomer, Faults};

pub(crate) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/ledger", get(ledger))
        .route("/totals", get(totals))
        .route("/counters", get(counters))
        .route("/requests", get(requests))
        .route("/cloudtrail", get(cloudtrail))
        .route("/reset", post(reset))
        .route("/customers", get(customers).put(add_customer).delete(remove_customer))
        .route("/faults", get(faults).put(set_faults))
        .route("/rate_limit", get(rate_limit).put(set_rate_limit))
        .route("/clock", get(clock).put(set_clock))
        .route("/agreements", get(agreements).put(set_agreement))
        .route("/register_usage/public_key", get(register_usage_public_key))
        .route("/entitlements", axum::routing::put(set_entitlement))
        .route("/imds", get(crate::imds::inspect))
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn body<T>(r: Result<Json<T>, JsonRejection>) -> Result<T, String> {
    r.map(|Json(v)| v).map_err(|e| e.body_text())
}

async fn ledger(State(emu): State<Emulator>) -> Response {
    Json(emu.ledger()).into_response()
}

async fn totals(State(emu): State<Emulator>) -> Response {
    Json(emu.totals()).into_response()
}

async fn counters(State(emu): State<Emulator>) -> Response {
    Json(emu.counters()).into_response()
}

async fn requests(State(emu): State<Emulator>) -> Response {
    Json(emu.requests()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudTrailQuery {
    format: Option<String>,
}

/// The metering calls processed, as a CloudTrail log file, or (`?format=lookup-events`) as `aws cloudtrail
/// lookup-events` prints them.
async fn cloudtrail(State(emu): State<Emulator>, q: axum::extract::Query<CloudTrailQuery>) -> Response {
    let st = emu.shared.lock();
    let dropped = st.cloudtrail.dropped.to_string();
    let body = match q.format.as_deref() {
        None | Some("log-file") => st.cloudtrail.log_file(),
        Some("lookup-events") => st.cloudtrail.lookup_events().to_string(),
        Some(other) => return bad_request(format!("format {other:?}: use log-file (default) or lookup-events")),
    };
    drop(st);
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::HeaderName::from_static("x-emulator-cloudtrail-dropped"), dropped.as_str()),
        ],
        body,
    )
        .into_response()
}

async fn reset(State(emu): State<Emulator>) -> StatusCode {
    emu.reset();
    StatusCode::NO_CONTENT
}

async fn register_usage_public_key(State(emu): State<Emulator>) -> Response {
    Json(emu.register_usage_public_key()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entitlement {
    product_code: String,
    entitled: bool,
}

async fn set_entitlement(State(emu): State<Emulator>, r: Result<Json<Entitlement>, JsonRejection>) -> Response {
    match body(r) {
        Ok(e) => {
            emu.set_entitled(&e.product_code, e.entitled);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_request(e),
    }
}

async fn customers(State(emu): State<Emulator>) -> Response {
    Json(emu.customers()).into_response()
}

async fn add_customer(State(emu): State<Emulator>, c: Result<Json<EmuCustomer>, JsonRejection>) -> Response {
    let c = match body(c) {
        Ok(c) => c,
        Err(e) => return bad_request(e),
    };
    match emu.try_add_customer(c) {
        Ok(()) => Json(emu.customers()).into_response(),
        Err(e) => bad_request(e.to_string()),
    }
}

#[derive(Serialize)]
struct Removed {
    removed: usize,
}

/// Removes every subscribed customer matching the fields given (e.g. just `license_arn`).
async fn remove_customer(State(emu): State<Emulator>, c: Result<Json<EmuCustomer>, JsonRejection>) -> Response {
    match body(c) {
        Ok(c) => Json(Removed { removed: emu.remove_customer(&c) }).into_response(),
        Err(e) => bad_request(e),
    }
}

async fn faults(State(emu): State<Emulator>) -> Response {
    Json(emu.faults()).into_response()
}

/// Replaces the fault settings (fields left out become 0).
async fn set_faults(State(emu): State<Emulator>, f: Result<Json<Faults>, JsonRejection>) -> Response {
    let f = match body(f) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    if let Err(e) = f.validate() {
        return bad_request(e.to_string());
    }
    emu.set_faults(f);
    Json(emu.faults()).into_response()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimit {
    per_sec: f64,
}

async fn rate_limit(State(emu): State<Emulator>) -> Response {
    Json(RateLimit { per_sec: emu.rate_limit() }).into_response()
}

async fn set_rate_limit(State(emu): State<Emulator>, r: Result<Json<RateLimit>, JsonRejection>) -> Response {
    let r = match body(r) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    if !r.per_sec.is_finite() || r.per_sec < 0.0 {
        return bad_request("per_sec must be a number >= 0 (0 turns the limit off)");
    }
    emu.set_rate_limit(r.per_sec);
    Json(RateLimit { per_sec: emu.rate_limit() }).into_response()
}

#[derive(Serialize)]
struct ClockView {
    offset_secs: i64,
    /// Service time, epoch seconds.
    now: i64,
    now_rfc3339: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockSet {
    offset_secs: i64,
}

fn clock_view(emu: &Emulator) -> ClockView {
    let now_ms = emu.now_millis();
    ClockView {
        offset_secs: emu.clock_offset_secs(),
        now: now_ms.div_euclid(1000),
        now_rfc3339: crate::clock::rfc3339(now_ms),
    }
}

async fn clock(State(emu): State<Emulator>) -> Response {
    Json(clock_view(&emu)).into_response()
}

async fn set_clock(State(emu): State<Emulator>, c: Result<Json<ClockSet>, JsonRejection>) -> Response {
    match body(c) {
        Ok(c) => {
            emu.set_clock_offset(c.offset_secs);
            Json(clock_view(&emu)).into_response()
        }
        Err(e) => bad_request(e),
    }
}

async fn agreements(State(emu): State<Emulator>) -> Response {
    Json(emu.agreements()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgreementStatus {
    agreement_id: String,
    status: String,
}

/// Sets an agreement's status as DescribeAgreement will answer it: `{"agreement_id": "...", "status": "TERMINATED"}`.
async fn set_agreement(State(emu): State<Emulator>, a: Result<Json<AgreementStatus>, JsonRejection>) -> Response {
    let a = match body(a) {
        Ok(a) => a,
        Err(e) => return bad_request(e),
    };
    match emu.set_agreement_status(&a.agreement_id, &a.status) {
        Ok(()) => Json(emu.agreements()).into_response(),
        Err(e) => bad_request(e.to_string()),
    }
}
