//! HTTP serving. Connections are served one by one with hyper-util (not `axum::serve`) so that a fault can
//! close a connection without answering, exactly as a network drop looks to a client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::Emulator;
use crate::service::{Admission, Operation};
use crate::wire::{self, AwsError};

/// Lets a request handler close its own connection.
#[derive(Clone, Default)]
pub(crate) struct ConnControl(Arc<Notify>);

/// Bodies past this are not even read; anything at or above 1 MB is refused anyway.
const READ_LIMIT: usize = 8 * 1024 * 1024;

pub(crate) fn router(emu: Emulator) -> Router {
    Router::new()
        .route("/", post(aws_call).fallback(not_found))
        .route(crate::agreement::PATH, post(crate::agreement::describe_agreement))
        .nest("/_emulator", crate::inspect::routes())
        .merge(crate::imds::routes())
        .fallback(not_found)
        .with_state(emu)
}

async fn not_found(req: Request) -> Response {
    let err = AwsError::new(
        axum::http::StatusCode::NOT_FOUND,
        "UnknownOperationException",
        format!(
            "No route for {} {}: the AWS API is POST / and the inspection API is under /_emulator/",
            req.method(),
            req.uri().path()
        ),
    );
    wire::error_response(&err, &uuid::Uuid::new_v4().to_string())
}

async fn aws_call(State(emu): State<Emulator>, headers: HeaderMap, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    emu.shared.imds.saw_authorization(&headers);
    let conn = req.extensions().get::<ConnControl>().cloned();
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok());
    let op = Operation::from_target(target);
    let shared = &emu.shared;

    let (admission, latency_ms) = shared.admit(&op);
    let (result, drop_response) = match admission {
        Admission::Drop => return drop_connection(conn).await,
        Admission::Refuse(e) => (Err(e), false),
        Admission::Proceed { drop_response } => {
            let body = match axum::body::to_bytes(req.into_body(), READ_LIMIT).await {
                Ok(b) => b.to_vec(),
                // Too large to read: answer as the 1 MB rule does.
                Err(_) => vec![b' '; READ_LIMIT],
            };
            (shared.call(&op, &body, &request_id), drop_response)
        }
    };
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    if drop_response {
        return drop_connection(conn).await;
    }
    let mut resp = match result {
        Ok(v) => wire::json_response(axum::http::StatusCode::OK, &v, &request_id),
        Err(e) => wire::error_response(&e, &request_id),
    };
    // The service's own time, so a client measuring its skew from `Date` sees the emulated clock.
    if let Ok(v) = axum::http::HeaderValue::from_str(&crate::clock::http_date(emu.now_millis())) {
        resp.headers_mut().insert(axum::http::header::DATE, v);
    }
    resp
}

async fn drop_connection(conn: Option<ConnControl>) -> Response {
    match conn {
        Some(c) => {
            c.0.notify_one();
            // The connection task drops this future with the connection.
            std::future::pending().await
        }
        // Not served by our accept loop (e.g. a test calling the router directly): the nearest thing.
        None => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
            r
        }
    }
}

/// A running server. Dropping it stops the server; [`EmulatorHandle::shutdown`] also waits for it.
pub struct EmulatorHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, for an SDK's `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight calls finish (up to 5 s), then returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub(crate) fn spawn(emu: Emulator, listener: TcpListener) -> std::io::Result<EmulatorHandle> {
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(emu, listener, stop_rx));
    Ok(EmulatorHandle { addr, stop, task: Some(task) })
}

async fn accept_loop(emu: Emulator, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let app = router(emu);
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(app.clone(), stream, stop.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        conns.abort_all();
    }
}

async fn serve_connection(app: Router, stream: tokio::net::TcpStream, mut stop: watch::Receiver<bool>) {
    let control = ConnControl::default();
    let ctl = control.clone();
    let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ctl.clone());
        req
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            // Returning drops the connection and its socket: the client sees it close with no answer.
            _ = control.0.notified() => return,
            changed = stop.changed(), if !stopping => {
                stopping = true;
                let _ = changed;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
