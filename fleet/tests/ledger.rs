//! The shared ledger against a real PostgreSQL server (started by each test): forwarding (replays, conflicts,
//! concurrent nodes), fleet-wide sealing on watermarks, one record per AWS key under fenced leases, record state
//! updates, the dedupe window's partitions, and a database restart mid-run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use meterd_core::clock::{HOUR_MS, hour_start};
use meterd_core::domain::event::{Identity, UsageEvent};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::{RecordState, SealedRecord, UpdateRefused};
use meterd_core::domain::seal::SealPolicy;
use meterd_fleet::forward::{self, Acked};
use meterd_fleet::lease::{self, LeaseError, Terms};
use meterd_fleet::seal::{self, SealError, SealRules};
use meterd_fleet::test_postgres::TestPostgres;
use meterd_fleet::{Client, migrate, nodes, partitions, views};

async fn migrated(pg: &TestPostgres) -> Client {
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.expect("connect");
    migrate::migrate(&mut c).await.expect("migrate");
    c
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn customer(n: u32) -> Identity {
    Identity::Aws { account_id: "123456789012".into(), license_arn: format!("arn:aws:license-manager::lic-{n}") }
}

fn event(key: &str, who: Identity, micros: u128, at_ms: i64) -> UsageEvent {
    UsageEvent {
        idempotency_key: key.into(),
        product: "p".into(),
        identity: who,
        dimension: "requests".into(),
        quantity: Micros(micros),
        timestamp_ms: Some(at_ms),
        tags: Default::default(),
    }
}

fn acked(e: UsageEvent, received_ms: i64) -> Acked {
    Acked { event: e, received_ms }
}

/// Sum of every bucket's total and event count, per (hour, customer).
async fn totals(c: &Client) -> BTreeMap<(i64, Identity), (Micros, u64, Micros)> {
    let mut out = BTreeMap::new();
    for (k, b) in views::buckets(c).await.unwrap() {
        let e = out.entry((k.hour_ms, k.identity)).or_insert((Micros::ZERO, 0, Micros::ZERO));
        e.0 = e.0.try_add(b.total).unwrap();
        e.1 += b.events;
        e.2 = e.2.try_add(b.late).unwrap();
    }
    out
}

const POLICY: SealPolicy =
    SealPolicy { window_ms: 6 * HOUR_MS, product_windows_ms: BTreeMap::new(), margin_ms: 0, zero_records: false };

/// A lease that outlives every step of a test on a loaded machine (the default TTL is 10 s, and the down-node
/// test alone sleeps 7 s while holding it).
const LONG: Terms = Terms { ttl: Duration::from_secs(300), margin: Duration::from_secs(10) };

fn products() -> Vec<String> {
    vec!["p".to_string()]
}

#[tokio::test]
async fn a_retry_on_another_node_counts_once_and_other_content_under_a_key_is_a_visible_conflict() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let t = hour_start(now_ms()) + 60_000;
    let e = event("k1", customer(1), 1_500_000, t);

    let first = forward::forward(&mut c, "a", &[acked(e.clone(), t)], t).await.unwrap();
    assert_eq!((first.stored, first.replayed), (1, 0));
    // The SDK's retry landed on node b, and b forwards it too: a replay, counted once.
    let again = forward::forward(&mut c, "b", &[acked(e.clone(), t + 5)], t + 5).await.unwrap();
    assert_eq!((again.stored, again.replayed, again.conflicts.len()), (0, 1, 0));
    // The same key with other content (another quantity) from node c: a conflict, not counted, recorded.
    let other = event("k1", customer(1), 9_000_000, t);
    let conflict = forward::forward(&mut c, "c", &[acked(other.clone(), t + 9)], t + 9).await.unwrap();
    assert_eq!((conflict.stored, conflict.replayed), (0, 0));
    assert_eq!(conflict.conflicts.len(), 1);
    assert_eq!(conflict.conflicts[0].existing_node_id, "a");
    // Inside one batch too: the first of two contents under a key counts, the second is a conflict.
    let batch = [acked(event("k2", customer(1), 2_000_000, t), t), acked(event("k2", customer(1), 3, t), t)];
    let inside = forward::forward(&mut c, "b", &batch, t + 10).await.unwrap();
    assert_eq!((inside.stored, inside.conflicts.len()), (1, 1));

    let sums = totals(&c).await;
    assert_eq!(sums[&(hour_start(t), customer(1))], (Micros(3_500_000), 2, Micros::ZERO));
    let conflicts = views::conflicts(&c).await.unwrap();
    assert_eq!(
        conflicts.iter().map(|r| (r.idempotency_key.as_str(), r.node_id.as_str(), r.quantity)).collect::<Vec<_>>(),
        [("k1", "c", Micros(9_000_000)), ("k2", "b", Micros(3))]
    );
    // Forwarding the conflicting batch again (a forwarder retry) records nothing twice.
    forward::forward(&mut c, "c", &[acked(other, t + 9)], t + 9).await.unwrap();
    assert_eq!(views::conflicts(&c).await.unwrap().len(), 2);
    assert_eq!(views::event_keys(&c).await.unwrap(), 2);
    let marks = views::watermarks(&c).await.unwrap();
    assert_eq!(marks.iter().map(|m| (m.0.as_str(), m.1)).collect::<Vec<_>>(), [("a", t), ("b", t + 10), ("c", t + 9)]);
    // A node id the registry could not hold is refused, naming the setting.
    let e = forward::forward(&mut c, "", &[], t).await.unwrap_err().to_string();
    assert!(e.starts_with("fleet.node_id: "), "{e}");
    // A watermark never moves back.
    forward::forward(&mut c, "a", &[], t - 1000).await.unwrap();
    assert_eq!(views::watermarks(&c).await.unwrap()[0].1, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn three_nodes_forwarding_in_parallel_sum_exactly() {
    let pg = TestPostgres::start().expect("postgres");
    drop(migrated(&pg).await);
    let t = hour_start(now_ms());
    // 3 nodes × 30 batches × 20 events over 8 customers; every key is also sent by the next node (an SDK retry on
    // another agent), in another batch, so the same keys race between nodes.
    const BATCHES: u64 = 30;
    const PER_BATCH: u64 = 20;
    let key_event = move |node: u64, b: u64, i: u64| {
        let n = node * 1_000_000 + b * 1000 + i;
        event(&format!("n{node}-b{b}-e{i}"), customer((n % 8) as u32), u128::from(n % 7 + 1) * 250_000, t + 1000)
    };
    let mut tasks = Vec::new();
    for node in 0..3u64 {
        let url = pg.url();
        tasks.push(tokio::spawn(async move {
            let mut c = meterd_fleet::connect_plain(&url).await.unwrap();
            let mut stored = 0;
            for b in 0..BATCHES {
                let mut batch: Vec<Acked> = (0..PER_BATCH).map(|i| acked(key_event(node, b, i), t + 1000)).collect();
                let prev = (node + 2) % 3;
                batch.extend((0..PER_BATCH).map(|i| acked(key_event(prev, b, i), t + 1000)));
                let f = forward::forward(&mut c, &format!("node-{node}"), &batch, t + 2000).await.unwrap();
                assert!(f.conflicts.is_empty(), "{f:?}");
                stored += f.stored;
            }
            stored
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap();
    }
    let mut expected: BTreeMap<(i64, Identity), (Micros, u64, Micros)> = BTreeMap::new();
    for node in 0..3 {
        for b in 0..BATCHES {
            for i in 0..PER_BATCH {
                let e = key_event(node, b, i);
                let s = expected.entry((t, e.identity)).or_insert((Micros::ZERO, 0, Micros::ZERO));
                s.0 = s.0.try_add(e.quantity).unwrap();
                s.1 += 1;
            }
        }
    }
    assert_eq!(stored, 3 * BATCHES * PER_BATCH, "each key stored by exactly one node");
    let c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    assert_eq!(totals(&c).await, expected);
    assert_eq!(views::event_keys(&c).await.unwrap(), (3 * BATCHES * PER_BATCH) as i64);
}

#[tokio::test]
async fn a_seal_waits_for_a_lagging_node_and_seals_once_it_forwarded() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let now = now_ms();
    let open = hour_start(now);
    let h = open - 3 * HOUR_MS;
    let rules = SealRules { down_after: Duration::from_secs(60), max_wait: Duration::from_secs(24 * 3600) };
    let me = nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    nodes::register(&c, "b", "", Duration::from_secs(60)).await.unwrap();
    nodes::register(&c, "c", "", Duration::from_secs(60)).await.unwrap();
    let lease = lease::acquire(&c, "acct", &me, LONG).await.unwrap().unwrap();

    forward::forward(&mut c, "a", &[acked(event("a1", customer(1), 1_500_000, h + 600_000), now)], now).await.unwrap();
    forward::forward(&mut c, "b", &[acked(event("b1", customer(1), 2_000_000, h + 1_200_000), now)], now)
        .await
        .unwrap();
    // c has forwarded only what it acknowledged before 40 minutes into h.
    let c1 = acked(event("c1", customer(1), 1_000_000, h + 1_800_000), h + 1_800_000);
    forward::forward(&mut c, "c", &[c1], h + 2_400_000).await.unwrap();

    let s = seal::seal(&mut c, &lease, &products(), open, &POLICY, rules).await.unwrap();
    assert_eq!(s.sealed_through, Some(h), "hours before h only: c may still hold events of h");
    assert_eq!(s.waiting_for.iter().map(|l| l.node_id.as_str()).collect::<Vec<_>>(), ["c"]);
    assert!(seal::records(&c, "p").await.unwrap().is_empty());

    // c catches up: h is sealed with everything, the fraction carried on.
    let c2 = acked(event("c2", customer(1), 800_000, h + 3_000_000), h + 3_000_000);
    forward::forward(&mut c, "c", &[c2], now).await.unwrap();
    let s = seal::seal(&mut c, &lease, &products(), open, &POLICY, rules).await.unwrap();
    assert_eq!((s.sealed_through, s.records, s.waiting_for.len()), (Some(open), 1, 0));
    let records = seal::records(&c, "p").await.unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r.key.hour_ms, r.quantity, r.recorded, r.carried_out), (h, 5, Micros(5_300_000), Micros(300_000)));
    assert_eq!(r.state, RecordState::Sealed);
    assert_eq!(r.deadline_ms, h + 6 * HOUR_MS, "the agent's deadline rule: the window from the hour's start");
    assert!(views::buckets(&c).await.unwrap().is_empty(), "sealed buckets are removed");
}

#[tokio::test]
async fn a_down_node_is_waited_for_a_bounded_time_and_what_it_forwards_later_is_late() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let now = now_ms();
    let open = hour_start(now);
    let h = open - 2 * HOUR_MS;
    // Seconds, not milliseconds: a must stay live across its heartbeat and the seal on a loaded machine.
    let down_after = Duration::from_secs(5);
    let rules = SealRules { down_after, max_wait: Duration::from_secs(24 * 3600) };
    let a = nodes::register(&c, "a", "", down_after).await.unwrap();
    nodes::register(&c, "c", "", down_after).await.unwrap();
    let lease = lease::acquire(&c, "acct", &a, LONG).await.unwrap().unwrap();
    forward::forward(&mut c, "a", &[acked(event("a1", customer(1), 2_000_000, h + 60_000), now)], now).await.unwrap();
    let c1 = acked(event("c1", customer(1), 1_000_000, h + 300_000), h + 300_000);
    forward::forward(&mut c, "c", &[c1], h + 600_000).await.unwrap();

    let s = seal::seal(&mut c, &lease, &products(), open, &POLICY, rules).await.unwrap();
    assert_eq!(s.sealed_through, Some(h), "c is live and lagging: h waits");

    // c dies (no more heartbeats). After down_after, the seal stops waiting for it.
    tokio::time::sleep(down_after + Duration::from_secs(2)).await;
    nodes::heartbeat(&c, &a).await.unwrap();
    let s = seal::seal(&mut c, &lease, &products(), open, &POLICY, rules).await.unwrap();
    assert_eq!((s.sealed_through, s.waiting_for.len()), (Some(open), 0));
    let before = seal::records(&c, "p").await.unwrap();
    assert_eq!(before.iter().map(|r| (r.key.hour_ms, r.quantity)).collect::<Vec<_>>(), [(h, 3)]);

    // c comes back with an event of h it had acknowledged but not forwarded: counted, in the open hour, late.
    let back = nodes::register(&c, "c", "", down_after).await.expect("c takes its id back");
    assert_eq!(back.node_id, "c");
    let received = now_ms();
    let late = acked(event("c2", customer(1), 4_000_000, h + 900_000), received);
    let f = forward::forward(&mut c, "c", &[late], received).await.unwrap();
    assert_eq!((f.stored, f.late), (1, 1));
    let sums = totals(&c).await;
    let open_now = hour_start(received).max(open);
    assert_eq!(sums[&(open_now, customer(1))], (Micros(4_000_000), 1, Micros(4_000_000)));
    assert_eq!(seal::records(&c, "p").await.unwrap(), before, "the sealed record of h is frozen");
}

/// Forwards one event per customer in hour `h` from node `node` and moves its watermark to now.
async fn forward_hour(c: &mut Client, node: &str, h: i64, customers: u32) {
    let now = now_ms();
    let batch: Vec<Acked> =
        (0..customers).map(|i| acked(event(&format!("{node}-{i}"), customer(i), 2_000_000, h + 1000), now)).collect();
    forward::forward(c, node, &batch, now).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn racing_sealers_leave_one_record_per_aws_key_and_a_stale_leader_is_fenced() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let open = hour_start(now_ms());
    let h = open - 2 * HOUR_MS;
    let rules = SealRules { down_after: Duration::from_secs(60), max_wait: Duration::from_secs(24 * 3600) };
    let a = nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    let b = nodes::register(&c, "b", "", Duration::from_secs(60)).await.unwrap();
    forward_hour(&mut c, "a", h, 5).await;
    forward_hour(&mut c, "b", h, 5).await;

    // a leads, is paused past its lease, and b takes over with the next epoch.
    let terms = Terms { ttl: Duration::from_secs(3), margin: Duration::from_secs(1) };
    let la = lease::acquire(&c, "acct", &a, terms).await.unwrap().unwrap();
    tokio::time::sleep(terms.ttl + Duration::from_millis(500)).await;
    let lb = lease::acquire(&c, "acct", &b, LONG).await.unwrap().unwrap();
    assert_eq!((la.epoch, lb.epoch), (1, 2));

    // a wakes up and seals at the same time as b does, twice (two of b's tasks, e.g. a flush and the sealer).
    let mut tasks = Vec::new();
    for l in [la.clone(), lb.clone(), lb.clone()] {
        let url = pg.url();
        tasks.push(tokio::spawn(async move {
            let mut c = meterd_fleet::connect_plain(&url).await.unwrap();
            seal::seal(&mut c, &l, &products(), open, &POLICY, rules).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert!(matches!(outcomes[0], Err(SealError::Fenced(LeaseError::Fenced { held: 1, .. }))), "{:?}", outcomes[0]);
    let sealed: u64 =
        outcomes[1..].iter().map(|o| o.as_ref().expect("the current leader's seals succeed").records).sum();
    assert_eq!(sealed, 5, "five AWS keys, each sealed by exactly one of the racing seals");
    let records = seal::records(&c, "p").await.unwrap();
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r.quantity == 4), "both nodes' usage in each record: {records:?}");

    // The AWS key is the primary key: a second record for it cannot commit, whatever writes it.
    let dup = c
        .execute(
            "INSERT INTO meterd_records (hour_ms, product, customer, dimension, state, deadline_ms, record,
                                         sealed_epoch, sealed_by)
             SELECT hour_ms, product, customer, dimension, state, deadline_ms, record, 3, 'x' FROM meterd_records
             LIMIT 1",
            &[],
        )
        .await;
    assert!(dup.is_err(), "a duplicate AWS key was accepted");

    // States move by the agent's rule, under the current lease only.
    let r = records[0].clone();
    let in_flight = SealedRecord { state: RecordState::InFlight { attempts: 1, next_attempt_ms: 0 }, ..r.clone() };
    assert!(matches!(
        seal::update_records(&mut c, &la, std::slice::from_ref(&in_flight)).await,
        Err(SealError::Fenced(_))
    ));
    seal::update_records(&mut c, &lb, std::slice::from_ref(&in_flight)).await.unwrap();
    let changed = SealedRecord { quantity: r.quantity + 1, ..in_flight.clone() };
    assert!(matches!(
        seal::update_records(&mut c, &lb, &[changed]).await,
        Err(SealError::Refused(UpdateRefused::ContentChanged(_)))
    ));
    let accepted = SealedRecord {
        state: RecordState::Accepted {
            metering_record_id: Some("m-1".into()),
            aws_request_id: None,
            at_ms: 1,
            verify: false,
        },
        ..r.clone()
    };
    seal::update_records(&mut c, &lb, std::slice::from_ref(&accepted)).await.unwrap();
    // All or nothing: a refused record in a batch leaves the others unchanged too.
    let other = SealedRecord { state: RecordState::InFlight { attempts: 1, next_attempt_ms: 0 }, ..records[1].clone() };
    assert!(matches!(
        seal::update_records(&mut c, &lb, &[other, in_flight]).await,
        Err(SealError::Refused(UpdateRefused::Final(_, "accepted")))
    ));
    let now = seal::records(&c, "p").await.unwrap();
    assert_eq!(now[0], accepted);
    assert_eq!(now[1].state, RecordState::Sealed);
    // The submitter's queue: what is left to send.
    let pending = seal::pending_records(&c, 100).await.unwrap();
    assert_eq!(pending, now[1..].to_vec());
    assert_eq!(seal::pending_records(&c, 2).await.unwrap().len(), 2);
}

#[tokio::test]
async fn retention_drops_a_days_partition_and_a_retry_after_the_window_is_a_new_event() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let t = hour_start(now_ms()) + 1000;
    forward::forward(&mut c, "a", &[acked(event("old", customer(1), 1_000_000, t), t)], t).await.unwrap();
    forward::forward(&mut c, "a", &[acked(event("new", customer(1), 1_000_000, t), t)], t).await.unwrap();
    // Age "old" by five days: move its row into that day's partition (a test cannot wait for days to pass).
    partitions::ensure(&mut c, 10, 2).await.unwrap();
    c.execute("UPDATE meterd_event_keys SET stored_on = stored_on - 5 WHERE idempotency_key = 'old'", &[])
        .await
        .unwrap();
    let window = Duration::from_secs(2 * 24 * 3600);
    let dropped = partitions::drop_expired(&mut c, window).await.unwrap();
    // Days 10..3 back end more than two days ago; the partitions of yesterday, today and ahead stay.
    assert_eq!(dropped.days.len(), 8, "{dropped:?}");
    let days = partitions::list(&c).await.unwrap();
    assert_eq!(days.len(), 5, "{days:?}");
    assert_eq!(views::event_keys(&c).await.unwrap(), 1, "the old key went with its partition");

    // The documented contract: past the window a key is forgotten, so a retry (here with other content) is new.
    let f = forward::forward(&mut c, "b", &[acked(event("old", customer(1), 7_000_000, t), t)], t).await.unwrap();
    assert_eq!((f.stored, f.conflicts.len()), (1, 0));
    // Within the window it is remembered, also from an older day's partition than today's.
    c.execute("UPDATE meterd_event_keys SET stored_on = stored_on - 1 WHERE idempotency_key = 'new'", &[])
        .await
        .unwrap();
    let same = event("new", customer(1), 1_000_000, t);
    let f = forward::forward(&mut c, "c", &[acked(same, t)], t).await.unwrap();
    assert_eq!((f.stored, f.replayed), (0, 1), "a retry finds its key in yesterday's partition");
    let f = forward::forward(&mut c, "b", &[acked(event("new", customer(1), 7_000_000, t), t)], t).await.unwrap();
    assert_eq!((f.stored, f.conflicts.len()), (0, 1));
    // A second pass finds nothing more to drop.
    assert!(partitions::drop_expired(&mut c, window).await.unwrap().days.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_run_loses_nothing_committed_and_counts_nothing_twice() {
    let mut pg = TestPostgres::start().expect("postgres");
    drop(migrated(&pg).await);
    let t = hour_start(now_ms()) + 1000;
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let url = pg.url();
    let (d, s) = (done.clone(), stop.clone());
    // A forwarder: each batch is resent until one forward of it succeeds (reconnecting as needed), as the
    // agent's forwarder must — so a batch whose commit was lost with the connection is sent again.
    let forwarder = tokio::spawn(async move {
        let mut client: Option<Client> = None;
        let mut batches = 0u64;
        let mut errors = 0u64;
        while !s.load(Ordering::SeqCst) {
            let batch: Vec<Acked> =
                (0..25).map(|i| acked(event(&format!("b{batches}-{i}"), customer(i % 3), 1_000_000, t), t)).collect();
            loop {
                let c = match &mut client {
                    Some(c) => c,
                    None => match meterd_fleet::connect_plain(&url).await {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                match forward::forward(c, "a", &batch, t).await {
                    Ok(_) => break,
                    Err(_) => {
                        errors += 1;
                        client = None;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            batches += 1;
            d.store(batches as usize, Ordering::SeqCst);
        }
        (batches, errors)
    });
    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(5).await;
    // Immediate stop: crash-like, in-flight sessions cut, recovery from the WAL at start.
    pg.restart().expect("restart");
    let after = done.load(Ordering::SeqCst);
    wait_for(after + 5).await;
    stop.store(true, Ordering::SeqCst);
    let (batches, errors) = forwarder.await.unwrap();
    assert!(errors > 0 && after < batches as usize, "the forwarder ran across the restart: {errors} failed forwards");

    let c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    let events = batches as i64 * 25;
    assert_eq!(views::event_keys(&c).await.unwrap(), events);
    let sums = totals(&c).await;
    let total: u128 = sums.values().map(|s| s.0.0).sum();
    let counted: u64 = sums.values().map(|s| s.1).sum();
    assert_eq!((total, counted as i64), (events as u128 * 1_000_000, events), "every event exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_waits_for_a_seal_in_flight_and_then_counts_the_sealed_hour_late() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let now = now_ms();
    let open = hour_start(now);
    let h = open - 2 * HOUR_MS;
    forward::forward(&mut c, "a", &[acked(event("first", customer(1), 1_000_000, h), now)], now).await.unwrap();

    // A seal in flight holds the product's mark FOR UPDATE, as seal() does, and is about to seal up to `open`.
    let mut sealer = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    let tx = sealer.transaction().await.unwrap();
    tx.query("SELECT sealed_through FROM meterd_seal_marks WHERE product = 'p' FOR UPDATE", &[]).await.unwrap();
    let url = pg.url();
    let pending = tokio::spawn(async move {
        let mut c = meterd_fleet::connect_plain(&url).await.unwrap();
        let e = acked(event("during", customer(1), 2_000_000, h + 60_000), now);
        forward::forward(&mut c, "b", &[e], now).await.unwrap()
    });
    // Only ever a false pass on a slow machine (the forward had not got there yet), never a false failure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "a forward committed into an hour while it was being sealed");
    tx.execute("UPDATE meterd_seal_marks SET sealed_through = $1 WHERE product = 'p'", &[&open]).await.unwrap();
    tx.commit().await.unwrap();
    // The forward decided against the new mark: h is sealed, so the event is counted in the open hour, late.
    let f = pending.await.unwrap();
    assert_eq!((f.stored, f.late), (1, 1));
    let sums = totals(&c).await;
    assert_eq!(sums[&(open, customer(1))], (Micros(2_000_000), 1, Micros(2_000_000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn two_nodes_racing_one_key_with_different_contents_count_one_and_record_the_other() {
    let pg = TestPostgres::start().expect("postgres");
    drop(migrated(&pg).await);
    let t = hour_start(now_ms()) + 1000;
    const KEYS: u128 = 1000;
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for (node, micros) in [("a", 1_000_000u128), ("b", 3_000_000)] {
        let url = pg.url();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = meterd_fleet::connect_plain(&url).await.unwrap();
            let mut f = forward::Forwarded::default();
            start.wait().await;
            // Fifty batches of 20, in the same key order on both nodes, so they race key for key.
            for b in 0..50u128 {
                let batch: Vec<Acked> =
                    (0..20).map(|i| acked(event(&format!("k{}", b * 20 + i), customer(1), micros, t), t)).collect();
                let one = forward::forward(&mut c, node, &batch, t).await.unwrap();
                f.stored += one.stored;
                f.conflicts.extend(one.conflicts);
            }
            (micros, f)
        }));
    }
    let mut expected = 0u128;
    let (mut stored, mut conflicts) = (0, 0);
    for task in tasks {
        let (micros, f) = task.await.unwrap();
        expected += u128::from(f.stored) * micros;
        stored += f.stored;
        conflicts += f.conflicts.len();
    }
    assert_eq!((u128::from(stored), conflicts as u128), (KEYS, KEYS), "each key counted once, the other recorded");
    let c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    let sums = totals(&c).await;
    assert_eq!(sums[&(hour_start(t), customer(1))].0, Micros(expected));
    assert_eq!(views::conflicts(&c).await.unwrap().len() as u128, KEYS);
}

/// A leader paused inside a fenced transaction (GC, a stopped VM, SIGSTOP) holds the lease row `FOR SHARE`, which
/// blocks every takeover. The sessions `Database` opens are ended by the server once idle in a transaction for
/// `IDLE_IN_TRANSACTION`, so the locks go and another node takes over; without that the takeover waits for ever.
#[tokio::test]
async fn a_leader_paused_inside_a_transaction_does_not_block_the_takeover() {
    let pg = TestPostgres::start().expect("postgres");
    let c = migrated(&pg).await;
    let a = nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    let b = nodes::register(&c, "b", "", Duration::from_secs(60)).await.unwrap();
    let terms = Terms { ttl: Duration::from_secs(2), margin: Duration::from_secs(1) };
    let la = lease::acquire(&c, "acct", &a, terms).await.unwrap().unwrap();

    // a's own session, opened the way the agent opens them, stops between two statements of a fenced transaction.
    let db = meterd_fleet::connect::Database::parse(&pg.url(), None).expect("url");
    let mut paused = db.connect().await.expect("connect");
    let tx = paused.transaction().await.unwrap();
    lease::fence(&tx, &la).await.expect("a still holds the lease");

    tokio::time::sleep(terms.ttl + Duration::from_millis(500)).await;
    let bound = meterd_fleet::connect::IDLE_IN_TRANSACTION * 6;
    let lb = tokio::time::timeout(bound, lease::acquire(&c, "acct", &b, LONG))
        .await
        .expect("the paused session's lock was never released: no takeover")
        .unwrap()
        .expect("b takes the expired lease");
    assert_eq!(lb.epoch, la.epoch + 1);
    // The paused transaction is gone with its session: nothing it would do next can commit.
    assert!(tx.commit().await.is_err());
}

#[tokio::test]
async fn retention_folds_old_terminal_records_into_kept_totals_in_batches_and_leaves_pending_ones() {
    use meterd_core::domain::record::{ExpiryReason, RejectReason};
    use meterd_fleet::{report, retention};
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let open = hour_start(now_ms());
    let (old, recent) = (open - 3 * HOUR_MS, open - 2 * HOUR_MS);
    let rules = SealRules { down_after: Duration::from_secs(60), max_wait: Duration::from_secs(24 * 3600) };
    let a = nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    // More records in the old hour than one retention batch deletes.
    let n = retention::BATCH as u32 + 200;
    forward_hour(&mut c, "a", old, n).await;
    let now = now_ms();
    let recent_events: Vec<Acked> =
        (0..3).map(|i| acked(event(&format!("recent-{i}"), customer(i), 2_000_000, recent + 1000), now)).collect();
    forward::forward(&mut c, "a", &recent_events, now).await.unwrap();
    let l = lease::acquire(&c, "acct", &a, LONG).await.unwrap().unwrap();
    assert_eq!(seal::seal(&mut c, &l, &products(), open, &POLICY, rules).await.unwrap().records, u64::from(n) + 3);

    // The old hour: one lost to DuplicateRecord, one expired, one still pending, the rest accepted; the recent
    // hour all accepted (but inside the retention).
    let at_ms = 1;
    let accepted =
        RecordState::Accepted { metering_record_id: Some("m".into()), aws_request_id: None, at_ms, verify: false };
    let mut updates = Vec::new();
    for (i, r) in seal::records(&c, "p").await.unwrap().into_iter().enumerate() {
        let state = match (r.key.hour_ms == old, i) {
            (true, 0) => RecordState::Rejected { reason: RejectReason::DuplicateRecord, aws_request_id: None, at_ms },
            (true, 1) => RecordState::Expired { reason: ExpiryReason::DeadlinePassed, at_ms },
            (true, 2) => continue,
            _ => accepted.clone(),
        };
        updates.push(SealedRecord { state, ..r });
    }
    seal::update_records(&mut c, &l, &updates).await.unwrap();
    assert_eq!(report::lost(&c).await.unwrap(), (1, 2));
    let stamp = report::structure(&c).await.unwrap();

    // A stale holder (another epoch) is fenced and removes nothing.
    let stale = lease::Lease { epoch: l.epoch + 1, ..l.clone() };
    assert!(matches!(retention::compact_records(&mut c, &stale, &products(), recent).await, Err(SealError::Fenced(_))));
    assert_eq!(seal::records(&c, "p").await.unwrap().len(), n as usize + 3);

    let removed = retention::compact_records(&mut c, &l, &products(), recent).await.unwrap();
    let terminal = u64::from(n) - 1;
    assert_eq!(
        (removed.records, removed.accepted, removed.rejected, removed.expired),
        (terminal, 2 * (terminal - 2), 2, 2)
    );
    assert_eq!((removed.recorded, removed.late), (Micros(2_000_000 * u128::from(terminal)), Micros::ZERO));
    assert_eq!(removed.events, 0);
    // What is left: the old hour's pending record and the recent hour.
    let left = seal::records(&c, "p").await.unwrap();
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(left.iter().filter(|r| r.key.hour_ms == old).all(|r| r.state == RecordState::Sealed));
    // Kept: the totals, the revenue lost (no longer in any record), and a structure stamp that moved.
    assert_eq!(retention::compacted(&c).await.unwrap(), removed);
    assert_eq!(report::lost(&c).await.unwrap(), (1, 2));
    // The kept hour totals lose what the deleted records recorded: the old hour keeps its pending record's usage.
    assert_eq!(hour_total(&c, old).await.1, "2000000");
    assert_eq!(hour_total(&c, recent).await.1, "6000000");
    assert!(report::structure(&c).await.unwrap() > stamp, "a paged report must re-read across a compaction");
    // Nothing more to do the second time.
    assert_eq!(retention::compact_records(&mut c, &l, &products(), recent).await.unwrap().records, 0);
    // Once the old hour's last record is final, retention takes it, and the hour's kept totals go with it.
    let last = left.into_iter().find(|r| r.key.hour_ms == old).unwrap();
    seal::update_records(&mut c, &l, &[SealedRecord { state: accepted.clone(), ..last }]).await.unwrap();
    let more = retention::compact_records(&mut c, &l, &products(), recent).await.unwrap();
    assert_eq!((more.records, more.accepted), (1, 2));
    assert_eq!(hour_total(&c, old).await.0, 0, "an hour with no record left keeps no totals");
    assert_eq!(hour_total(&c, recent).await.1, "6000000");
    let removed = retention::compacted(&c).await.unwrap();
    assert_eq!(removed.records, u64::from(n));

    // Event keys go with their day's partition, counted into the kept totals.
    partitions::ensure(&mut c, 10, 2).await.unwrap();
    c.execute("UPDATE meterd_event_keys SET stored_on = stored_on - 5 WHERE idempotency_key LIKE 'a-%'", &[])
        .await
        .unwrap();
    let dropped = partitions::drop_expired(&mut c, Duration::from_secs(2 * 24 * 3600)).await.unwrap();
    assert_eq!(dropped.events, u64::from(n));
    assert_eq!(retention::compacted(&c).await.unwrap(), retention::Compacted { events: u64::from(n), ..removed });
    assert_eq!(views::event_keys(&c).await.unwrap(), 3);
}

/// The kept hour totals' rows of hour `h` and their sum.
async fn hour_total(c: &Client, h: i64) -> (i64, String) {
    let row = c
        .query_one("SELECT count(*), coalesce(sum(total), 0)::text FROM meterd_hour_totals WHERE hour_ms = $1", &[&h])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}
