//! Versioned schema migrations, applied at start.
//!
//! All of it runs in one transaction that first takes a transaction-scoped advisory lock: agents starting together
//! queue on the lock, and the first one applies what is missing while the others then find nothing to do.
//! PostgreSQL's DDL is transactional, so a crash mid-migration leaves the previous version whole. A session-level
//! lock is not used: behind a transaction-mode pooler (PgBouncer) it can stay held by a pooled backend after the
//! agent is gone. A database migrated by a newer meterd (a version this build does not know) is refused rather
//! than written with an older idea of the schema.

use tokio_postgres::Client;

/// Every migration, in order. Never edit or reorder a released one: add the next.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "coordination", sql: include_str!("../migrations/0001_coordination.sql") },
    Migration { version: 2, name: "ledger", sql: include_str!("../migrations/0002_ledger.sql") },
    Migration { version: 3, name: "registry", sql: include_str!("../migrations/0003_registry.sql") },
    Migration { version: 4, name: "seal_requests", sql: include_str!("../migrations/0004_seal_requests.sql") },
    Migration { version: 5, name: "status_totals", sql: include_str!("../migrations/0005_status_totals.sql") },
    Migration { version: 6, name: "retention", sql: include_str!("../migrations/0006_retention.sql") },
];

/// The advisory lock key of the migrator (an arbitrary constant; other applications in the same database are
/// unlikely to pick it, and a clash only serialises their migrations with ours).
const LOCK_KEY: i64 = 0x6d65_7465_7264_0001; // "meterd" + 1

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the fleet database's schema is at version {found}, newer than this meterd knows ({known}): upgrade this \
         agent (a newer agent migrated the database)"
    )]
    TooNew { found: i32, known: i32 },
    #[error("fleet database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// What `migrate` did: the versions it applied (empty when the schema was current).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub versions: Vec<i32>,
    pub current: i32,
}

/// The schema version this build migrates a database to.
pub fn current() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The version a database's meterd schema is at (0: never migrated), read without writing or locking.
pub async fn schema_version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    let exists: bool =
        client.query_one("SELECT to_regclass('meterd_schema_migrations') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client.query_one("SELECT coalesce(max(version), 0) FROM meterd_schema_migrations", &[]).await?.get(0))
}

pub async fn migrate(client: &mut Client) -> Result<Applied, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS meterd_schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM meterd_schema_migrations", &[]).await?.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if found > known {
        return Err(MigrateError::TooNew { found, known });
    }
    let mut applied = Applied { versions: Vec::new(), current: found };
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.batch_execute(m.sql).await?;
        tx.execute("INSERT INTO meterd_schema_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])
            .await?;
        applied.versions.push(m.version);
        applied.current = m.version;
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "migration {} is out of order", m.name);
        }
    }
}
