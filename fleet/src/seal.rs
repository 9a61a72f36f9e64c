//! Fleet-wide sealing: an hour is sealed once every live node has forwarded all it acknowledged for it, under
//! the account's submitter lease, with the agent's own seal arithmetic; then the records' states move by the
//! agent's rule (content frozen, terminal states final).
//!
//! When may hour H (ending at H + 1 h) be sealed? When every node of the registry either
//! - has a forward watermark at or past H + 1 h (it forwarded everything it acknowledged before then), or
//! - is down: no heartbeat for `down_after` — the bounded wait for a node that died. When it comes back, what it
//!   forwards for H is counted in the open hour, flagged late (the late-usage rule), never lost and never silent;
//!
//! or when H ended more than `max_wait` ago, whatever the nodes say: a live node whose forwarder is stuck must
//! not hold a record past its AWS deadline (its events then arrive late too).
//!
//! Exactly one record per AWS key: the seal marks are taken `FOR UPDATE` (one sealer of a product at a time, and
//! no forward in between), the lease is fenced in the same transaction, and the records' primary key is the AWS
//! key — a duplicate cannot commit whatever the code above it does.

use std::collections::HashMap;
use std::time::Duration;

use meterd_core::clock::{HOUR_MS, UnixMillis, hour_start};
use meterd_core::domain::event::{Bucket, BucketKey};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::{RecordKey, RecordState, SealedRecord, UpdateRefused, check_update};
use meterd_core::domain::seal::{SealParams, SealPolicy, group_buckets, seal_record};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::codec::{self, Corrupt};
use crate::lease::{self, Lease, LeaseError};
use crate::totals::Delta;

/// How long a seal waits for nodes.
#[derive(Debug, Clone, Copy)]
pub struct SealRules {
    /// A node with no heartbeat for this long is down and no longer waited for.
    pub down_after: Duration,
    /// An hour that ended this long ago is sealed even if a live node has not forwarded it.
    pub max_wait: Duration,
}

/// A node the seal waited for: live, with a watermark short of the hour end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lagging {
    pub node_id: String,
    /// None: the node never forwarded.
    pub watermark_ms: Option<UnixMillis>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SealSummary {
    /// Every hour before this is now sealed for the products (None: nothing could be sealed).
    pub sealed_through: Option<UnixMillis>,
    /// Records to submit.
    pub records: u64,
    /// Records of fraction-only hours (kept for the report, never sent).
    pub carried_only: u64,
    pub buckets: u64,
    /// Nodes that held the cutoff back.
    pub waiting_for: Vec<Lagging>,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Fenced(#[from] LeaseError),
    #[error("record of {0:?} is already sealed: a second sealed record per AWS key is refused")]
    Duplicate(String),
    #[error("quantity overflow sealing {0}")]
    Overflow(String),
    #[error("no sealed record {0:?}")]
    Unknown(RecordKey),
    #[error(transparent)]
    Refused(#[from] UpdateRefused),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    #[error("fleet database: {0}")]
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for SealError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(d) if *d.code() == SqlState::UNIQUE_VIOLATION && d.table() == Some("meterd_records") => {
                SealError::Duplicate(d.detail().unwrap_or_default().to_string())
            }
            _ => SealError::Db(e),
        }
    }
}

/// The last hour start a seal may reach: before the first live lagging node's watermark hour, unless hours are
/// older than `max_wait`. Pure, so the rule is tested without waiting for real hours to pass.
pub fn sealable_cutoff(
    cutoff_hour_ms: UnixMillis,
    now_ms: UnixMillis,
    live_watermarks: &[(String, Option<UnixMillis>)],
    max_wait: Duration,
) -> (UnixMillis, Vec<Lagging>) {
    let cutoff = hour_start(cutoff_hour_ms);
    // H + 1 h + max_wait <= now  ⇔  H < hour_start(now − max_wait), for an hour start H.
    // Nothing before 1970 is ever sealed: keeps the arithmetic far from i64's ends.
    let forced = hour_start(now_ms.saturating_sub(i64::try_from(max_wait.as_millis()).unwrap_or(i64::MAX)).max(0));
    let mut limit = cutoff;
    let mut waiting = Vec::new();
    for (node, w) in live_watermarks {
        // Every hour wholly before the watermark is forwarded by this node.
        let reach = w.map_or(0, |w| hour_start(w.max(0))).max(forced);
        if reach < cutoff {
            waiting.push(Lagging { node_id: node.clone(), watermark_ms: *w });
            limit = limit.min(reach);
        }
    }
    (limit, waiting)
}

/// Seals, for `products` (the account's), every hour before `cutoff_hour_ms` that the fleet has forwarded (see
/// the module doc), under `lease`.
pub async fn seal(
    client: &mut Client,
    lease: &Lease,
    products: &[String],
    cutoff_hour_ms: UnixMillis,
    policy: &SealPolicy,
    rules: SealRules,
) -> Result<SealSummary, SealError> {
    seal_with(client, lease, products, cutoff_hour_ms, &|now_ms, cutoff| policy.params(now_ms, cutoff), rules).await
}

/// [`seal`] with the caller's parameters and clock (`params.now_ms` stamps the records; the cutoff is still
/// bounded by the nodes' watermarks): the `Ledger` seam over PostgreSQL, whose caller decides when it seals.
pub async fn seal_at(
    client: &mut Client,
    lease: &Lease,
    products: &[String],
    params: &SealParams,
    rules: SealRules,
) -> Result<SealSummary, SealError> {
    let at = |_, cutoff| SealParams { cutoff_hour_ms: cutoff, ..params.clone() };
    seal_with(client, lease, products, params.cutoff_hour_ms, &at, rules).await
}

/// The seal's parameters at (database `now`, sealable cutoff).
type ParamsAt<'a> = &'a (dyn Fn(UnixMillis, UnixMillis) -> SealParams + Sync);

async fn seal_with(
    client: &mut Client,
    lease: &Lease,
    products: &[String],
    cutoff_hour_ms: UnixMillis,
    params_at: ParamsAt<'_>,
    rules: SealRules,
) -> Result<SealSummary, SealError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_seal(client, lease, products, cutoff_hour_ms, params_at, rules).await {
            Err(SealError::Db(e)) if attempt < 6 && crate::forward::is_transient(&e) => {}
            other => return other,
        }
    }
}

async fn try_seal(
    client: &mut Client,
    lease: &Lease,
    products: &[String],
    cutoff_hour_ms: UnixMillis,
    params_at: ParamsAt<'_>,
    rules: SealRules,
) -> Result<SealSummary, SealError> {
    let tx = client.transaction().await?;
    lease::fence(&tx, lease).await?;
    let mut products: Vec<&str> = products.iter().map(String::as_str).collect();
    products.sort_unstable();
    products.dedup();
    tx.execute(
        "INSERT INTO meterd_seal_marks (product) SELECT p FROM unnest($1::text[]) AS p ORDER BY p
         ON CONFLICT (product) DO NOTHING",
        &[&products],
    )
    .await?;
    let marks: Vec<(String, Option<i64>)> = tx
        .query(
            "SELECT product, sealed_through FROM meterd_seal_marks WHERE product = ANY($1)
             ORDER BY product FOR UPDATE",
            &[&products],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Read after the marks are held: every forward that committed before is visible, none can commit meanwhile.
    let now_ms: i64 = tx.query_one("SELECT (extract(epoch FROM now()) * 1000)::int8", &[]).await?.get(0);
    let live: Vec<(String, Option<i64>)> = tx
        .query(
            "SELECT n.node_id, w.watermark_ms FROM meterd_nodes n LEFT JOIN meterd_watermarks w USING (node_id)
             WHERE n.heartbeat_at > now() - make_interval(secs => $1::float8) ORDER BY n.node_id",
            &[&rules.down_after.as_secs_f64()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (cutoff, waiting_for) = sealable_cutoff(cutoff_hour_ms, now_ms, &live, rules.max_wait);
    let params = params_at(now_ms, cutoff);
    let mut summary = SealSummary { waiting_for, ..SealSummary::default() };
    let mut totals = Delta::default();
    for (product, sealed_through) in &marks {
        if cutoff > 0 && sealed_through.is_none_or(|s| s < cutoff) {
            seal_product(&tx, lease, product, cutoff, &params, &mut summary, &mut totals).await?;
        }
    }
    totals.write(&tx).await?;
    // Every product's mark is now at least min(its old mark, cutoff).
    summary.sealed_through = marks
        .iter()
        .map(|(_, s)| if cutoff > 0 && s.is_none_or(|s| s < cutoff) { Some(cutoff) } else { *s })
        .min()
        .flatten();
    tx.commit().await?;
    Ok(summary)
}

/// Seals `product`'s buckets of every hour before `cutoff` into records, carries the fractions on, removes the
/// buckets and moves the product's mark, inside the seal's transaction.
async fn seal_product(
    tx: &tokio_postgres::Transaction<'_>,
    lease: &Lease,
    product: &String,
    cutoff: UnixMillis,
    params: &meterd_core::domain::seal::SealParams,
    summary: &mut SealSummary,
    totals: &mut Delta,
) -> Result<(), SealError> {
    let rows = tx
        .query(
            "SELECT hour_ms, customer, dimension, tags, total::text, events, late::text FROM meterd_buckets
             WHERE product = $1 AND hour_ms < $2
             ORDER BY hour_ms, customer COLLATE \"C\", dimension COLLATE \"C\", tags COLLATE \"C\"",
            &[product, &cutoff],
        )
        .await?;
    let mut buckets = Vec::with_capacity(rows.len());
    for r in &rows {
        let key = BucketKey {
            hour_ms: r.get(0),
            product: product.clone(),
            identity: codec::identity_of(r.get(1))?,
            dimension: r.get(2),
            tags: codec::tags_of(r.get(3))?,
        };
        let events: i64 = r.get(5);
        let bucket =
            Bucket { total: codec::micros_of(r.get(4))?, events: events as u64, late: codec::micros_of(r.get(6))? };
        buckets.push((key, bucket));
    }
    summary.buckets += buckets.len() as u64;
    let (s, taken) = seal_buckets(tx, lease, product, buckets, params, None, totals).await?;
    summary.records += s.records;
    summary.carried_only += s.carried_only;
    let closed =
        tx.execute("DELETE FROM meterd_buckets WHERE product = $1 AND hour_ms < $2", &[product, &cutoff]).await?;
    totals.buckets(product, -(closed as i64));
    // Usage of a customer whose final hour was sealed early (it left): the open hour, nobody's key yet.
    roll_over(tx, taken, |h| (h + HOUR_MS).max(cutoff), totals).await?;
    tx.execute("UPDATE meterd_seal_marks SET sealed_through = $2 WHERE product = $1", &[product, &cutoff]).await?;
    Ok(())
}

/// Turns `buckets` (hour first) of `product` into records with their carries, inside the caller's transaction
/// (which removes the buckets). `deadline_cap` brings deadlines forward (a leaving customer's final hour).
/// Returns the buckets whose AWS key a record already has — only a customer sealed early has records of open
/// hours — for the caller to count again in a later hour ([`roll_over`]), never as a second record of the key.
pub(crate) async fn seal_buckets(
    tx: &tokio_postgres::Transaction<'_>,
    lease: &Lease,
    product: &str,
    buckets: Vec<(BucketKey, Bucket)>,
    params: &meterd_core::domain::seal::SealParams,
    deadline_cap: Option<UnixMillis>,
    totals: &mut Delta,
) -> Result<(SealSummary, Vec<(BucketKey, Bucket)>), SealError> {
    let mut summary = SealSummary::default();
    let mut taken_keys = std::collections::HashSet::new();
    let originals = buckets.clone();
    let groups =
        group_buckets(buckets).map_err(|_| SealError::Overflow(format!("the late usage of product {product:?}")))?;
    let mut carries: HashMap<(String, String), Micros> = HashMap::new();
    for group in groups {
        let customer = codec::identity_text(&group.key.identity);
        // A fraction-only (carried) or merged record of the key is not an AWS key taken, but its row is: usage
        // of a customer sealed early meeting one is rolled over too, never a second row (a unique violation that
        // would fail every later seal of the leaving customer).
        let row_taken = tx
            .query_opt(
                "SELECT 1 FROM meterd_records WHERE hour_ms = $1 AND product = $2 AND customer = $3 AND dimension = $4",
                &[&group.key.hour_ms, &product, &customer, &group.key.dimension],
            )
            .await?
            .is_some();
        if row_taken
            || crate::registry::aws_key_taken(
                tx,
                group.key.hour_ms,
                product,
                &customer,
                &group.key.identity,
                &group.key.dimension,
            )
            .await?
        {
            taken_keys.insert((group.key.hour_ms, customer, group.key.dimension.clone()));
            continue;
        }
        let series = (customer.clone(), group.key.dimension.clone());
        let carried_in = match carries.get(&series) {
            Some(c) => *c,
            None => match tx
                .query_opt(
                    "SELECT carried::text FROM meterd_carries
                     WHERE product = $1 AND customer = $2 AND dimension = $3",
                    &[&product, &customer, &group.key.dimension],
                )
                .await?
            {
                Some(r) => codec::micros_of(r.get(0))?,
                None => Micros::ZERO,
            },
        };
        let key = group.key.clone();
        let record = seal_record(group, carried_in, params, deadline_cap)
            .map_err(|_| SealError::Overflow(format!("{key:?}")))?;
        carries.insert(series, record.carried_out);
        if record.state == RecordState::Carried {
            summary.carried_only += 1;
        } else {
            summary.records += 1;
        }
        tx.execute(
            "INSERT INTO meterd_records (hour_ms, product, customer, dimension, state, deadline_ms, record,
                                         sealed_epoch, sealed_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9)",
            &[
                &record.key.hour_ms,
                &product,
                &customer,
                &record.key.dimension,
                &record.state.name(),
                &record.deadline_ms,
                &codec::record_text(&record),
                &lease.epoch,
                &lease.holder.node_id,
            ],
        )
        .await?;
        totals.added(&record);
    }
    for ((customer, dimension), carried) in carries {
        tx.execute(
            "INSERT INTO meterd_carries (product, customer, dimension, carried)
             VALUES ($1, $2, $3, $4::text::numeric)
             ON CONFLICT (product, customer, dimension) DO UPDATE SET carried = excluded.carried",
            &[&product, &customer, &dimension, &codec::micros_text(carried)],
        )
        .await?;
    }
    let taken = originals
        .into_iter()
        .filter(|(k, _)| taken_keys.contains(&(k.hour_ms, codec::identity_text(&k.identity), k.dimension.clone())))
        .collect();
    Ok((summary, taken))
}

/// Counts `buckets` again in the hour `next` gives for each (after the caller removed them), all of it flagged
/// late: the late-usage rule for usage whose AWS key a record already has.
pub(crate) async fn roll_over(
    tx: &tokio_postgres::Transaction<'_>,
    buckets: Vec<(BucketKey, Bucket)>,
    next: impl Fn(UnixMillis) -> UnixMillis,
    totals: &mut Delta,
) -> Result<(), SealError> {
    for (k, b) in buckets {
        tracing::warn!(bucket = ?k, "usage of a customer whose record of this hour is already sealed (it left): \
            counted in a later hour, flagged late");
        let opened: bool = tx
            .query_one(
                "INSERT INTO meterd_buckets (hour_ms, product, customer, dimension, tags, total, events, late)
             VALUES ($1, $2, $3, $4, $5, $6::text::numeric, $7, $6::text::numeric)
             ON CONFLICT (hour_ms, product, customer, dimension, tags) DO UPDATE
                 SET total = meterd_buckets.total + excluded.total,
                     events = meterd_buckets.events + excluded.events,
                     late = meterd_buckets.late + excluded.late
             RETURNING xmax = 0",
                &[
                    &next(k.hour_ms),
                    &k.product,
                    &codec::identity_text(&k.identity),
                    &k.dimension,
                    &codec::tags_text(&k.tags),
                    &codec::micros_text(b.total),
                    &(b.events as i64),
                ],
            )
            .await?
            .get(0);
        totals.buckets(&k.product, i64::from(opened));
        totals.usage_moved(&k.product, &k.dimension, k.hour_ms, next(k.hour_ms), b.total);
    }
    Ok(())
}

/// Durably records new states of sealed records, under `lease`: all or nothing, each checked against the stored
/// record by the agent's rule (content frozen, terminal states final) while its row is locked.
pub async fn update_records(client: &mut Client, lease: &Lease, records: &[SealedRecord]) -> Result<(), SealError> {
    let tx = client.transaction().await?;
    lease::fence(&tx, lease).await?;
    let mut ordered: Vec<&SealedRecord> = records.iter().collect();
    ordered.sort_by(|a, b| a.key.cmp(&b.key));
    let mut totals = Delta::default();
    for new in ordered {
        let customer = codec::identity_text(&new.key.identity);
        let pk: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&new.key.hour_ms, &new.key.product, &customer, &new.key.dimension];
        let old = tx
            .query_opt(
                "SELECT record::text FROM meterd_records
                 WHERE hour_ms = $1 AND product = $2 AND customer = $3 AND dimension = $4 FOR UPDATE",
                &pk,
            )
            .await?
            .ok_or_else(|| SealError::Unknown(new.key.clone()))?;
        let old = codec::record_of(old.get(0))?;
        check_update(&old, new)?;
        totals.replaced(&old, new);
        tx.execute(
            "UPDATE meterd_records SET record = $5::text::jsonb, state = $6, updated_at = now()
             WHERE hour_ms = $1 AND product = $2 AND customer = $3 AND dimension = $4",
            &[
                &new.key.hour_ms,
                &new.key.product,
                &customer,
                &new.key.dimension,
                &codec::record_text(new),
                &new.state.name(),
            ],
        )
        .await?;
    }
    totals.write(&tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Every sealed record of `product`, oldest hour first.
pub async fn records(client: &Client, product: &str) -> Result<Vec<SealedRecord>, SealError> {
    let rows = client
        .query(
            "SELECT record::text FROM meterd_records WHERE product = $1
             ORDER BY hour_ms, customer COLLATE \"C\", dimension COLLATE \"C\"",
            &[&product],
        )
        .await?;
    rows.iter().map(|r| codec::record_of(r.get(0)).map_err(SealError::from)).collect()
}

/// Records still to be sent (sealed or in flight), most urgent deadline first: the submitter's queue.
pub async fn pending_records(client: &Client, limit: i64) -> Result<Vec<SealedRecord>, SealError> {
    let rows = client
        .query(
            "SELECT record::text FROM meterd_records WHERE state IN ('sealed', 'in_flight')
             ORDER BY deadline_ms, hour_ms, product COLLATE \"C\", customer COLLATE \"C\", dimension COLLATE \"C\"
             LIMIT $1",
            &[&limit.max(0)],
        )
        .await?;
    rows.iter().map(|r| codec::record_of(r.get(0)).map_err(SealError::from)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterd_core::clock::HOUR_MS;

    const T0: i64 = 1_790_000_000_000 / HOUR_MS * HOUR_MS;

    #[test]
    fn the_cutoff_waits_for_live_lagging_nodes_up_to_max_wait() {
        let day = Duration::from_secs(24 * 3600);
        let nodes = |a: Option<i64>, b: Option<i64>| vec![("a".to_string(), a), ("b".to_string(), b)];
        // Both past the end of T0 + 2 h: the requested cutoff stands.
        let (c, w) = sealable_cutoff(
            T0 + 3 * HOUR_MS,
            T0 + 10 * HOUR_MS,
            &nodes(Some(T0 + 3 * HOUR_MS), Some(T0 + 4 * HOUR_MS)),
            day,
        );
        assert_eq!((c, w.len()), (T0 + 3 * HOUR_MS, 0));
        // b forwarded only into T0 + 1 h (20 min in): hours before T0 + 1 h.
        let (c, w) = sealable_cutoff(
            T0 + 3 * HOUR_MS,
            T0 + 10 * HOUR_MS,
            &nodes(Some(T0 + 3 * HOUR_MS), Some(T0 + HOUR_MS + 1_200_000)),
            day,
        );
        assert_eq!(c, T0 + HOUR_MS);
        assert_eq!(w, vec![Lagging { node_id: "b".into(), watermark_ms: Some(T0 + HOUR_MS + 1_200_000) }]);
        // A node that never forwarded holds everything back...
        let (c, _) = sealable_cutoff(T0 + 3 * HOUR_MS, T0 + 10 * HOUR_MS, &nodes(None, Some(T0 + 3 * HOUR_MS)), day);
        assert_eq!(c, T0 - 14 * HOUR_MS, "only hours that ended a day ago");
        // ...until the hours are older than max_wait: T0 + 2 h ends at T0 + 3 h, 2 h before now = T0 + 5 h.
        let two_hours = Duration::from_secs(2 * 3600);
        let (c, _) = sealable_cutoff(T0 + 3 * HOUR_MS, T0 + 5 * HOUR_MS, &nodes(None, None), two_hours);
        assert_eq!(c, T0 + 3 * HOUR_MS);
        let (c, _) = sealable_cutoff(T0 + 3 * HOUR_MS, T0 + 5 * HOUR_MS - 1, &nodes(None, None), two_hours);
        assert_eq!(c, T0 + 2 * HOUR_MS, "T0 + 2 h ended 2 h minus 1 ms ago: not yet");
        // No live node: nothing to wait for.
        assert_eq!(sealable_cutoff(T0 + 3 * HOUR_MS + 5, T0, &[], day).0, T0 + 3 * HOUR_MS);
    }
}
