//! Bearer-token check for the TCP listener. The token is compared in constant time; refused calls are counted
//! and answered UNAUTHENTICATED without reaching any service. gRPC health stays open for probes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use subtle::ConstantTimeEq;

/// Calls refused for a missing or wrong token, on the gRPC listener and the admin listener alike (exported as
/// `meterd_auth_refused_total`). One per agent, shared by both checks.
#[derive(Debug, Default)]
pub struct Refused(AtomicU64);

impl Refused {
    pub fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl crate::metrics::Collect for Refused {
    fn collect(&self, out: &mut crate::metrics::Encoder) -> Result<(), String> {
        out.single(
            "meterd_auth_refused_total",
            "counter",
            "TCP calls refused for a missing or wrong bearer token.",
            self.0.load(Ordering::Relaxed),
        );
        Ok(())
    }
}

#[derive(Clone, Default)]
pub struct AuthLayer {
    token: Option<Arc<[u8]>>,
    refused: Arc<Refused>,
}

impl AuthLayer {
    pub fn new(token: Option<String>, refused: Arc<Refused>) -> Self {
        Self { token: token.map(|t| Arc::from(t.into_bytes())), refused }
    }
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("AuthLayer").field("token", &self.token.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, token: self.token.clone(), refused: self.refused.clone() }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    token: Option<Arc<[u8]>>,
    refused: Arc<Refused>,
}

pub(crate) fn authorized(expected: &[u8], header: Option<&http::HeaderValue>) -> bool {
    let Some(given) = header.and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) else { return false };
    // Lengths differ → unequal; ct_eq itself only runs on equal lengths.
    given.len() == expected.len() && bool::from(given.ct_eq(expected))
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(expected) = &self.token
            && !req.uri().path().starts_with("/grpc.health.v1.Health/")
            && !authorized(expected, req.headers().get(http::header::AUTHORIZATION))
        {
            self.refused.count();
            tracing::warn!(method = %req.uri().path(), "call refused: missing or wrong bearer token");
            let status =
                tonic::Status::unauthenticated("a valid bearer token is required (authorization: Bearer <token>)");
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_exactly() {
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert!(authorized(b"s3cret-token", Some(&h("Bearer s3cret-token"))));
        assert!(!authorized(b"s3cret-token", Some(&h("Bearer s3cret-tokex"))));
        assert!(!authorized(b"s3cret-token", Some(&h("Bearer s3cret"))));
        assert!(!authorized(b"s3cret-token", Some(&h("s3cret-token"))));
        assert!(!authorized(b"s3cret-token", None));
        assert!(format!("{:?}", AuthLayer::new(Some("s3cret-token".into()), Arc::default())).contains("redacted"));
    }
}
