//! Bounded reads of one hour of the shared ledger for usage-drop detection (the agent's `silence.rs`, which
//! reads ~11 hours): the kept usage per product × dimension (`meterd_hour_totals`, migration 5, kept by forwards
//! per node and by every write that moves usage to another hour, in its own transaction), the biggest sealed
//! records (an index range on their usage: `limit + 1` entries), the open buckets of an hour and one series'
//! usage (primary-key ranges). Nothing here reads every record of an hour.

use std::collections::BTreeMap;

use meterd_core::clock::UnixMillis;
use meterd_core::domain::event::{Bucket, BucketKey, Identity};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::SealedRecord;
use tokio_postgres::GenericClient;

use crate::codec;
use crate::views::ViewError;

/// One hour of one product × dimension, as the sled store's `HourSummary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourUsage {
    pub product: String,
    pub dimension: String,
    /// Sealed records' recorded usage plus open buckets' totals.
    pub total: Micros,
    /// The biggest sealed records with usage: (customer, recorded), largest first.
    pub top: Vec<(Identity, Micros)>,
    /// Every sealed record with usage is in `top`.
    pub complete: bool,
}

/// The hour of the oldest sealed record or open bucket (two primary-key index ends).
pub async fn first_hour(client: &impl GenericClient) -> Result<Option<UnixMillis>, ViewError> {
    Ok(client
        .query_one(
            "SELECT least((SELECT min(hour_ms) FROM meterd_records), (SELECT min(hour_ms) FROM meterd_buckets))",
            &[],
        )
        .await?
        .get(0))
}

/// The usage of `hour_ms` per product × dimension, with up to `top` biggest sealed records each.
pub async fn hour_usage(
    client: &impl GenericClient,
    hour_ms: UnixMillis,
    top: i64,
) -> Result<Vec<HourUsage>, ViewError> {
    let rows = client
        .query(
            "SELECT product, dimension, sum(total)::text FROM meterd_hour_totals WHERE hour_ms = $1
             GROUP BY product, dimension ORDER BY product, dimension",
            &[&hour_ms],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (product, dimension): (String, String) = (r.get(0), r.get(1));
        let biggest = client
            .query(
                "SELECT customer, record->>'recorded' FROM meterd_records
                 WHERE hour_ms = $1 AND product = $2 AND dimension = $3 AND (record->>'recorded')::numeric > 0
                 ORDER BY (record->>'recorded')::numeric DESC LIMIT $4",
                &[&hour_ms, &product, &dimension, &(top + 1)],
            )
            .await?;
        let complete = biggest.len() as i64 <= top;
        let mut list = Vec::with_capacity(biggest.len());
        for b in biggest.iter().take(top.max(0) as usize) {
            list.push((codec::identity_of(b.get(0))?, codec::micros_of(b.get(1))?));
        }
        let total = codec::micros_of(r.get(2))?;
        if total != Micros::ZERO || !list.is_empty() {
            out.push(HourUsage { product, dimension, total, top: list, complete });
        }
    }
    Ok(out)
}

/// The open buckets of one hour.
pub async fn buckets_of_hour(
    client: &impl GenericClient,
    hour_ms: UnixMillis,
) -> Result<Vec<(BucketKey, Bucket)>, ViewError> {
    let rows = client
        .query(
            "SELECT product, customer, dimension, tags, total::text, events, late::text FROM meterd_buckets
             WHERE hour_ms = $1",
            &[&hour_ms],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let events: i64 = r.get(5);
        out.push((
            BucketKey {
                hour_ms,
                product: r.get(0),
                identity: codec::identity_of(r.get(1))?,
                dimension: r.get(2),
                tags: codec::tags_of(r.get(3))?,
            },
            Bucket { total: codec::micros_of(r.get(4))?, events: events as u64, late: codec::micros_of(r.get(6))? },
        ));
    }
    Ok(out)
}

/// The sealed records of one hour (the tests' reference reads them all).
pub async fn records_of_hour(client: &impl GenericClient, hour_ms: UnixMillis) -> Result<Vec<SealedRecord>, ViewError> {
    let rows = client.query("SELECT record::text FROM meterd_records WHERE hour_ms = $1", &[&hour_ms]).await?;
    rows.iter().map(|r| codec::record_of(r.get(0)).map_err(ViewError::from)).collect()
}

/// One series' usage in one hour: its record's recorded usage plus its open buckets (primary-key reads).
pub async fn series_usage(
    client: &impl GenericClient,
    hour_ms: UnixMillis,
    product: &str,
    identity: &Identity,
    dimension: &str,
) -> Result<Micros, ViewError> {
    let row = client
        .query_one(
            "SELECT (coalesce((SELECT (record->>'recorded')::numeric FROM meterd_records
                               WHERE hour_ms = $1 AND product = $2 AND customer = $3 AND dimension = $4), 0)
                     + coalesce((SELECT sum(total) FROM meterd_buckets
                                 WHERE hour_ms = $1 AND product = $2 AND customer = $3 AND dimension = $4), 0))::text",
            &[&hour_ms, &product, &codec::identity_text(identity), &dimension],
        )
        .await?;
    Ok(codec::micros_of(row.get(0))?)
}

/// Every kept hour total (summed over shards), nonzero ones, in key order.
pub async fn kept(client: &impl GenericClient) -> Result<BTreeMap<(i64, String, String), Micros>, ViewError> {
    let rows = client
        .query(
            "SELECT hour_ms, product, dimension, sum(total)::text FROM meterd_hour_totals
             GROUP BY 1, 2, 3 HAVING sum(total) <> 0",
            &[],
        )
        .await?;
    rows.iter().map(|r| Ok(((r.get(0), r.get(1), r.get(2)), codec::micros_of(r.get(3))?))).collect()
}

/// The same from scratch: every record's recorded usage and every bucket's total (the tests' reference).
pub async fn recount(client: &impl GenericClient) -> Result<BTreeMap<(i64, String, String), Micros>, ViewError> {
    let rows = client
        .query(
            "SELECT hour_ms, product, dimension, sum(t)::text FROM (
                 SELECT hour_ms, product, dimension, (record->>'recorded')::numeric AS t FROM meterd_records
                 UNION ALL SELECT hour_ms, product, dimension, total FROM meterd_buckets) AS u
             GROUP BY 1, 2, 3 HAVING sum(t) <> 0",
            &[],
        )
        .await?;
    rows.iter().map(|r| Ok(((r.get(0), r.get(1), r.get(2)), codec::micros_of(r.get(3))?))).collect()
}
