-- Fleet coordination: which agents are alive, and which one submits for each AWS account.
-- Times are the database's own now(): agents' clocks may disagree, the database is the one clock they share.

-- One row per agent (node_id, unique in the fleet). A node restarting gets a new incarnation; a second process
-- claiming a live node's id is refused (its heartbeat is recent and the incarnation differs).
CREATE TABLE meterd_nodes (
    node_id      text        PRIMARY KEY CHECK (length(node_id) BETWEEN 1 AND 128),
    incarnation  uuid        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    version      text        NOT NULL DEFAULT ''
);

-- The submitter lease per AWS account (river's leader row, plus a fencing epoch). `epoch` grows by one at every
-- change of holder, never goes back, and every ledger write a submitter makes checks it in the same transaction:
-- a paused ex-leader that wakes up cannot write with its old epoch.
CREATE TABLE meterd_leases (
    account     text        PRIMARY KEY CHECK (length(account) BETWEEN 1 AND 128),
    holder      text        NOT NULL,
    incarnation uuid        NOT NULL,
    epoch       bigint      NOT NULL CHECK (epoch > 0),
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
