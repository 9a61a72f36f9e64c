-- The shared ledger: event keys (the dedupe window), conflicts, bucket totals, per-node forward watermarks,
-- per-product seal marks, carries and sealed records. Quantities are exact micro-units in `numeric` (meterd's
-- Micros is a u128; the CHECKs keep every total inside it). A customer is the agent's `Identity` and a tag set its
-- `TagSet`, each as canonical JSON text (serde_json of a sorted map / a fixed field order): equal values give equal
-- text, so they can be keys.

-- One row per idempotency key forwarded by any node, kept for the dedupe window. Partitioned by the day the
-- database stored it (its own clock: node clocks may disagree), so retention drops a whole day's partition
-- (O(1), no vacuum debt) instead of deleting rows. The primary key includes the partition column, as PostgreSQL
-- requires: uniqueness of the key across partitions is kept by the writer (it locks the key's stripe row below,
-- then looks the key up across partitions, in the inserting transaction).
CREATE TABLE meterd_event_keys (
    idempotency_key text        NOT NULL,
    stored_on       date        NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    digest          bytea       NOT NULL CHECK (length(digest) = 16),
    product         text        NOT NULL,
    event_time_ms   bigint      NOT NULL,
    -- The hour it was counted in (its own, or the open hour when its own was already sealed: `late`).
    hour_ms         bigint      NOT NULL,
    late            boolean     NOT NULL,
    quantity        numeric     NOT NULL CHECK (quantity >= 0),
    node_id         text        NOT NULL,
    -- When the node acknowledged it (the node's clock).
    recorded_at_ms  bigint      NOT NULL,
    PRIMARY KEY (idempotency_key, stored_on)
) PARTITION BY RANGE (stored_on);

-- Key stripes: a forward locks (FOR UPDATE, ascending) the rows of its keys' stripes (hashtext(key) & 4095), so
-- two nodes forwarding one key serialise. Row locks live in the rows, not in the server's shared lock table
-- (advisory locks would: thousands per forward could exhaust max_locks_per_transaction for every session).
CREATE TABLE meterd_key_stripes (stripe integer PRIMARY KEY CHECK (stripe BETWEEN 0 AND 4095));
INSERT INTO meterd_key_stripes SELECT generate_series(0, 4095);

-- A key forwarded again with other content: never counted, never dropped silently. One row per distinct content.
CREATE TABLE meterd_conflicts (
    idempotency_key  text        NOT NULL,
    digest           bytea       NOT NULL CHECK (length(digest) = 16),
    node_id          text        NOT NULL,
    product          text        NOT NULL,
    customer         text        NOT NULL,
    dimension        text        NOT NULL,
    quantity         numeric     NOT NULL,
    event_time_ms    bigint,
    recorded_at_ms   bigint      NOT NULL,
    -- What the key holds: the event that was counted.
    existing_digest  bytea       NOT NULL,
    existing_node_id text        NOT NULL,
    existing_hour_ms bigint      NOT NULL,
    detected_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (idempotency_key, digest)
);
CREATE INDEX meterd_conflicts_detected_at ON meterd_conflicts (detected_at);

-- Open hours' totals, one row per hour × product × customer × dimension × tag set (the sled store's bucket key).
-- Removed when their hour is sealed (the sealed record keeps the totals).
CREATE TABLE meterd_buckets (
    hour_ms   bigint  NOT NULL,
    product   text    NOT NULL,
    customer  text    NOT NULL,
    dimension text    NOT NULL,
    tags      text    NOT NULL,
    total     numeric NOT NULL CHECK (total >= 0 AND total < 340282366920938463463374607431768211456),
    events    bigint  NOT NULL CHECK (events >= 0),
    late      numeric NOT NULL CHECK (late >= 0 AND late <= total),
    PRIMARY KEY (hour_ms, product, customer, dimension, tags)
);

-- Per node: "everything this node acknowledged before watermark_ms has been forwarded" (the node's clock).
-- Moved only forward, in the same transaction as the events it covers.
CREATE TABLE meterd_watermarks (
    node_id        text        PRIMARY KEY CHECK (length(node_id) BETWEEN 1 AND 128),
    watermark_ms   bigint      NOT NULL,
    forwarded      bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Per product: every hour before sealed_through is sealed fleet-wide (NULL: nothing yet). Forwards read it
-- FOR SHARE and a seal writes it FOR UPDATE, so no event is counted into an hour while it is being sealed.
CREATE TABLE meterd_seal_marks (
    product        text   PRIMARY KEY,
    sealed_through bigint
);

-- The fraction of a unit each series carries to its next sealed hour.
CREATE TABLE meterd_carries (
    product   text    NOT NULL,
    customer  text    NOT NULL,
    dimension text    NOT NULL,
    carried   numeric NOT NULL CHECK (carried >= 0),
    PRIMARY KEY (product, customer, dimension)
);

-- Sealed records: exactly one per AWS key (hour × product × customer × dimension), by this primary key. `record`
-- is the agent's SealedRecord as JSON (content frozen at seal time; only its state moves, by the rule of
-- meterd's check_update). `state` repeats the state's name for queries.
CREATE TABLE meterd_records (
    hour_ms      bigint      NOT NULL,
    product      text        NOT NULL,
    customer     text        NOT NULL,
    dimension    text        NOT NULL,
    state        text        NOT NULL,
    deadline_ms  bigint      NOT NULL,
    record       jsonb       NOT NULL,
    sealed_epoch bigint      NOT NULL,
    sealed_by    text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hour_ms, product, customer, dimension)
);
CREATE INDEX meterd_records_pending ON meterd_records (deadline_ms) WHERE state IN ('sealed', 'in_flight');
