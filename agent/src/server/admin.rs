//! `meterd.v1.Admin`: what operators and `meterd status` ask the agent.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use meterd_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::convert::timestamp;
use crate::clock::{SharedClock, UnixMillis};
use crate::config::Config;
use crate::store::{SCHEMA_VERSION, Store};

pub struct AdminService {
    pub config: Arc<Config>,
    pub store: Store,
    pub clock: SharedClock,
    pub started_at_ms: UnixMillis,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        let store = self.store.clone();
        let (open_buckets, size) =
            tokio::task::spawn_blocking(move || (store.open_bucket_count(), store.size_on_disk()))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: Some(timestamp(self.started_at_ms)),
            now: Some(timestamp(self.clock.now_ms())),
            data_dir: self.store.data_dir().display().to_string(),
            schema_version: SCHEMA_VERSION,
            events_stored: self.store.counters().events_stored.load(Ordering::Relaxed),
            open_buckets,
            store_size_bytes: size,
            products: self
                .config
                .products
                .iter()
                .map(|(name, p)| v1::ProductStatus {
                    name: name.clone(),
                    identity: p.identity.as_str().to_string(),
                    dimensions: p.dimensions.clone(),
                })
                .collect(),
        }))
    }
}
