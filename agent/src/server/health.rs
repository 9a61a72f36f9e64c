//! `grpc.health.v1.Health` as the health-checking spec describes it.
//!
//! tonic-health answers `Watch` on an unknown service with NOT_FOUND, which ends the stream; the spec says to
//! send SERVICE_UNKNOWN and keep the call open (clients treat an ended Watch as a failure and reconnect). So the
//! agent serves its own. Every service of the agent lives in one process and serves or stops together, so one
//! state covers them all: SERVING from start until shutdown begins, then NOT_SERVING — a `Watch` sends that last
//! status and ends, so open watches never hold a graceful shutdown up.

use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{self, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The names a health check may ask about: "" (the whole agent) and each API service.
pub const SERVICES: [&str; 4] = ["", "meterd.v1.Metering", "meterd.v1.Admin", "meterd.v1.Customers"];

/// The agent's health; clones share it. [`Health::stopping`] flips every service to NOT_SERVING.
#[derive(Clone)]
pub struct Health {
    stopping: watch::Sender<bool>,
}

impl Health {
    pub fn new() -> Self {
        Self { stopping: watch::Sender::new(false) }
    }

    pub fn service(&self) -> HealthServer<Self> {
        HealthServer::new(self.clone())
    }

    /// Shutdown has begun: report NOT_SERVING and end every open `Watch`.
    pub fn stopping(&self) {
        self.stopping.send_replace(true);
    }

    fn status(&self, service: &str) -> Option<ServingStatus> {
        SERVICES
            .contains(&service)
            .then(|| if *self.stopping.borrow() { ServingStatus::NotServing } else { ServingStatus::Serving })
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

fn reply(status: ServingStatus) -> Result<HealthCheckResponse, Status> {
    Ok(HealthCheckResponse { status: status as i32 })
}

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.status(&service) {
            Some(s) => Ok(Response::new(HealthCheckResponse { status: s as i32 })),
            None => Err(Status::not_found(format!(
                "service: {} is not served here (known: \"\", {})",
                crate::domain::echo::echo(&service),
                SERVICES[1..].join(", ")
            ))),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let known = self.status(&service).is_some();
        let mut stopping = self.stopping.subscribe();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let first = if !known {
                ServingStatus::ServiceUnknown
            } else if *stopping.borrow_and_update() {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            if tx.send(reply(first)).await.is_err() {
                return;
            }
            // Stay open until the caller leaves or shutdown begins.
            let stopped = tokio::select! {
                _ = tx.closed() => false,
                r = stopping.wait_for(|s| *s) => r.is_ok(),
            };
            if stopped && known && first != ServingStatus::NotServing {
                let _ = tx.send(reply(ServingStatus::NotServing)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
