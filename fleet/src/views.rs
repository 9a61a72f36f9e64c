//! Reads of the shared ledger for reports, `status` and tests.

use meterd_core::clock::UnixMillis;
use meterd_core::domain::event::{Bucket, BucketKey};
use tokio_postgres::GenericClient;

use crate::codec::{self, Corrupt};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    #[error("fleet database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// The open hours' buckets, in key order.
pub async fn buckets(client: &impl GenericClient) -> Result<Vec<(BucketKey, Bucket)>, ViewError> {
    let rows = client
        .query(
            "SELECT hour_ms, product, customer, dimension, tags, total::text, events, late::text FROM meterd_buckets
             ORDER BY hour_ms, product COLLATE \"C\", customer COLLATE \"C\", dimension COLLATE \"C\",
                      tags COLLATE \"C\"",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let events: i64 = r.get(6);
        out.push((
            BucketKey {
                hour_ms: r.get(0),
                product: r.get(1),
                identity: codec::identity_of(r.get(2))?,
                dimension: r.get(3),
                tags: codec::tags_of(r.get(4))?,
            },
            Bucket { total: codec::micros_of(r.get(5))?, events: events as u64, late: codec::micros_of(r.get(7))? },
        ));
    }
    Ok(out)
}

/// A recorded conflict: a key forwarded with other content than the event counted under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictRow {
    pub idempotency_key: String,
    pub node_id: String,
    pub product: String,
    pub dimension: String,
    pub quantity: meterd_core::domain::quantity::Micros,
    pub existing_node_id: String,
    pub existing_hour_ms: UnixMillis,
}

pub async fn conflicts(client: &impl GenericClient) -> Result<Vec<ConflictRow>, ViewError> {
    let rows = client
        .query(
            "SELECT idempotency_key, node_id, product, dimension, quantity::text, existing_node_id, existing_hour_ms
             FROM meterd_conflicts ORDER BY detected_at, idempotency_key",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(ConflictRow {
            idempotency_key: r.get(0),
            node_id: r.get(1),
            product: r.get(2),
            dimension: r.get(3),
            quantity: codec::micros_of(r.get(4))?,
            existing_node_id: r.get(5),
            existing_hour_ms: r.get(6),
        });
    }
    Ok(out)
}

/// Each node's forward watermark (node id, watermark, events forwarded).
pub async fn watermarks(client: &impl GenericClient) -> Result<Vec<(String, UnixMillis, i64)>, ViewError> {
    let rows =
        client.query("SELECT node_id, watermark_ms, forwarded FROM meterd_watermarks ORDER BY node_id", &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// Every hour before this is sealed fleet-wide for `product` (None: nothing yet).
pub async fn sealed_through(client: &impl GenericClient, product: &str) -> Result<Option<UnixMillis>, ViewError> {
    Ok(client
        .query_opt("SELECT sealed_through FROM meterd_seal_marks WHERE product = $1", &[&product])
        .await?
        .and_then(|r| r.get(0)))
}

/// How many event keys the dedupe window holds.
pub async fn event_keys(client: &impl GenericClient) -> Result<i64, ViewError> {
    Ok(client.query_one("SELECT count(*) FROM meterd_event_keys", &[]).await?.get(0))
}
