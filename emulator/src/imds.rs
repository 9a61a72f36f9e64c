//! The EC2 instance metadata service (IMDSv2), the part an agent on an instance uses: a session token, the
//! instance's Region and its instance profile's temporary credentials. Point an SDK at it with
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT=<emulator URL>` to test what runs on the buyer's instance — credentials
//! from the standard chain, the Region from the instance — without EC2. `GET /_emulator/imds` shows what was
//! asked and which access keys signed the AWS calls.

use std::collections::BTreeSet;
use std::sync::Mutex;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Serialize;

use crate::Emulator;

/// The emulated instance.
pub const REGION: &str = "us-east-1";
pub const ROLE: &str = "meterd-instance-role";
pub const ACCESS_KEY_ID: &str = "ASIAEMULATORIMDS0001";
const TOKEN: &str = "emulator-imds-session-token";

#[derive(Debug, Default, Clone, Serialize)]
pub struct ImdsState {
    /// IMDSv2 session tokens handed out (`PUT /latest/api/token`).
    pub tokens: u64,
    pub region_requests: u64,
    pub credential_requests: u64,
    /// Metadata reads without a valid session token (IMDSv1): refused with 401, as IMDSv2-only instances do.
    pub refused_without_token: u64,
    /// Access key ids that signed AWS API calls (from the SigV4 `Authorization` header).
    pub access_keys: BTreeSet<String>,
}

#[derive(Default)]
pub(crate) struct Imds(pub Mutex<ImdsState>);

impl Imds {
    fn with<T>(&self, f: impl FnOnce(&mut ImdsState) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Notes which access key signed an AWS call.
    pub fn saw_authorization(&self, headers: &HeaderMap) {
        let key = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').next())
            .map(str::to_string);
        if let Some(k) = key {
            self.with(|s| s.access_keys.insert(k));
        }
    }
}

pub(crate) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/latest/api/token", put(token))
        .route("/latest/meta-data/placement/region", get(region))
        .route("/latest/meta-data/iam/security-credentials/", get(role))
        .route("/latest/meta-data/iam/security-credentials/{role}", get(credentials))
}

fn authorized(emu: &Emulator, headers: &HeaderMap) -> bool {
    let ok = headers.get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok()) == Some(TOKEN);
    if !ok {
        emu.shared.imds.with(|s| s.refused_without_token += 1);
    }
    ok
}

async fn token(State(emu): State<Emulator>, headers: HeaderMap) -> Response {
    let ttl = headers.get("x-aws-ec2-metadata-token-ttl-seconds").and_then(|v| v.to_str().ok()).map(str::to_string);
    let Some(ttl) = ttl.filter(|t| t.parse::<u32>().is_ok_and(|n| (1..=21_600).contains(&n))) else {
        return (StatusCode::BAD_REQUEST, "x-aws-ec2-metadata-token-ttl-seconds must be 1-21600").into_response();
    };
    emu.shared.imds.with(|s| s.tokens += 1);
    // IMDS echoes the TTL; the SDKs refuse a token without it.
    ([("x-aws-ec2-metadata-token-ttl-seconds", ttl)], TOKEN).into_response()
}

async fn region(State(emu): State<Emulator>, headers: HeaderMap) -> Response {
    if !authorized(&emu, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    emu.shared.imds.with(|s| s.region_requests += 1);
    REGION.into_response()
}

async fn role(State(emu): State<Emulator>, headers: HeaderMap) -> Response {
    if !authorized(&emu, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    ROLE.into_response()
}

async fn credentials(State(emu): State<Emulator>, headers: HeaderMap, Path(role): Path<String>) -> Response {
    if !authorized(&emu, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if role != ROLE {
        return StatusCode::NOT_FOUND.into_response();
    }
    emu.shared.imds.with(|s| s.credential_requests += 1);
    // Real time, not the service clock: the SDK compares the expiry with the machine's clock.
    let now = chrono::Utc::now();
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    Json(serde_json::json!({
        "Code": "Success",
        "LastUpdated": fmt(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": ACCESS_KEY_ID,
        "SecretAccessKey": "emulator-imds-secret",
        "Token": "emulator-imds-session",
        "Expiration": fmt(now + chrono::Duration::hours(6)),
    }))
    .into_response()
}

pub(crate) async fn inspect(State(emu): State<Emulator>) -> Response {
    Json(emu.shared.imds.with(|s| s.clone())).into_response()
}
