-- The fleet-wide customer registry: tenant mappings, each marketplace customer's lifecycle (status + history, the
-- agent's CustomerLifecycle as JSON) and the agreements that name them. A mapping or lifecycle event posted to any
-- agent is written here; every agent keeps a copy (its spool's registry keys) for the ingest gate and follows it
-- by revision.
--
-- Every registry write first locks the one row of meterd_registry_lock, then draws its revision: writes commit in
-- revision order, so an agent that has seen revision r has seen every write before it (a sequence alone would let
-- a slow transaction commit a smaller revision after a larger one was read). Conflicting writes are thereby
-- ordered deterministically; the agent's domain rules decide them (a status only moves forward, an event id seen
-- before changes nothing, the last mapping of a tenant wins).
CREATE TABLE meterd_registry_lock (id boolean PRIMARY KEY DEFAULT true CHECK (id));
INSERT INTO meterd_registry_lock VALUES (true);
CREATE SEQUENCE meterd_registry_revision;

-- One row per tenant ever mapped; `mapping` (the agent's TenantMapping) is NULL once removed: a tombstone, so an
-- agent following the revisions drops its copy too. Bounded by the seller's tenants.
CREATE TABLE meterd_tenant_mappings (
    tenant_id  text        PRIMARY KEY CHECK (length(tenant_id) > 0),
    mapping    jsonb,
    revision   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meterd_tenant_mappings_revision ON meterd_tenant_mappings (revision);

-- One row per marketplace customer: `customer` is 'l' + license ARN or 'g' + legacy customer identifier (the key
-- the agent's sled store uses). `accepts_usage` repeats the status for the leader's final-hour seal; `left_at_ms`
-- is when it stopped accepting usage (the agent's clock at the event), which caps its final records' deadlines.
CREATE TABLE meterd_customers (
    customer      text        PRIMARY KEY,
    lifecycle     jsonb       NOT NULL,
    accepts_usage boolean     NOT NULL,
    left_at_ms    bigint,
    revision      bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meterd_customers_revision ON meterd_customers (revision);
-- The leader asks every tick for the customers that left lately (`registry::seal_leaving`): a range on when they
-- left, so the read stays small however many customers have ever left.
CREATE INDEX meterd_customers_left ON meterd_customers (left_at_ms) WHERE NOT accepts_usage;

-- `Purchase Agreement *` events name only the agreement: which customer it is.
CREATE TABLE meterd_agreements (
    agreement_id text   PRIMARY KEY,
    customer     text   NOT NULL REFERENCES meterd_customers (customer),
    revision     bigint NOT NULL
);
CREATE INDEX meterd_agreements_revision ON meterd_agreements (revision);
