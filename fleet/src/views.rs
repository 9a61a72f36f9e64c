//! Reads of the shared ledger for reports, `status` and tests.

use meterd_core::clock::UnixMillis;
use meterd_core::domain::event::{Bucket, BucketKey, ContentDigest, StoredEvent};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::SealedRecord;
use tokio_postgres::GenericClient;

use crate::codec::{self, Corrupt};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    #[error("fleet database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// The columns of an event key row [`stored_event_of`] reads, in its order.
pub(crate) const STORED_EVENT_COLUMNS: &str =
    "digest, product, event_time_ms, hour_ms, late, recorded_at_ms, quantity::text";

/// The agent's `StoredEvent` from the [`STORED_EVENT_COLUMNS`] of `r`, starting at column `first`.
pub(crate) fn stored_event_of(r: &tokio_postgres::Row, first: usize) -> Result<StoredEvent, Corrupt> {
    let digest: Vec<u8> = r.get(first);
    Ok(StoredEvent {
        digest: ContentDigest::v2_from_slice(&digest)
            .ok_or_else(|| Corrupt { what: "event digest", detail: "not 16 bytes".into() })?,
        product: r.get(first + 1),
        event_time_ms: r.get(first + 2),
        hour_ms: r.get(first + 3),
        late: r.get(first + 4),
        recorded_at_ms: r.get(first + 5),
        quantity: codec::micros_of(r.get(first + 6))?,
    })
}

/// The event stored under `idempotency_key`, in whichever day's partition it is.
pub async fn event(client: &impl GenericClient, idempotency_key: &str) -> Result<Option<StoredEvent>, ViewError> {
    let sql = format!("SELECT {STORED_EVENT_COLUMNS} FROM meterd_event_keys WHERE idempotency_key = $1");
    let row = client.query_opt(&sql, &[&idempotency_key]).await?;
    Ok(row.map(|r| stored_event_of(&r, 0)).transpose()?)
}

/// The sealed records of one hour, in key order (an index range of the records' primary key, hour first).
pub async fn records_of_hour(client: &impl GenericClient, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>, ViewError> {
    let rows = client
        .query(
            "SELECT record::text FROM meterd_records WHERE hour_ms = $1 ORDER BY product, customer, dimension",
            &[&hour_ms],
        )
        .await?;
    rows.iter().map(|r| codec::record_of(r.get(0)).map_err(ViewError::from)).collect()
}

/// The open buckets of one hour, in key order.
pub async fn buckets_of_hour(
    client: &impl GenericClient,
    hour_ms: UnixMillis,
) -> Result<Vec<(BucketKey, Bucket)>, ViewError> {
    bucket_rows(client, "WHERE hour_ms = $1 ORDER BY product, customer, dimension, tags", &[&hour_ms]).await
}

/// The hour of the oldest sealed record or open bucket (None: neither), each an index's first entry.
pub async fn first_hour(client: &impl GenericClient) -> Result<Option<UnixMillis>, ViewError> {
    Ok(client
        .query_one(
            "SELECT least((SELECT min(hour_ms) FROM meterd_records), (SELECT min(hour_ms) FROM meterd_buckets))",
            &[],
        )
        .await?
        .get(0))
}

/// Every series' carried fraction, in key order.
pub async fn carries(client: &impl GenericClient) -> Result<Vec<Micros>, ViewError> {
    let rows =
        client.query("SELECT carried::text FROM meterd_carries ORDER BY product, customer, dimension", &[]).await?;
    rows.iter().map(|r| codec::micros_of(r.get(0)).map_err(ViewError::from)).collect()
}

/// The open hours' buckets, in key order.
pub async fn buckets(client: &impl GenericClient) -> Result<Vec<(BucketKey, Bucket)>, ViewError> {
    bucket_rows(
        client,
        "ORDER BY hour_ms, product COLLATE \"C\", customer COLLATE \"C\", dimension COLLATE \"C\", tags COLLATE \"C\"",
        &[],
    )
    .await
}

async fn bucket_rows(
    client: &impl GenericClient,
    tail: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<(BucketKey, Bucket)>, ViewError> {
    let sql = format!(
        "SELECT hour_ms, product, customer, dimension, tags, total::text, events, late::text FROM meterd_buckets {tail}"
    );
    let rows = client.query(&sql, params).await?;
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
