-- `status` in O(1), as the sled store's (`m/pending`, `m/open_buckets`, `m/lost`): totals kept in the same
-- transaction as every write that changes what they count (`totals::Delta`), instead of aggregating every pending
-- record (900,000 after AWS's largest hour) at each call.

-- Per product: its pending records (not in a terminal state: sealed or in flight), of them in flight, their whole
-- units; records AWS refused DuplicateRecord (revenue lost) and their units; and the open buckets that seals,
-- tenant mappings and roll-overs opened (+) or closed (-). Forwards open buckets too, counted per node
-- (`meterd_watermarks.buckets_opened`) so that forwards from many nodes never queue on one row: the open buckets
-- are the sum of both columns. Written by the seal (under the product's seal mark), `update_records` and mappings
-- (after their record locks, products in order).
CREATE TABLE meterd_queue_totals (
    product      text   PRIMARY KEY,
    records      bigint NOT NULL DEFAULT 0 CHECK (records >= 0),
    in_flight    bigint NOT NULL DEFAULT 0 CHECK (in_flight >= 0 AND in_flight <= records),
    units        bigint NOT NULL DEFAULT 0 CHECK (units >= 0),
    lost_records bigint NOT NULL DEFAULT 0 CHECK (lost_records >= 0),
    lost_units   bigint NOT NULL DEFAULT 0 CHECK (lost_units >= 0),
    buckets      bigint NOT NULL DEFAULT 0
);

-- Per tenant: pending records held under it with no identity to send them as yet, and their units. At risk
-- while the tenant has no mapping (`status` joins the mappings: a read bounded by the held tenants, not by the
-- records). A row goes when its count reaches 0.
CREATE TABLE meterd_held_totals (
    tenant  text   PRIMARY KEY,
    records bigint NOT NULL CHECK (records >= 0),
    units   bigint NOT NULL CHECK (units >= 0)
);

-- Per node: events its forwards counted late (their hour already sealed fleet-wide) and buckets they opened.
-- `forwarded` already counts the events stored.
ALTER TABLE meterd_watermarks ADD COLUMN late bigint NOT NULL DEFAULT 0;
ALTER TABLE meterd_watermarks ADD COLUMN buckets_opened bigint NOT NULL DEFAULT 0;

-- The most urgent pending record (deadline first, then hour: the sled queue's first key) by one index entry,
-- even when 900,000 records share a deadline.
DROP INDEX meterd_records_pending;
CREATE INDEX meterd_records_pending ON meterd_records (deadline_ms, hour_ms) WHERE state IN ('sealed', 'in_flight');

-- One-time backfill of a database written before the totals were kept (this migration's transaction holds the
-- migrator's lock, and the writers wait for it: nothing changes meanwhile).
INSERT INTO meterd_queue_totals (product, records, in_flight, units, lost_records, lost_units, buckets)
SELECT product, sum(records), sum(in_flight), sum(units), sum(lost_records), sum(lost_units), sum(buckets)
FROM (
    SELECT product,
           count(*) FILTER (WHERE state IN ('sealed', 'in_flight')) AS records,
           count(*) FILTER (WHERE state = 'in_flight') AS in_flight,
           coalesce(sum((record->>'quantity')::int8) FILTER (WHERE state IN ('sealed', 'in_flight')), 0) AS units,
           count(*) FILTER (WHERE state = 'rejected'
                              AND record->'state'->'Rejected'->>'reason' = 'DuplicateRecord') AS lost_records,
           coalesce(sum((record->>'quantity')::int8)
                    FILTER (WHERE state = 'rejected'
                              AND record->'state'->'Rejected'->>'reason' = 'DuplicateRecord'), 0) AS lost_units,
           0 AS buckets
    FROM meterd_records GROUP BY product
    UNION ALL
    SELECT product, 0, 0, 0, 0, 0, count(*) FROM meterd_buckets GROUP BY product
) AS t
GROUP BY product;

INSERT INTO meterd_held_totals (tenant, records, units)
SELECT record->'key'->'identity'->>'Tenant', count(*), coalesce(sum((record->>'quantity')::int8), 0)
FROM meterd_records
WHERE state IN ('sealed', 'in_flight') AND record->'key'->'identity' ? 'Tenant'
  AND coalesce(record->'sent_as', 'null'::jsonb) = 'null'::jsonb
GROUP BY 1;

UPDATE meterd_watermarks w SET late = k.late
FROM (SELECT node_id, count(*) AS late FROM meterd_event_keys WHERE late GROUP BY node_id) AS k
WHERE k.node_id = w.node_id;

-- Usage drops (`status`, `report`, the dashboard) read ~11 hours of usage per product × dimension, as the sled
-- store's kept hour summaries give them (`agent/src/store/hour_totals.rs`): `total` is the hour's sealed records'
-- recorded usage plus its open buckets' totals. One row per shard: a node's forwards add to the node's own row (so
-- forwards from many nodes never queue on one counter), ledger moves (a seal's or a mapping's usage moved to
-- another hour) to the row of shard ''. A seal turning buckets into records changes no total.
CREATE TABLE meterd_hour_totals (
    hour_ms   bigint  NOT NULL,
    product   text    NOT NULL,
    dimension text    NOT NULL,
    shard     text    NOT NULL,
    total     numeric NOT NULL,
    PRIMARY KEY (hour_ms, product, dimension, shard)
);

-- The biggest sealed records of an hour × product × dimension: an index range read of a hundred entries.
CREATE INDEX meterd_records_usage
    ON meterd_records (hour_ms, product, dimension, ((record->>'recorded')::numeric) DESC);

INSERT INTO meterd_hour_totals (hour_ms, product, dimension, shard, total)
SELECT hour_ms, product, dimension, '', sum(total)
FROM (
    SELECT hour_ms, product, dimension, (record->>'recorded')::numeric AS total FROM meterd_records
    UNION ALL
    SELECT hour_ms, product, dimension, total FROM meterd_buckets
) AS u
GROUP BY hour_ms, product, dimension;
