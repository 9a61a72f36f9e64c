-- Retention of the shared ledger, as the sled store's `m/compacted`: the lease holder deletes terminal records whose
-- hour is older than `storage.retention`, and event keys leave with their day's partition past
-- `storage.dedupe_window`; what they held is folded in here, per product, in the same transaction, so the report's
-- totals never shrink when history goes.
CREATE TABLE meterd_compacted (
    product      text    PRIMARY KEY,
    records      bigint  NOT NULL DEFAULT 0 CHECK (records >= 0),
    events       bigint  NOT NULL DEFAULT 0 CHECK (events >= 0),
    recorded     numeric NOT NULL DEFAULT 0 CHECK (recorded >= 0),
    late         numeric NOT NULL DEFAULT 0 CHECK (late >= 0),
    accepted     bigint  NOT NULL DEFAULT 0 CHECK (accepted >= 0),
    rejected     bigint  NOT NULL DEFAULT 0 CHECK (rejected >= 0),
    expired      bigint  NOT NULL DEFAULT 0 CHECK (expired >= 0)
);
-- Revenue lost (DuplicateRecord) is kept in `meterd_queue_totals` (migration 5), which retention never lowers.

-- Retention reads the oldest terminal records, hour first, in bounded batches: a partial index on exactly those, so a
-- pass never walks pending records (a held tenant's can wait for weeks) to find the next batch.
CREATE INDEX meterd_records_terminal ON meterd_records (hour_ms)
    WHERE state IN ('accepted', 'rejected', 'expired', 'carried', 'merged');
