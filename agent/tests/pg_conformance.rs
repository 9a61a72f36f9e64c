//! The shared ledger in PostgreSQL (`PgLedger`, over `meterd_fleet`'s operations) against the same store
//! conformance suite as sled (`conformance/`), on a real throwaway PostgreSQL server. Each case's directory names
//! its own database, so a case that closes and reopens its ledger finds what it wrote.

mod conformance;

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Duration;

use meterd::fleet::pg_ledger::{PgLedger, PgLedgerConfig};
use meterd_fleet::connect::Database;
use meterd_fleet::seal::SealRules;
use meterd_fleet::test_postgres::TestPostgres;

/// The database of the case at `dir` (created the first time), as a URL.
fn database_for(pg: &TestPostgres, dir: &Path) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    let name = format!("case_{:016x}", h.finish());
    let admin = pg.url();
    let create = name.clone();
    // The suite calls `open` from inside its runtime: create on a thread of its own.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let c = meterd_fleet::connect_plain(&admin).await.unwrap();
            let exists = c.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&create]).await.unwrap();
            if exists.is_none() {
                c.batch_execute(&format!("CREATE DATABASE {create}")).await.unwrap();
            }
        });
    })
    .join()
    .unwrap();
    format!("postgres://meterd@127.0.0.1:{}/{name}?sslmode=disable", pg.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backend_conforms() {
    let pg = TestPostgres::start().expect("a PostgreSQL server (Debian's postgresql package)");
    let open = |dir: &Path| {
        let cfg = PgLedgerConfig {
            database: Database::parse(&database_for(&pg, dir), None).unwrap(),
            account: "111122223333".into(),
            node_id: "conformance".into(),
            products: vec!["p".into()],
            seal_rules: SealRules { down_after: Duration::from_secs(60), max_wait: Duration::from_secs(3600) },
        };
        PgLedger::open(cfg).unwrap()
    };
    // Event keys leave with their day's partition on the database's clock, not at a compaction's cutoff
    // (docs/fleet.md).
    conformance::run_all(open, conformance::Capabilities { forgets_keys_at_cutoff: false }).await;
}
