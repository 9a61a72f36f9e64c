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

/// Credentials are fetched again this long before they expire (temporary ones: a web identity, a role).
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// What makes tokens: the database's Region, the AWS credentials and the clock.
#[derive(Clone)]
pub struct IamAuth {
    region: String,
    credentials: SharedCredentialsProvider,
    clock: Clock,
    /// The credentials last fetched: the chain's providers (STS for a web identity, the instance metadata
    /// service) are not asked again for every connection while these are good.
    cached: Arc<tokio::sync::Mutex<Option<Credentials>>>,
}

impl std::fmt::Debug for IamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IamAuth").field("region", &self.region).finish_non_exhaustive()
    }
}

impl IamAuth {
    pub fn new(region: impl Into<String>, credentials: SharedCredentialsProvider) -> Self {
        IamAuth { region: region.into(), credentials, clock: Arc::new(SystemTime::now), cached: Arc::default() }
    }

    /// Tokens dated by `clock` instead of the system clock (tests).
    pub fn with_clock(self, clock: Clock) -> Self {
        IamAuth { clock, ..self }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// A fresh token for `user` at `host:port`, dated now.
    pub async fn token(&self, host: &str, port: u16, user: &str) -> Result<String, IamError> {
        let now = (self.clock)();
        let credentials = {
            let mut cached = self.cached.lock().await;
            let fresh = |c: &Credentials| c.expiry().is_none_or(|e| now + REFRESH_BEFORE_EXPIRY < e);
            match cached.as_ref().filter(|c| fresh(c)) {
                Some(c) => c.clone(),
                None => {
                    let c =
                        self.credentials.provide_credentials().await.map_err(|e| IamError::Credentials(chain(&e)))?;
                    *cached = Some(c.clone());
                    c
                }
            }
        };
        auth_token(host, port, user, &self.region, &credentials, now)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use aws_credential_types::provider::future;

    use super::*;

    /// Temporary credentials valid one hour from T0, counting how often they are fetched.
    #[derive(Debug, Default, Clone)]
    struct Counting(Arc<AtomicU32>);

    const T0: u64 = 1_796_032_800;

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.0.fetch_add(1, Ordering::SeqCst);
            let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + 3600);
            future::ProvideCredentials::ready(Ok(Credentials::new(
                "AKID",
                "secret",
                Some("s".into()),
                Some(expiry),
                "t",
            )))
        }
    }

    #[tokio::test]
    async fn credentials_are_fetched_again_only_when_they_near_their_expiry() {
        let provider = Counting::default();
        let second = Arc::new(std::sync::atomic::AtomicU64::new(T0));
        let clock = {
            let second = second.clone();
            Arc::new(move || SystemTime::UNIX_EPOCH + Duration::from_secs(second.load(Ordering::SeqCst)))
        };
        let iam = IamAuth::new("us-east-1", SharedCredentialsProvider::new(provider.clone())).with_clock(clock);
        let first = iam.token("db", 5432, "u").await.unwrap();
        second.store(T0 + 54 * 60, Ordering::SeqCst);
        let later = iam.token("db", 5432, "u").await.unwrap();
        assert_ne!(first, later, "a token per call, dated now");
        assert_eq!(provider.0.load(Ordering::SeqCst), 1, "the credentials were still good for 6 minutes");
        second.store(T0 + 56 * 60, Ordering::SeqCst);
        iam.token("db", 5432, "u").await.unwrap();
        assert_eq!(provider.0.load(Ordering::SeqCst), 2, "within 5 minutes of their expiry: fetched again");
    }
}
