//! Bounded reads of the shared ledger for the agent's report and `status`: keyset pages of the sealed records,
//! the open buckets and the carried fractions (each in its primary key's order, so a page is an index range
//! scan of `limit` rows, never the whole table), the structure stamp that tells a reader of many pages whether
//! a seal moved usage between two of them. (`status`'s figures: [`crate::totals`].)
//!
//! Keys are compared in the columns' own collation, the one their primary key index is built with: the cursor
//! condition `(a, b, …) > ($1, $2, …)` and the `ORDER BY a, b, …` then agree on one total order (the default
//! collations are deterministic), whatever the database's locale.

use meterd_core::domain::event::{Bucket, BucketKey, Identity};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::{RecordKey, SealedRecord};
use tokio_postgres::GenericClient;

use crate::codec;
use crate::views::ViewError;

/// One carry series and the fraction it carries to its next sealed hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carry {
    pub product: String,
    pub identity: Identity,
    pub dimension: String,
    pub carried: Micros,
}

/// A read-only transaction on one snapshot (REPEATABLE READ): a page and its [`structure`] stamp read in it
/// agree.
pub async fn snapshot(
    client: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// Sealed records after `after` (None: from the first), in key order: hour, product, customer, dimension.
pub async fn records_after(
    client: &impl GenericClient,
    after: Option<&RecordKey>,
    limit: i64,
) -> Result<Vec<SealedRecord>, ViewError> {
    let rows =
        match after {
            None => client
                .query(
                    "SELECT record::text FROM meterd_records ORDER BY hour_ms, product, customer, dimension LIMIT $1",
                    &[&limit],
                )
                .await?,
            Some(k) => {
                client
                    .query(
                        "SELECT record::text FROM meterd_records
                     WHERE (hour_ms, product, customer, dimension) > ($1, $2, $3, $4)
                     ORDER BY hour_ms, product, customer, dimension LIMIT $5",
                        &[&k.hour_ms, &k.product, &codec::identity_text(&k.identity), &k.dimension, &limit],
                    )
                    .await?
            }
        };
    rows.iter().map(|r| codec::record_of(r.get(0)).map_err(ViewError::from)).collect()
}

/// Open buckets after `after`, in key order: hour, product, customer, dimension, tag set (so the buckets of one
/// future record — its tag sets — are adjacent).
pub async fn buckets_after(
    client: &impl GenericClient,
    after: Option<&BucketKey>,
    limit: i64,
) -> Result<Vec<(BucketKey, Bucket)>, ViewError> {
    const COLUMNS: &str = "SELECT hour_ms, product, customer, dimension, tags, total::text, events, late::text
                           FROM meterd_buckets";
    const ORDER: &str = "ORDER BY hour_ms, product, customer, dimension, tags";
    let rows = match after {
        None => client.query(&format!("{COLUMNS} {ORDER} LIMIT $1"), &[&limit]).await?,
        Some(k) => {
            client
                .query(
                    &format!(
                        "{COLUMNS} WHERE (hour_ms, product, customer, dimension, tags) > ($1, $2, $3, $4, $5)
                         {ORDER} LIMIT $6"
                    ),
                    &[
                        &k.hour_ms,
                        &k.product,
                        &codec::identity_text(&k.identity),
                        &k.dimension,
                        &codec::tags_text(&k.tags),
                        &limit,
                    ],
                )
                .await?
        }
    };
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

/// Carried fractions after the series (product, customer, dimension) `after`, in key order.
pub async fn carries_after(
    client: &impl GenericClient,
    after: Option<(&str, &Identity, &str)>,
    limit: i64,
) -> Result<Vec<Carry>, ViewError> {
    let rows = match after {
        None => {
            client
                .query(
                    "SELECT product, customer, dimension, carried::text FROM meterd_carries
                     ORDER BY product, customer, dimension LIMIT $1",
                    &[&limit],
                )
                .await?
        }
        Some((product, identity, dimension)) => {
            client
                .query(
                    "SELECT product, customer, dimension, carried::text FROM meterd_carries
                     WHERE (product, customer, dimension) > ($1, $2, $3)
                     ORDER BY product, customer, dimension LIMIT $4",
                    &[&product, &codec::identity_text(identity), &dimension, &limit],
                )
                .await?
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Carry {
            product: r.get(0),
            identity: codec::identity_of(r.get(1))?,
            dimension: r.get(2),
            carried: codec::micros_of(r.get(3))?,
        });
    }
    Ok(out)
}

/// A stamp of the ledger's structure that grows with every write that moves usage between the report's regions:
/// a seal raises a product's `sealed_through` by whole hours (so the sum of the marks' hours grows by at least
/// one), a leaving customer's early seal and a tenant mapping's move raise the product's `moves`, each in its own
/// transaction. Forwards only add to buckets and record updates only change states, so pages read under one stamp
/// count every unit once; a mark row alone (a product's first forward inserts one, unsealed) adds nothing. Any
/// new write that moves usage must raise it too, or a report read across it may count a unit twice or not at
/// all. Monotone, as the seam's count of structural writes is (`Ledger::report_page`), never a hash: a reader
/// may compare two stamps for order, and equal stamps are the same structure exactly.
pub async fn structure(client: &impl GenericClient) -> Result<u64, ViewError> {
    let row = client
        .query_one(
            "SELECT (coalesce(sum(coalesce(sealed_through, 0) / 3600000), 0) + coalesce(sum(moves), 0))::int8
             FROM meterd_seal_marks",
            &[],
        )
        .await?;
    let stamp: i64 = row.get(0);
    // Hours since 1970 and counts of moves: never negative.
    Ok(stamp.max(0) as u64)
}

/// Records AWS answered DuplicateRecord on their first send, and their whole units (revenue lost for good): the
/// kept totals (`meterd_queue_totals`, one row per product, written with every record update), which retention
/// never lowers — as the sled store's `m/lost` — so revenue lost stays visible after its records are compacted.
pub async fn lost(client: &impl GenericClient) -> Result<(u64, u64), ViewError> {
    let row = client
        .query_one(
            "SELECT coalesce(sum(lost_records), 0)::int8, coalesce(sum(lost_units), 0)::int8 FROM meterd_queue_totals",
            &[],
        )
        .await?;
    let (records, units): (i64, i64) = (row.get(0), row.get(1));
    Ok((records.max(0) as u64, units.max(0) as u64))
}

/// Conflicts recorded: keys forwarded with other content than the event counted under them.
pub async fn conflict_count(client: &impl GenericClient) -> Result<u64, ViewError> {
    let n: i64 = client.query_one("SELECT count(*) FROM meterd_conflicts", &[]).await?.get(0);
    Ok(n as u64)
}
