//! Usage drops in fleet mode: the detection the sled store runs (`silence.rs`), over the shared ledger's hours
//! (`meterd_fleet::hours`: kept usage per hour × product × dimension, the biggest records by an index, one
//! series by its keys), so `status` on any agent shows the fleet's drops, not those of its own spool (which holds
//! no buckets and no records). Bounded reads, as the sled side's: ~11 hours of a few rows each.

use meterd_fleet::views::ViewError;

use crate::clock::UnixMillis;
use crate::domain::event::{Bucket, BucketKey, Identity};
use crate::domain::quantity::Micros;
use crate::domain::record::SealedRecord;
use crate::domain::silence::{Settings, UsageDrop};
use crate::silence::HourReads;
use crate::store::StoreError;
use crate::store::hour_totals::{HourSummary, TOP_PER_HOUR};

/// The shared ledger's hours, read synchronously (the detection is synchronous) on a blocking thread, each read a
/// query on `client` driven by the runtime.
pub struct FleetHours {
    pub client: meterd_fleet::Client,
    pub handle: tokio::runtime::Handle,
}

fn db(e: ViewError) -> StoreError {
    StoreError::Io(format!("fleet database: {e}"))
}

impl HourReads for FleetHours {
    fn first_hour(&self) -> Result<Option<UnixMillis>, StoreError> {
        self.handle.block_on(meterd_fleet::hours::first_hour(&self.client)).map_err(db)
    }

    fn hour_summaries(&self, hour_ms: UnixMillis) -> Result<Vec<HourSummary>, StoreError> {
        let usage = self
            .handle
            .block_on(meterd_fleet::hours::hour_usage(&self.client, hour_ms, TOP_PER_HOUR as i64))
            .map_err(db)?;
        Ok(usage
            .into_iter()
            .map(|u| HourSummary {
                hour_ms,
                product: u.product,
                dimension: u.dimension,
                total: u.total,
                top: u.top,
                complete: u.complete,
            })
            .collect())
    }

    fn buckets_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<(BucketKey, Bucket)>, StoreError> {
        self.handle.block_on(meterd_fleet::hours::buckets_of_hour(&self.client, hour_ms)).map_err(db)
    }

    fn series_usage(
        &self,
        hour_ms: UnixMillis,
        product: &str,
        identity: &Identity,
        dimension: &str,
    ) -> Result<Micros, StoreError> {
        self.handle
            .block_on(meterd_fleet::hours::series_usage(&self.client, hour_ms, product, identity, dimension))
            .map_err(db)
    }

    fn records_of_hour(&self, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>, StoreError> {
        self.handle.block_on(meterd_fleet::hours::records_of_hour(&self.client, hour_ms)).map_err(db)
    }
}

/// The fleet's usage drops for `report` (a session of its own), or why they cannot be read.
pub async fn of_fleet(
    node: &super::Node,
    config: &crate::config::Config,
    now_ms: UnixMillis,
) -> Result<Vec<UsageDrop>, String> {
    let client = node.db.connect().await.map_err(|e| super::describe(&super::chain(&e)))?;
    last_ended_hour(client, crate::silence::settings(config), now_ms).await.map_err(|e| e.to_string())
}

/// The fleet's usage drops in the hour that ended last before `now_ms`.
pub async fn last_ended_hour(
    client: meterd_fleet::Client,
    settings: Settings,
    now_ms: UnixMillis,
) -> Result<Vec<UsageDrop>, StoreError> {
    let hours = FleetHours { client, handle: tokio::runtime::Handle::current() };
    tokio::task::spawn_blocking(move || crate::silence::last_ended_hour(&hours, &settings, now_ms))
        .await
        .map_err(|e| StoreError::Io(e.to_string()))?
}

/// `meterd_usage_drops` in fleet mode: the shared ledger's drops, read on the scrape's blocking thread over a
/// session of its own (a new connection, as `report`'s). Unreachable within [`DROPS_CONNECT`]: left out of that
/// scrape (logged), never a failed scrape.
pub struct FleetDrops {
    pub db: meterd_fleet::connect::Database,
    pub handle: tokio::runtime::Handle,
}

/// How long a scrape waits for the fleet database before it leaves the drops out.
pub const DROPS_CONNECT: std::time::Duration = std::time::Duration::from_secs(5);

impl crate::silence::DropSource for FleetDrops {
    fn drops(&self, settings: &Settings, now_ms: UnixMillis) -> Result<Option<Vec<UsageDrop>>, String> {
        let connected = self.handle.block_on(async { tokio::time::timeout(DROPS_CONNECT, self.db.connect()).await });
        let why = match connected {
            Ok(Ok(client)) => {
                let hours = FleetHours { client, handle: self.handle.clone() };
                match crate::silence::last_ended_hour(&hours, settings, now_ms) {
                    Ok(drops) => return Ok(Some(drops)),
                    Err(e) => e.to_string(),
                }
            }
            Ok(Err(e)) => super::describe(&super::chain(&e)),
            Err(_) => format!("no connection within {DROPS_CONNECT:?}"),
        };
        tracing::warn!(error = %why, "meterd_usage_drops left out of this scrape: the fleet database cannot be read");
        Ok(None)
    }
}
