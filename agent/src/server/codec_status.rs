//! Gives requests tonic cannot decode the status codes gRPC's conventions ask for.
//!
//! tonic answers a request body it cannot decode (garbage bytes, a truncated frame, invalid UTF-8 in a string)
//! with `INTERNAL`, and a message over the size limit with `OUT_OF_RANGE`. Both are the caller's fault:
//! `INTERNAL` makes clients and operators look for an agent bug, and gRPC's status-code table says a request
//! over the limit is `RESOURCE_EXHAUSTED`. The errors come from tonic's own decoder before any service runs,
//! so this layer rewrites them on the way out, recognising them by code and tonic's fixed message text (tonic
//! puts the `Status` in the response extensions; the services never produce these texts themselves).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::{Code, Status};

#[derive(Clone, Copy, Debug, Default)]
pub struct CodecStatusLayer;

impl<S> tower::Layer<S> for CodecStatusLayer {
    type Service = CodecStatus<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CodecStatus(inner)
    }
}

#[derive(Clone, Debug)]
pub struct CodecStatus<S>(S);

/// The status the caller should get instead of `status`, if `status` is one of tonic's decoding errors.
pub fn remap(status: &Status) -> Option<Status> {
    let m = status.message();
    match status.code() {
        Code::Internal if m.starts_with("failed to decode Protobuf message") => {
            Some(Status::invalid_argument(format!("request: not a valid protobuf message ({m})")))
        }
        Code::Internal if m.starts_with("Unexpected EOF decoding stream") => {
            Some(Status::invalid_argument("request: truncated: the body ended inside a gRPC message frame"))
        }
        Code::Internal if m.starts_with("Missing request message") => {
            Some(Status::invalid_argument("request: the body holds no gRPC message"))
        }
        Code::OutOfRange => m.strip_prefix("Error, decoded message length too large: ").map(|detail| {
            Status::resource_exhausted(format!("request: message too large: {detail}; split it into smaller calls"))
        }),
        _ => None,
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, Req, B> tower::Service<Req> for CodecStatus<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            if let Some(better) = response.extensions().get::<Status>().and_then(remap) {
                let headers = response.headers_mut();
                headers.remove(Status::GRPC_MESSAGE);
                headers.remove(Status::GRPC_STATUS_DETAILS);
                // Our own messages are plain ASCII text, so encoding them into headers cannot fail.
                if better.add_header(headers).is_ok() {
                    response.extensions_mut().insert(better);
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonic_decoding_errors_are_remapped() {
        let r = remap(&Status::internal("failed to decode Protobuf message: invalid wire type")).unwrap();
        assert_eq!(r.code(), Code::InvalidArgument);
        assert!(r.message().contains("invalid wire type"));
        let r = remap(&Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        ))
        .unwrap();
        assert_eq!(r.code(), Code::ResourceExhausted);
        assert!(r.message().contains("the limit is: 4194304 bytes"), "{}", r.message());
        // The services' own errors pass unchanged.
        assert!(remap(&Status::out_of_range("event.quantity: the hourly total would overflow")).is_none());
        assert!(remap(&Status::internal("store corrupt")).is_none());
    }
}
