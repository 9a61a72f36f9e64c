//! Retention of the shared ledger: the sled store's `compact` and its dedupe window, for PostgreSQL.
//!
//! The account's lease holder runs a pass every hour: terminal records (accepted, rejected, expired, carried,
//! merged) whose hour is older than `storage.retention` are deleted, and the day partitions of event keys older
//! than `storage.dedupe_window` are dropped ([`crate::partitions::drop_expired`]). What they held is folded into
//! `meterd_compacted` (one row per product) in the same transaction as the delete, so the report's totals never
//! shrink when history goes (the revenue lost is kept in `meterd_queue_totals`, which retention never lowers), and
//! the ledger's tables — records, their kept hour totals, event keys — stay bounded by the retention and the
//! window, not by every hour ever sealed.
//!
//! Records leave in batches of [`BATCH`] per transaction (a short lock on few rows, never a long one over the
//! history), each fenced by the lease like every other write of the holder's, oldest hour first over the partial
//! index on terminal records. Each batch raises the product's `moves` on its seal mark, so a report read in pages
//! across it re-reads (`report::structure`), as sled counts a compaction as a structural write.

use std::collections::BTreeMap;

use meterd_core::clock::UnixMillis;
use meterd_core::domain::quantity::Micros;
pub use meterd_core::domain::record::Compacted;
use meterd_core::domain::record::RecordState;
use tokio_postgres::{Client, GenericClient};

use crate::codec;
use crate::lease::{self, Lease};
use crate::seal::SealError;
use crate::views::ViewError;

/// Records deleted per transaction.
pub const BATCH: i64 = 1_000;

/// `o` added to `total` (a pass's batches, or a product's kept row).
fn add(total: &mut Compacted, o: &Compacted) -> Result<(), SealError> {
    let overflow = |what: &str| SealError::Overflow(format!("compacted {what}"));
    total.records += o.records;
    total.events += o.events;
    total.recorded = total.recorded.try_add(o.recorded).map_err(|_| overflow("usage"))?;
    total.late = total.late.try_add(o.late).map_err(|_| overflow("late usage"))?;
    total.accepted += o.accepted;
    total.rejected += o.rejected;
    total.expired += o.expired;
    Ok(())
}

/// Deletes the terminal records of `products` whose hour is before `cutoff_ms`, under `lease`, folding them into
/// `meterd_compacted`; returns what it removed. Pending records (sealed, in flight) are never touched.
pub async fn compact_records(
    client: &mut Client,
    lease: &Lease,
    products: &[String],
    cutoff_ms: UnixMillis,
) -> Result<Compacted, SealError> {
    let mut products: Vec<&str> = products.iter().map(String::as_str).collect();
    products.sort_unstable();
    products.dedup();
    let mut total = Compacted::default();
    loop {
        let tx = client.transaction().await?;
        lease::fence(&tx, lease).await?;
        // The seal marks first, in product order, as a seal takes them: the same lock order, so no deadlock with
        // a forward or a seal, and a seal of these products waits for this batch (and the other way round).
        tx.query(
            "SELECT product FROM meterd_seal_marks WHERE product = ANY($1) ORDER BY product COLLATE \"C\" FOR UPDATE",
            &[&products],
        )
        .await?;
        let rows = tx
            .query(
                "SELECT hour_ms, product, customer, dimension, record::text FROM meterd_records
                 WHERE hour_ms < $1 AND product = ANY($2)
                   AND state IN ('accepted', 'rejected', 'expired', 'carried', 'merged')
                 ORDER BY hour_ms LIMIT $3 FOR UPDATE",
                &[&cutoff_ms, &products, &BATCH],
            )
            .await?;
        let mut by_product: BTreeMap<String, Compacted> = BTreeMap::new();
        // What the deleted records recorded, by hour × product × dimension (the kept hour totals, below).
        let mut gone: BTreeMap<(i64, String, String), Micros> = BTreeMap::new();
        let (mut hours, mut prods, mut customers, mut dims) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            let r = codec::record_of(row.get(4))?;
            let e = gone.entry((r.key.hour_ms, r.key.product.clone(), r.key.dimension.clone())).or_default();
            *e = e.try_add(r.recorded).map_err(|_| SealError::Overflow("an hour's usage".into()))?;
            let c = by_product.entry(r.key.product.clone()).or_default();
            let q = u64::from(r.quantity);
            match &r.state {
                RecordState::Accepted { .. } => c.accepted += q,
                RecordState::Rejected { .. } => c.rejected += q,
                RecordState::Expired { .. } => c.expired += q,
                RecordState::Carried | RecordState::Merged { .. } => {}
                // The query selects terminal states only; a row whose JSON disagrees with its state column is not
                // ours to delete.
                other => {
                    return Err(SealError::Corrupt(codec::Corrupt {
                        what: "sealed record",
                        detail: format!("{:?} is {} in its JSON but terminal in its state column", r.key, other.name()),
                    }));
                }
            }
            add(c, &Compacted { records: 1, recorded: r.recorded, late: r.late, ..Default::default() })?;
            hours.push(row.get::<_, i64>(0));
            prods.push(row.get::<_, String>(1));
            customers.push(row.get::<_, String>(2));
            dims.push(row.get::<_, String>(3));
        }
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(total);
        }
        tx.execute(
            "DELETE FROM meterd_records r USING unnest($1::int8[], $2::text[], $3::text[], $4::text[])
                 AS d(hour_ms, product, customer, dimension)
             WHERE r.hour_ms = d.hour_ms AND r.product = d.product AND r.customer = d.customer
               AND r.dimension = d.dimension",
            &[&hours, &prods, &customers, &dims],
        )
        .await?;
        // The kept hour totals (`meterd_hour_totals`, usage drops): what the deleted records recorded leaves its
        // hour × product × dimension, as sled's retention subtracts from its hour summaries; an hour left with no
        // record loses its rows, so the table is bounded by the retention too.
        let (mut gh, mut gp, mut gd, mut gt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((h, p, d), t) in gone {
            gh.push(h);
            gp.push(p);
            gd.push(d);
            gt.push(format!("-{}", codec::micros_text(t)));
        }
        tx.execute(
            "INSERT INTO meterd_hour_totals AS t (hour_ms, product, dimension, shard, total)
             SELECT h, p, d, '', x::numeric FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[]) AS g(h, p, d, x)
             ON CONFLICT (hour_ms, product, dimension, shard) DO UPDATE SET total = t.total + excluded.total",
            &[&gh, &gp, &gd, &gt],
        )
        .await?;
        tx.execute(
            "DELETE FROM meterd_hour_totals t USING unnest($1::int8[], $2::text[], $3::text[]) AS g(h, p, d)
             WHERE t.hour_ms = g.h AND t.product = g.p AND t.dimension = g.d
               AND NOT EXISTS (SELECT 1 FROM meterd_records r
                               WHERE r.hour_ms = g.h AND r.product = g.p AND r.dimension = g.d)
               AND NOT EXISTS (SELECT 1 FROM meterd_buckets b
                               WHERE b.hour_ms = g.h AND b.product = g.p AND b.dimension = g.d)",
            &[&gh, &gp, &gd],
        )
        .await?;
        for (product, c) in &by_product {
            fold(&tx, product, c).await?;
            tx.execute("UPDATE meterd_seal_marks SET moves = moves + 1 WHERE product = $1", &[product]).await?;
            add(&mut total, c)?;
        }
        tx.commit().await?;
        if (rows.len() as i64) < BATCH {
            return Ok(total);
        }
    }
}

/// Adds `c` to `product`'s kept totals (within the caller's transaction).
pub(crate) async fn fold(tx: &impl GenericClient, product: &str, c: &Compacted) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO meterd_compacted AS k
             (product, records, events, recorded, late, accepted, rejected, expired)
         VALUES ($1, $2, $3, $4::text::numeric, $5::text::numeric, $6, $7, $8)
         ON CONFLICT (product) DO UPDATE SET
             records = k.records + excluded.records, events = k.events + excluded.events,
             recorded = k.recorded + excluded.recorded, late = k.late + excluded.late,
             accepted = k.accepted + excluded.accepted, rejected = k.rejected + excluded.rejected,
             expired = k.expired + excluded.expired",
        &[
            &product,
            &(c.records as i64),
            &(c.events as i64),
            &codec::micros_text(c.recorded),
            &codec::micros_text(c.late),
            &(c.accepted as i64),
            &(c.rejected as i64),
            &(c.expired as i64),
        ],
    )
    .await
    .map(|_| ())
}

/// Everything retention ever removed, over every product (a few rows: one per product).
pub async fn compacted(client: &impl GenericClient) -> Result<Compacted, ViewError> {
    let row = client
        .query_one(
            "SELECT coalesce(sum(records), 0)::int8, coalesce(sum(events), 0)::int8,
                    coalesce(sum(recorded), 0)::text, coalesce(sum(late), 0)::text,
                    coalesce(sum(accepted), 0)::int8, coalesce(sum(rejected), 0)::int8,
                    coalesce(sum(expired), 0)::int8
             FROM meterd_compacted",
            &[],
        )
        .await?;
    let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    Ok(Compacted {
        records: n(0),
        events: n(1),
        recorded: codec::micros_of(row.get(2))?,
        late: codec::micros_of(row.get(3))?,
        accepted: n(4),
        rejected: n(5),
        expired: n(6),
    })
}
