-- Seal requests (`meterd flush` in fleet mode): any agent asks the account's submitter — the lease holder, which
-- alone seals, fenced by its epoch — to seal every hour before cutoff_ms now, without waiting for
-- pipeline.seal_grace. The holder reads the row at each tick, seals as far as the fleet's watermarks allow, and
-- deletes the row once the account's products are sealed through it. A row outlives a change of holder: the
-- next holder honours it. Requests only ever move forward (GREATEST), so two flushes never undo each other.
CREATE TABLE meterd_seal_requests (
    account      text        PRIMARY KEY CHECK (length(account) BETWEEN 1 AND 128),
    cutoff_ms    bigint      NOT NULL,
    requested_by text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);

-- Revenue lost (records rejected DuplicateRecord on their first send) is summed by `status` at every call: rejected
-- records are few, so a partial index keeps that read to them instead of a scan of every record ever sealed.
CREATE INDEX meterd_records_rejected ON meterd_records (hour_ms) WHERE state = 'rejected';

-- The report's structure stamp (`report::structure`) must change with every write that moves usage between the
-- report's regions or keys while a paged reader may be between pages: seals raise `sealed_through`, but a tenant
-- mapping (buckets re-keyed to the identity, held records merged) and a leaving customer's early seal do not.
-- They count here, in the same transaction, under the product's seal mark they already hold FOR UPDATE.
ALTER TABLE meterd_seal_marks ADD COLUMN moves bigint NOT NULL DEFAULT 0;
