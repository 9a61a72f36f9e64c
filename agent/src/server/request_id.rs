//! One request id per gRPC call, on every log line the call produces (a `grpc` span). A caller-supplied
//! `x-request-id` is kept (bounded and sanitised) so logs correlate across services.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tracing::Instrument;

static NEXT: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId(inner)
    }
}

#[derive(Clone, Debug)]
pub struct RequestId<S>(S);

fn request_id<B>(req: &http::Request<B>) -> String {
    let given = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).filter(|v| {
        !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    });
    match given {
        Some(v) => v.to_string(),
        None => format!("m-{:x}-{:x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)),
    }
}

impl<S, B> tower::Service<http::Request<B>> for RequestId<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = tracing::info_span!("grpc", request_id = %request_id(&req), method = %req.uri().path());
        self.0.call(req).instrument(span)
    }
}
