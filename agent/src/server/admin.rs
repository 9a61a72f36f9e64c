//! `meterd.v1.Admin`: what operators and `meterd status|flush|report` ask the agent.

use std::sync::Arc;

use meterd_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::convert::{store_status, timestamp};
use crate::clock::{SharedClock, UnixMillis};
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::store::Store;

pub struct AdminService {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: SharedClock,
    pub pipeline: Pipeline,
    pub started_at_ms: UnixMillis,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        let source = super::status::Source {
            config: self.config.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            pipeline: self.pipeline.clone(),
            started_at_ms: self.started_at_ms,
        };
        Ok(Response::new(source.status().await?))
    }

    async fn flush(&self, _: Request<v1::FlushRequest>) -> Result<Response<v1::FlushResponse>, Status> {
        if let Some(node) = &self.pipeline.fleet {
            let f = crate::fleet::flush::flush(node, &self.store, &self.clock, &self.config, crate::fleet::flush::WAIT)
                .await
                .map_err(store_status)?;
            return Ok(Response::new(v1::FlushResponse {
                records_sealed: f.records,
                hours_carried_only: f.carried_only,
                sealed_through: f.sealed_through.map(timestamp),
                events_forwarded: f.forwarded,
                waiting_for: f.waiting_for,
            }));
        }
        let s = self.pipeline.flush().await.map_err(store_status)?;
        Ok(Response::new(v1::FlushResponse {
            records_sealed: s.records,
            hours_carried_only: s.carried_only,
            sealed_through: s.sealed_through.map(timestamp),
            events_forwarded: 0,
            waiting_for: Vec::new(),
        }))
    }

    async fn repack(&self, _: Request<v1::RepackRequest>) -> Result<Response<v1::RepackResponse>, Status> {
        let r = self.store.repack().await.map_err(store_status)?;
        Ok(Response::new(v1::RepackResponse {
            keys: r.keys,
            bytes_before: r.bytes_before,
            bytes_after: r.bytes_after,
            duration_ms: r.millis,
            writes_paused_ms: r.paused_millis,
        }))
    }

    type ReportStreamStream = tokio_stream::wrappers::ReceiverStream<Result<v1::ReportChunk, Status>>;

    async fn report_stream(
        &self,
        request: Request<v1::ReportStreamRequest>,
    ) -> Result<Response<Self::ReportStreamStream>, Status> {
        let source = super::report_stream::ReportSource {
            config: self.config.clone(),
            pages: self.pipeline.report_pages(&self.store),
            store: self.store.clone(),
            clock: self.clock.clone(),
            fleet: self.pipeline.fleet.clone(),
        };
        let rx = super::report_stream::start(source, request.into_inner())?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn report(&self, _: Request<v1::ReportRequest>) -> Result<Response<v1::ReportResponse>, Status> {
        let source = super::status::Source {
            config: self.config.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            pipeline: self.pipeline.clone(),
            started_at_ms: self.started_at_ms,
        };
        Ok(Response::new(source.report().await?))
    }
}
