//! The dedupe window: event keys live in one partition per UTC day (the database's clock) and retention drops
//! whole partitions — O(1), no row-by-row delete and no vacuum debt, the same bound as the sled store's dedupe
//! segments (`storage.dedupe_window`; the lease holder's hourly pass, `retention.rs`).
//!
//! Contract: a key is remembered for at least `dedupe_window` after it was stored, and at most one day longer
//! (its day's partition goes once the whole day is older than the window). A retry that arrives after its key was
//! forgotten is a new event and is counted again — so the window must cover every retry a client can make (the
//! agent's `pipeline.max_lateness` refuses events older than that at the edge; keep it shorter than the window).

use std::time::Duration;

use tokio_postgres::{Client, GenericClient};

/// Serialises partition DDL between agents (a second `CREATE TABLE IF NOT EXISTS` racing the first fails).
const LOCK_KEY: i64 = 0x6d65_7465_7264_0002; // "meterd" + 2

/// Creates the partitions of the days from `days_back` before today (UTC, database clock) to `days_ahead` after
/// it, where missing.
pub async fn ensure(client: &mut Client, days_back: i32, days_ahead: i32) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    let days = tx
        .query(
            "SELECT to_char(d, 'YYYYMMDD'), d::date::text, (d::date + 1)::text
             FROM generate_series((now() AT TIME ZONE 'UTC')::date - $1::int4,
                                  (now() AT TIME ZONE 'UTC')::date + $2::int4, interval '1 day') AS d",
            &[&days_back, &days_ahead],
        )
        .await?;
    for d in days {
        let (name, from, to): (String, String, String) = (d.get(0), d.get(1), d.get(2));
        // The values are dates the database formatted itself: nothing from outside reaches this DDL.
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS meterd_event_keys_p{name} PARTITION OF meterd_event_keys
             FOR VALUES FROM ('{from}') TO ('{to}')"
        ))
        .await?;
    }
    tx.commit().await
}

/// The day partitions that exist, oldest first (`YYYY-MM-DD`).
pub async fn list(client: &impl GenericClient) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT to_date(substring(c.relname FROM '_p([0-9]{8})$'), 'YYYYMMDD')::text AS day
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'meterd_event_keys'::regclass ORDER BY day",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What a retention pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Days whose event keys were dropped (`YYYY-MM-DD`).
    pub days: Vec<String>,
    /// Conflict rows older than the window (a report shows them while they are kept).
    pub conflicts: u64,
    /// Event keys dropped with those days, folded into `meterd_compacted` (the report's events ever stored).
    pub events: u64,
}

/// Drops every day partition that ends more than `window` ago, and conflicts detected before that. The keys a
/// partition held are counted per product into `meterd_compacted` in the same transaction (one read of the day
/// being dropped, by the retention pass, never by the write path).
pub async fn drop_expired(client: &mut Client, window: Duration) -> Result<Dropped, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    // Dropping a partition takes a brief exclusive lock on the parent; wait for in-flight forwards a bounded time
    // rather than queue every new forward behind this pass.
    tx.batch_execute("SET LOCAL lock_timeout = '10s'").await?;
    let expired = tx
        .query(
            "SELECT c.relname::text, day::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
                    LATERAL (SELECT to_date(substring(c.relname FROM '_p([0-9]{8})$'), 'YYYYMMDD') AS day) d
             WHERE i.inhparent = 'meterd_event_keys'::regclass
               AND (day + 1)::timestamp AT TIME ZONE 'UTC' <= now() - make_interval(secs => $1::float8)
             ORDER BY day",
            &[&window.as_secs_f64()],
        )
        .await?;
    let mut dropped = Dropped::default();
    for row in expired {
        let (table, day): (String, String) = (row.get(0), row.get(1));
        // `table` is a partition name read from the catalog, matched by the pattern above.
        for r in tx.query(&format!("SELECT product, count(*) FROM {table} GROUP BY product"), &[]).await? {
            let (product, n): (String, i64) = (r.get(0), r.get(1));
            let c = crate::retention::Compacted { events: n.max(0) as u64, ..Default::default() };
            crate::retention::fold(&tx, &product, &c).await?;
            dropped.events += c.events;
        }
        tx.batch_execute(&format!("DROP TABLE {table}")).await?;
        dropped.days.push(day);
    }
    dropped.conflicts = tx
        .execute(
            "DELETE FROM meterd_conflicts WHERE detected_at < now() - make_interval(secs => $1::float8)",
            &[&window.as_secs_f64()],
        )
        .await?;
    tx.commit().await?;
    Ok(dropped)
}
