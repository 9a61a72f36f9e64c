//! IAM database authentication for RDS / Aurora PostgreSQL (`[fleet] iam_auth = true`): the password of every new
//! connection is an authentication token — a SigV4-presigned `connect` request for the database user, signed
//! for the `rds-db` service in the database's Region with the agent's AWS credentials (the standard chain: the
//! environment, a web identity (EKS IRSA / Pod Identity), the instance or task role, a profile). A token is
//! accepted for 15 minutes after it was made, so one is made for each connection, never kept: a session that
//! lasts longer stays open (RDS checks the token only when a session starts), a new one gets a fresh token.
//!
//! The signing is `aws-sigv4`'s, the crate the AWS SDK for Rust signs with (its RDS token generator does the
//! same presign); this module only says what is signed. RDS accepts IAM tokens only over TLS, so IAM
//! authentication requires an `sslmode` that encrypts ([`crate::connect::Database::with_iam`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// How long RDS accepts a token after it was made (the most it allows).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The service name RDS IAM tokens are signed for.
const SERVICE: &str = "rds-db";

#[derive(Debug, thiserror::Error)]
pub enum IamError {
    #[error("fleet.iam_auth: no AWS credentials for the RDS authentication token: {0}")]
    Credentials(String),
    #[error("fleet.iam_auth: cannot sign the RDS authentication token: {0}")]
    Sign(String),
}

/// The clock tokens are dated by (the system's; tests pin it).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What makes tokens: the database's Region, the AWS credentials and the clock.
#[derive(Clone)]
pub struct IamAuth {
    region: String,
    credentials: SharedCredentialsProvider,
    clock: Clock,
}

impl std::fmt::Debug for IamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IamAuth").field("region", &self.region).finish_non_exhaustive()
    }
}

impl IamAuth {
    pub fn new(region: impl Into<String>, credentials: SharedCredentialsProvider) -> Self {
        IamAuth { region: region.into(), credentials, clock: Arc::new(SystemTime::now) }
    }

    /// Tokens dated by `clock` instead of the system clock (tests).
    pub fn with_clock(self, clock: Clock) -> Self {
        IamAuth { clock, ..self }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// A fresh token for `user` at `host:port`, dated now. The credentials provider caches what it fetched (the
    /// SDK's chain refreshes temporary credentials before they expire).
    pub async fn token(&self, host: &str, port: u16, user: &str) -> Result<String, IamError> {
        let credentials = self.credentials.provide_credentials().await.map_err(|e| IamError::Credentials(chain(&e)))?;
        auth_token(host, port, user, &self.region, &credentials, (self.clock)())
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// The RDS IAM authentication token for `user` at `host:port` in `region`, signed with `credentials` at `time`:
/// `host:port/?Action=connect&DBUser=…&X-Amz-…&X-Amz-Signature=…` (a presigned GET without its scheme). Pure, so
/// it is tested against the algorithm with a fixed clock.
pub fn auth_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<String, IamError> {
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| IamError::Sign(e.to_string()))?
        .into();
    let user: String = url_encode(user);
    let url = format!("https://{host}:{port}/?Action=connect&DBUser={user}");
    let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| IamError::Sign(e.to_string()))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| IamError::Sign(e.to_string()))?.into_parts();
    let mut request = http::Request::builder().uri(&url).body(()).map_err(|e| IamError::Sign(e.to_string()))?;
    instructions.apply_to_request_http1x(&mut request);
    let signed = request.uri().to_string();
    Ok(signed.strip_prefix("https://").unwrap_or(&signed).to_string())
}

/// Percent-encodes a query value as SigV4 does (everything but the unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
