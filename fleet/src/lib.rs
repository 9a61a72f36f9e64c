//! meterd fleet mode on PostgreSQL: the shared ledger and the coordination of the agents that write it.
//!
//! - [`connect`]: the database URL, password file and TLS (rustls, libpq's `sslmode` semantics).
//! - [`iam`]: IAM database authentication for RDS / Aurora (a fresh token as each connection's password).
//! - [`migrate`]: the schema, versioned, applied at start under a transaction-scoped advisory lock (so that many
//!   agents starting at once apply each migration exactly once, and a pooler cannot strand the lock).
//! - [`nodes`]: the node registry — unique node ids, incarnations, heartbeats.
//! - [`lease`]: one submitter per AWS account — a lease row with a fencing epoch checked inside every ledger write.
//! - [`forward`]: a node's acknowledged events into the shared ledger — unique event keys (replay / conflict),
//!   bucket totals and the node's forward watermark in one transaction, decided by the agent's own ingest rules.
//! - [`partitions`]: the dedupe window — event keys partitioned by day, retention drops partitions.
//! - [`retention`]: the lease holder's retention pass — old terminal records and day partitions of event keys
//!   leave, their totals folded into kept per-product counters in the same transaction.
//! - [`seal`]: fleet-wide sealing on the nodes' watermarks, under the account's lease, with the agent's seal
//!   arithmetic; one record per AWS key; record state updates by the agent's rule.
//! - [`registry`]: the fleet-wide customer registry — tenant mappings, lifecycles, agreements — by revision.
//! - [`seal_requests`]: `meterd flush` on any agent asks the account's lease holder to seal ended hours now.
//! - [`views`]: reads for `GET /fleet` and tests.
//! - [`report`]: bounded keyset pages of the ledger for the report, its structure stamp.
//! - [`totals`]: `status`'s figures kept in the transactions that change them (O(1) reads).
//! - [`hours`]: one hour's usage per product × dimension and its biggest records, for usage-drop detection.
//! - [`test_postgres`]: a real throwaway PostgreSQL server for tests (initdb + pg_ctl in a temp dir).
//!
//! The database's `now()` is the only clock: agents' clocks may disagree; the database is the one they share.

pub mod codec;
pub mod connect;
pub mod forward;
pub mod hours;
pub mod iam;
pub mod lease;
pub mod migrate;
pub mod nodes;
pub mod partitions;
pub mod registry;
pub mod report;
pub mod retention;
pub mod seal;
pub mod seal_requests;
pub mod test_postgres;
pub mod totals;
pub mod views;

pub use tokio_postgres::{Client, Error as PgError};

/// Connects with `url` (`postgres://user@host:port/db`, libpq's URL form) and drives the connection on a task.
/// TLS is not negotiated by this function (plain connections are for loopback and tests).
pub async fn connect_plain(url: &str) -> Result<Client, PgError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "fleet database connection ended");
        }
    });
    Ok(client)
}
