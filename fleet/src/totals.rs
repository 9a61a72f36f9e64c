//! `status` in O(1), as the sled store's: the queue's totals (pending records, in flight, units), revenue lost,
//! the held tenants' pending records and the open buckets are kept in rows (migration 5) that every write
//! changing them updates in its own transaction, through a [`Delta`]: the seal (records in, buckets out), record
//! state updates, tenant mappings (records re-keyed or merged, buckets moved), a leaving customer's early seal and
//! roll-overs; forwards count the buckets they open and the events they count late in their node's watermark row
//! (one row per node, so forwards from many nodes never queue on a shared counter).
//!
//! [`kept`] reads them: a row per product and per node, the held tenants joined with their mappings, and the first
//! entry of the pending index — never the records. [`recount`] computes the same figures from scratch (every
//! pending record and bucket): what the kept ones must equal, checked by the tests.

use std::collections::BTreeMap;

use meterd_core::clock::UnixMillis;
use meterd_core::domain::event::Identity;
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::{RecordState, SealedRecord, lost_units};
use tokio_postgres::{GenericClient, Transaction};

use crate::views::ViewError;

/// What `status` shows of the shared ledger's queue and buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusTotals {
    pub records: u64,
    pub in_flight: u64,
    pub units: u64,
    /// Pending records held under a tenant that has no mapping (fleet-wide), and their units: lost at their
    /// deadline unless the tenant is mapped in time.
    pub at_risk_records: u64,
    pub at_risk_units: u64,
    /// The most urgent pending record's hour and deadline (deadline first, then hour: the sled queue's first key).
    pub first_hour_ms: Option<UnixMillis>,
    pub first_deadline_ms: Option<UnixMillis>,
    /// Records AWS answered DuplicateRecord, and their units.
    pub lost_records: u64,
    pub lost_units: u64,
    pub open_buckets: u64,
    /// Events stored fleet-wide, and of them counted late (their hour already sealed when forwarded).
    pub events_stored: u64,
    pub late_events: u64,
}

/// Changes to the kept totals made by one transaction, written by [`Delta::write`] before it commits.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    products: BTreeMap<String, [i64; 6]>,
    held: BTreeMap<String, (i64, i64)>,
    /// Usage moved between hours (hour, product, dimension): micro-units.
    hours: BTreeMap<(i64, String, String), i128>,
}

const RECORDS: usize = 0;
const IN_FLIGHT: usize = 1;
const UNITS: usize = 2;
const LOST_RECORDS: usize = 3;
const LOST_UNITS: usize = 4;
const BUCKETS: usize = 5;

/// The tenant a pending record is held under when it has no identity to be sent as yet (the sled store's
/// `pending::held_tenant`).
fn held_tenant(r: &SealedRecord) -> Option<&str> {
    match (&r.key.identity, &r.sent_as) {
        (Identity::Tenant(t), None) => Some(t),
        _ => None,
    }
}

impl Delta {
    fn count(&mut self, r: &SealedRecord, sign: i64) {
        let q = i64::from(r.quantity);
        let p = self.products.entry(r.key.product.clone()).or_default();
        if !r.state.is_terminal() {
            p[RECORDS] += sign;
            p[UNITS] += sign * q;
            if matches!(r.state, RecordState::InFlight { .. }) {
                p[IN_FLIGHT] += sign;
            }
            if let Some(t) = held_tenant(r) {
                let h = self.held.entry(t.to_string()).or_default();
                h.0 += sign;
                h.1 += sign * q;
            }
        }
        if let Some(lost) = lost_units(r) {
            p[LOST_RECORDS] += sign;
            p[LOST_UNITS] += sign * lost as i64;
        }
    }

    /// A record inserted.
    pub fn added(&mut self, r: &SealedRecord) {
        self.count(r, 1);
    }

    /// A record rewritten (new state, `sent_as`, merged).
    pub fn replaced(&mut self, old: &SealedRecord, new: &SealedRecord) {
        self.count(old, -1);
        self.count(new, 1);
    }

    /// Usage of a bucket moved from one hour to another (a roll-over, a mapping into a free hour).
    pub fn usage_moved(&mut self, product: &str, dimension: &str, from_hour: i64, to_hour: i64, q: Micros) {
        if from_hour == to_hour || q == Micros::ZERO {
            return;
        }
        let q = i128::try_from(q.0).unwrap_or(i128::MAX);
        for (hour, sign) in [(from_hour, -1), (to_hour, 1)] {
            let h = self.hours.entry((hour, product.to_string(), dimension.to_string())).or_default();
            *h = h.saturating_add(sign * q);
        }
    }

    /// Buckets of `product` opened (positive) or closed (negative).
    pub fn buckets(&mut self, product: &str, n: i64) {
        if n != 0 {
            self.products.entry(product.to_string()).or_default()[BUCKETS] += n;
        }
    }

    /// Adds the changes to the kept rows, in the transaction that made them: products in order, then held
    /// tenants in order (every writer takes them in this order, after its own record and seal-mark locks).
    pub async fn write(self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        let changed: Vec<(&String, &[i64; 6])> = self.products.iter().filter(|(_, c)| **c != [0; 6]).collect();
        if !changed.is_empty() {
            let col = |i: usize| changed.iter().map(|(_, c)| c[i]).collect::<Vec<i64>>();
            let products: Vec<&str> = changed.iter().map(|(p, _)| p.as_str()).collect();
            // The row first (all zero), then the change: an upsert would check the CHECKs (no total below zero: a
            // drift refuses the write) against the change itself, not the sum.
            tx.execute(
                "INSERT INTO meterd_queue_totals (product) SELECT * FROM unnest($1::text[]) ORDER BY 1
                 ON CONFLICT (product) DO NOTHING",
                &[&products],
            )
            .await?;
            tx.execute(
                "UPDATE meterd_queue_totals AS t
                     SET records = t.records + d.r, in_flight = t.in_flight + d.f, units = t.units + d.u,
                         lost_records = t.lost_records + d.lr, lost_units = t.lost_units + d.lu,
                         buckets = t.buckets + d.b
                 FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[])
                      AS d(p, r, f, u, lr, lu, b)
                 WHERE t.product = d.p",
                &[
                    &products,
                    &col(RECORDS),
                    &col(IN_FLIGHT),
                    &col(UNITS),
                    &col(LOST_RECORDS),
                    &col(LOST_UNITS),
                    &col(BUCKETS),
                ],
            )
            .await?;
        }
        let held: Vec<(&String, &(i64, i64))> = self.held.iter().filter(|(_, c)| **c != (0, 0)).collect();
        if !held.is_empty() {
            let tenants: Vec<&str> = held.iter().map(|(t, _)| t.as_str()).collect();
            let records: Vec<i64> = held.iter().map(|(_, c)| c.0).collect();
            let units: Vec<i64> = held.iter().map(|(_, c)| c.1).collect();
            tx.execute(
                "INSERT INTO meterd_held_totals (tenant, records, units) SELECT t, 0, 0 FROM unnest($1::text[]) AS t
                 ORDER BY 1 ON CONFLICT (tenant) DO NOTHING",
                &[&tenants],
            )
            .await?;
            tx.execute(
                "UPDATE meterd_held_totals AS t SET records = t.records + d.r, units = t.units + d.u
                 FROM unnest($1::text[], $2::int8[], $3::int8[]) AS d(h, r, u) WHERE t.tenant = d.h",
                &[&tenants, &records, &units],
            )
            .await?;
            tx.execute("DELETE FROM meterd_held_totals WHERE tenant = ANY($1) AND records = 0", &[&tenants]).await?;
        }
        let hours: Vec<(&(i64, String, String), &i128)> = self.hours.iter().filter(|(_, q)| **q != 0).collect();
        if !hours.is_empty() {
            let hour: Vec<i64> = hours.iter().map(|(k, _)| k.0).collect();
            let products: Vec<&str> = hours.iter().map(|(k, _)| k.1.as_str()).collect();
            let dimensions: Vec<&str> = hours.iter().map(|(k, _)| k.2.as_str()).collect();
            let change: Vec<String> = hours.iter().map(|(_, q)| q.to_string()).collect();
            tx.execute(
                "INSERT INTO meterd_hour_totals AS t (hour_ms, product, dimension, shard, total)
                 SELECT h, p, d, '', q::numeric FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[])
                      AS u(h, p, d, q) ORDER BY 1, 2, 3
                 ON CONFLICT (hour_ms, product, dimension, shard) DO UPDATE SET total = t.total + excluded.total",
                &[&hour, &products, &dimensions, &change],
            )
            .await?;
        }
        Ok(())
    }
}

fn u(n: i64) -> u64 {
    n.max(0) as u64
}

/// The most urgent pending record's hour and deadline: one entry of the pending index.
async fn first_pending(client: &impl GenericClient) -> Result<(Option<i64>, Option<i64>), ViewError> {
    let row = client
        .query_opt(
            "SELECT hour_ms, deadline_ms FROM meterd_records WHERE state IN ('sealed', 'in_flight')
             ORDER BY deadline_ms, hour_ms LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.map_or((None, None), |r| (Some(r.get(0)), Some(r.get(1)))))
}

/// The kept totals: a few rows per product, node and held tenant, whatever the ledger holds. Read in one
/// snapshot when `client` is a REPEATABLE READ transaction.
pub async fn kept(client: &impl GenericClient) -> Result<StatusTotals, ViewError> {
    let q = client
        .query_one(
            "SELECT coalesce(sum(records), 0)::int8, coalesce(sum(in_flight), 0)::int8, coalesce(sum(units), 0)::int8,
                    coalesce(sum(lost_records), 0)::int8, coalesce(sum(lost_units), 0)::int8,
                    coalesce(sum(buckets), 0)::int8
             FROM meterd_queue_totals",
            &[],
        )
        .await?;
    let n = client
        .query_one(
            "SELECT coalesce(sum(forwarded), 0)::int8, coalesce(sum(late), 0)::int8,
                    coalesce(sum(buckets_opened), 0)::int8
             FROM meterd_watermarks",
            &[],
        )
        .await?;
    let risk = client
        .query_one(
            "SELECT coalesce(sum(h.records), 0)::int8, coalesce(sum(h.units), 0)::int8 FROM meterd_held_totals h
             WHERE NOT EXISTS (SELECT 1 FROM meterd_tenant_mappings m
                               WHERE m.tenant_id = h.tenant AND m.mapping IS NOT NULL)",
            &[],
        )
        .await?;
    let (first_hour_ms, first_deadline_ms) = first_pending(client).await?;
    Ok(StatusTotals {
        records: u(q.get(0)),
        in_flight: u(q.get(1)),
        units: u(q.get(2)),
        lost_records: u(q.get(3)),
        lost_units: u(q.get(4)),
        open_buckets: u(q.get::<_, i64>(5) + n.get::<_, i64>(2)),
        at_risk_records: u(risk.get(0)),
        at_risk_units: u(risk.get(1)),
        first_hour_ms,
        first_deadline_ms,
        events_stored: u(n.get(0)),
        late_events: u(n.get(1)),
    })
}

/// The same figures from scratch: every record, bucket and event key (the tests' reference; the migration's
/// backfill computes the kept rows the same way). Events are those whose keys the dedupe window still holds.
pub async fn recount(client: &impl GenericClient) -> Result<StatusTotals, ViewError> {
    let q = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state IN ('sealed', 'in_flight')),
                    count(*) FILTER (WHERE state = 'in_flight'),
                    coalesce(sum((record->>'quantity')::int8) FILTER (WHERE state IN ('sealed', 'in_flight')), 0)::int8,
                    count(*) FILTER (WHERE state = 'rejected'
                                       AND record->'state'->'Rejected'->>'reason' = 'DuplicateRecord'),
                    coalesce(sum((record->>'quantity')::int8)
                             FILTER (WHERE state = 'rejected'
                                       AND record->'state'->'Rejected'->>'reason' = 'DuplicateRecord'), 0)::int8
             FROM meterd_records",
            &[],
        )
        .await?;
    let risk = client
        .query_one(
            "SELECT count(*), coalesce(sum((record->>'quantity')::int8), 0)::int8 FROM meterd_records r
             WHERE state IN ('sealed', 'in_flight') AND record->'key'->'identity' ? 'Tenant'
               AND coalesce(record->'sent_as', 'null'::jsonb) = 'null'::jsonb
               AND NOT EXISTS (SELECT 1 FROM meterd_tenant_mappings m
                               WHERE m.tenant_id = r.record->'key'->'identity'->>'Tenant' AND m.mapping IS NOT NULL)",
            &[],
        )
        .await?;
    let buckets: i64 = client.query_one("SELECT count(*) FROM meterd_buckets", &[]).await?.get(0);
    let events = client.query_one("SELECT count(*), count(*) FILTER (WHERE late) FROM meterd_event_keys", &[]).await?;
    let (first_hour_ms, first_deadline_ms) = first_pending(client).await?;
    Ok(StatusTotals {
        records: u(q.get(0)),
        in_flight: u(q.get(1)),
        units: u(q.get(2)),
        lost_records: u(q.get(3)),
        lost_units: u(q.get(4)),
        open_buckets: u(buckets),
        at_risk_records: u(risk.get(0)),
        at_risk_units: u(risk.get(1)),
        first_hour_ms,
        first_deadline_ms,
        events_stored: u(events.get(0)),
        late_events: u(events.get(1)),
    })
}
