//! The fleet's coordination against a real PostgreSQL server (started by the test): migrations, the node
//! registry, and the submitter lease with its fencing epoch.

use std::time::Duration;

use meterd_fleet::lease::{self, LeaseError, Terms};
use meterd_fleet::migrate::{self, MigrateError};
use meterd_fleet::nodes::{self, NodeError};
use meterd_fleet::test_postgres::TestPostgres;

async fn migrated(pg: &TestPostgres) -> meterd_fleet::Client {
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.expect("connect");
    migrate::migrate(&mut c).await.expect("migrate");
    c
}

#[tokio::test]
async fn migrations_apply_once_even_when_agents_start_together() {
    let pg = TestPostgres::start().expect("postgres");
    let mut joins = Vec::new();
    for _ in 0..8 {
        let url = pg.url();
        joins.push(tokio::spawn(async move {
            let mut c = meterd_fleet::connect_plain(&url).await.expect("connect");
            migrate::migrate(&mut c).await.expect("migrate")
        }));
    }
    let mut applied = Vec::new();
    for j in joins {
        applied.push(j.await.unwrap());
    }
    let known = migrate::MIGRATIONS.len() as i32;
    assert_eq!(applied.iter().filter(|a| !a.versions.is_empty()).count(), 1, "{applied:?}");
    assert!(applied.iter().all(|a| a.current == known), "{applied:?}");

    // A database migrated by a newer agent is refused, not written with an older idea of the schema.
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    c.execute("INSERT INTO meterd_schema_migrations (version, name) VALUES (999, 'from the future')", &[])
        .await
        .unwrap();
    match migrate::migrate(&mut c).await {
        Err(MigrateError::TooNew { found: 999, known: k }) => assert_eq!(k, known),
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn a_live_node_id_cannot_be_claimed_twice_and_a_silent_one_is_taken_back() {
    let pg = TestPostgres::start().expect("postgres");
    let c = migrated(&pg).await;
    // Long enough that the steps meant to run while the first claim is live do so on a loaded 2-core machine.
    let stale = Duration::from_secs(3);
    let first = nodes::register(&c, "node-a", "0.1.0", stale).await.expect("first claim");
    match nodes::register(&c, "node-a", "0.1.0", stale).await {
        Err(NodeError::InUse { node_id, .. }) => assert_eq!(node_id, "node-a"),
        other => panic!("a second live claim must be refused, got {other:?}"),
    }
    nodes::heartbeat(&c, &first).await.expect("heartbeat");
    nodes::register(&c, "node-b", "0.1.0", stale).await.expect("another id is free");

    // Silent for longer than `stale_after`: a new process takes the id; the old one learns it was replaced.
    tokio::time::sleep(stale + Duration::from_millis(300)).await;
    let second = nodes::register(&c, "node-a", "0.1.0", stale).await.expect("takeover of a silent id");
    assert_ne!(second.incarnation, first.incarnation);
    assert!(matches!(nodes::heartbeat(&c, &first).await, Err(NodeError::Replaced { .. })));
    nodes::heartbeat(&c, &second).await.expect("the new incarnation heartbeats");
    let listed = nodes::list(&c).await.unwrap();
    assert_eq!(listed.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["node-a", "node-b"]);
    assert_eq!(listed[0].incarnation, second.incarnation);
}

#[tokio::test]
async fn one_submitter_per_account_and_a_stale_one_is_fenced() {
    let pg = TestPostgres::start().expect("postgres");
    let c = migrated(&pg).await;
    let stale = Duration::from_secs(60);
    let a = nodes::register(&c, "a", "", stale).await.unwrap();
    let b = nodes::register(&c, "b", "", stale).await.unwrap();
    // The "still held" steps must finish inside the TTL even on a loaded machine: seconds, not milliseconds.
    let terms = Terms { ttl: Duration::from_secs(3), margin: Duration::from_secs(1) };

    let mut la = lease::acquire(&c, "acct-1", &a, terms).await.unwrap().expect("free lease");
    assert_eq!(la.epoch, 1);
    assert!(lease::acquire(&c, "acct-1", &b, terms).await.unwrap().is_none(), "held by a");
    assert_eq!(lease::acquire(&c, "acct-1", &a, terms).await.unwrap().unwrap().epoch, 1, "re-acquire keeps the epoch");
    lease::renew(&c, &mut la, terms).await.expect("renew while held");
    // Leases are per account.
    assert_eq!(lease::acquire(&c, "acct-2", &b, terms).await.unwrap().unwrap().epoch, 1);

    // a stops renewing (paused): the lease expires, b takes it with a new epoch.
    tokio::time::sleep(terms.ttl + Duration::from_millis(200)).await;
    assert!(!la.is_valid(std::time::Instant::now()), "the local trust window ended before the lease");
    let lb = lease::acquire(&c, "acct-1", &b, terms).await.unwrap().expect("expired lease is free");
    assert_eq!(lb.epoch, 2);

    // a wakes up: every write it tries is fenced; b's are not.
    assert!(matches!(lease::renew(&c, &mut la, terms).await, Err(LeaseError::Fenced { held: 1, .. })));
    let mut c2 = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    let tx = c2.transaction().await.unwrap();
    assert!(matches!(lease::fence(&tx, &la).await, Err(LeaseError::Fenced { .. })));
    lease::fence(&tx, &lb).await.expect("the current holder passes the fence");
    tx.commit().await.unwrap();

    // A clean resignation frees it at once; the next holder gets the next epoch.
    lease::resign(&c, &lb).await.unwrap();
    assert_eq!(lease::acquire(&c, "acct-1", &a, terms).await.unwrap().unwrap().epoch, 3);
    let holders = lease::holders(&c).await.unwrap();
    assert_eq!(
        holders.iter().map(|h| (h.0.as_str(), h.1.as_str(), h.2)).collect::<Vec<_>>(),
        [("acct-1", "a", 3), ("acct-2", "b", 1)]
    );
}

#[tokio::test]
async fn a_takeover_waits_for_the_fenced_write_in_flight() {
    let pg = TestPostgres::start().expect("postgres");
    let c = migrated(&pg).await;
    let a = nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    let b = nodes::register(&c, "b", "", Duration::from_secs(60)).await.unwrap();
    // Acquire and fence must both happen inside the TTL, also on a loaded machine.
    let terms = Terms { ttl: Duration::from_secs(3), margin: Duration::from_secs(1) };
    let la = lease::acquire(&c, "acct", &a, terms).await.unwrap().unwrap();

    // a's ledger write passes the fence and holds the lease row FOR SHARE...
    let mut ca = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    let tx = ca.transaction().await.unwrap();
    lease::fence(&tx, &la).await.unwrap();
    // ...the lease expires meanwhile, and b tries to take over: it must wait for a's transaction.
    tokio::time::sleep(terms.ttl + Duration::from_millis(100)).await;
    let url = pg.url();
    let takeover = tokio::spawn(async move {
        let cb = meterd_fleet::connect_plain(&url).await.unwrap();
        lease::acquire(&cb, "acct", &b, terms).await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!takeover.is_finished(), "a takeover committed while the old holder's fenced write was open");
    tx.commit().await.unwrap();
    let lb = takeover.await.unwrap().expect("free once a's write ended");
    assert_eq!(lb.epoch, 2);
}

#[tokio::test]
async fn state_survives_a_database_restart_and_clients_reconnect() {
    let mut pg = TestPostgres::start().expect("postgres");
    let c = migrated(&pg).await;
    let a = nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    let terms = Terms { ttl: Duration::from_secs(30), margin: Duration::from_secs(5) };
    let la = lease::acquire(&c, "acct", &a, terms).await.unwrap().unwrap();
    pg.restart().expect("restart");
    assert!(c.query_one("SELECT 1", &[]).await.is_err(), "the old session was cut by the restart");
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.expect("reconnect");
    assert!(migrate::migrate(&mut c).await.unwrap().versions.is_empty(), "schema kept");
    let tx = c.transaction().await.unwrap();
    lease::fence(&tx, &la).await.expect("the lease survived the restart");
    tx.commit().await.unwrap();
}
