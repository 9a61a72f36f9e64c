//! The fleet-wide customer registry against a real PostgreSQL server: tenant mappings that move the shared
//! ledger's held usage (buckets, held records taking their AWS key or merged), lifecycle events applied by the
//! agent's rule (idempotent on replay, concurrent writers ordered), the revisions agents follow, and a leaving
//! customer's final hour sealed at once under the lease.

use std::collections::BTreeMap;
use std::time::Duration;

use meterd_core::clock::{HOUR_MS, hour_start};
use meterd_core::domain::customer::{CustomerStatus, StatusChange, TenantMapping, final_hour_deadline};
use meterd_core::domain::event::{Identity, UsageEvent};
use meterd_core::domain::lifecycle::{LifecycleEvent, LifecycleKind, Subject};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::RecordState;
use meterd_core::domain::seal::SealPolicy;
use meterd_fleet::forward::{self, Acked};
use meterd_fleet::lease::{self, Terms};
use meterd_fleet::registry::{self, MappingPut};
use meterd_fleet::seal::{self, SealRules};
use meterd_fleet::test_postgres::TestPostgres;
use meterd_fleet::{Client, migrate, nodes, views};

async fn migrated(pg: &TestPostgres) -> Client {
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.expect("connect");
    migrate::migrate(&mut c).await.expect("migrate");
    c
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn arn(n: u32) -> String {
    format!("arn:aws:license-manager::lic-{n}")
}

fn customer(n: u32) -> Identity {
    Identity::Aws { account_id: "123456789012".into(), license_arn: arn(n) }
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

fn tenant(t: &str) -> Identity {
    Identity::Tenant(t.into())
}

fn mapping(t: &str, who: Identity) -> TenantMapping {
    TenantMapping {
        tenant_id: t.into(),
        product: "p".into(),
        identity: who,
        agreement_id: Some(format!("agmt-{t}")),
        updated_at_ms: 1,
    }
}

fn lifecycle(kind: LifecycleKind, n: u32, id: &str) -> LifecycleEvent {
    LifecycleEvent {
        kind,
        subject: Subject::License { license_arn: arn(n), account_id: Some("123456789012".into()) },
        agreement_id: None,
        product_code: None,
        event_id: Some(id.into()),
        source_type: "test".into(),
    }
}

/// Open buckets: (hour, customer) → (total, late).
async fn buckets(c: &Client) -> BTreeMap<(i64, Identity), (Micros, Micros)> {
    let mut out = BTreeMap::new();
    for (k, b) in views::buckets(c).await.unwrap() {
        let e = out.entry((k.hour_ms, k.identity)).or_insert((Micros::ZERO, Micros::ZERO));
        e.0 = e.0.try_add(b.total).unwrap();
        e.1 = e.1.try_add(b.late).unwrap();
    }
    out
}

const POLICY: SealPolicy =
    SealPolicy { window_ms: 6 * HOUR_MS, product_windows_ms: BTreeMap::new(), margin_ms: 0, zero_records: false };
const LONG: Terms = Terms { ttl: Duration::from_secs(300), margin: Duration::from_secs(10) };
const RULES: SealRules = SealRules { down_after: Duration::from_secs(60), max_wait: Duration::from_secs(24 * 3600) };

fn products() -> Vec<String> {
    vec!["p".to_string()]
}

#[tokio::test]
async fn a_mapping_moves_the_tenants_held_usage_and_later_forwards_count_under_the_identity() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let now = now_ms();
    let open = hour_start(now);
    let h = open - 2 * HOUR_MS;
    let me = nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    let lease = lease::acquire(&c, "acct", &me, LONG).await.unwrap().unwrap();

    // Two unmapped tenants' usage of hour h is sealed into held records; t1 also has usage in the open hour.
    let batch = [
        acked(event("t1-h", tenant("t1"), 2_000_000, h + 60_000), now),
        acked(event("t2-h", tenant("t2"), 3_000_000, h + 60_000), now),
    ];
    forward::forward(&mut c, "a", &batch, now).await.unwrap();
    seal::seal(&mut c, &lease, &products(), open, &POLICY, RULES).await.unwrap();
    forward::forward(&mut c, "a", &[acked(event("t1-open", tenant("t1"), 1_000_000, now), now)], now).await.unwrap();
    let held = seal::records(&c, "p").await.unwrap();
    assert_eq!(
        held.iter().map(|r| (&r.key.identity, r.sent_as.as_ref())).collect::<Vec<_>>(),
        [(&tenant("t1"), None), (&tenant("t2"), None)]
    );

    // t1 → customer 1, posted to any agent: the open bucket moves, the held record takes the AWS key.
    let stamp = meterd_fleet::report::structure(&c).await.unwrap();
    let put = registry::put_mapping(&mut c, &mapping("t1", customer(1)), now).await.unwrap();
    assert_ne!(meterd_fleet::report::structure(&c).await.unwrap(), stamp, "re-keyed buckets: a paged report re-reads");
    assert_eq!(put, MappingPut { moved: 1, sent_as: 1, merged: 0 });
    assert_eq!(buckets(&c).await, BTreeMap::from([((open, customer(1)), (Micros(1_000_000), Micros::ZERO))]));
    // Usage forwarded afterwards by any node is counted under the identity (the agent's ingest rule).
    forward::forward(&mut c, "b", &[acked(event("t1-later", tenant("t1"), 500_000, now), now)], now).await.unwrap();
    assert_eq!(buckets(&c).await, BTreeMap::from([((open, customer(1)), (Micros(1_500_000), Micros::ZERO))]));

    // t2 maps to the same customer: its held record's AWS key (customer 1, h) is t1's now, so it is merged into
    // the customer's next free hour, its units carried — never a second record of one AWS key.
    let put = registry::put_mapping(&mut c, &mapping("t2", customer(1)), now).await.unwrap();
    assert_eq!(put, MappingPut { moved: 0, sent_as: 0, merged: 1 });
    let records = seal::records(&c, "p").await.unwrap();
    assert_eq!(records[0].sent_as, Some(customer(1)));
    assert!(
        matches!(&records[1].state, RecordState::Merged { into, into_hour_ms, .. } if *into == customer(1) && *into_hour_ms == open),
        "{:?}",
        records[1].state
    );
    let carried: Vec<(String,)> = c
        .query(
            "SELECT carried::text FROM meterd_carries WHERE customer = $1",
            &[&meterd_fleet::codec::identity_text(&customer(1))],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0),))
        .collect();
    assert_eq!(carried, [("3000000".to_string(),)], "t2's 3 whole units ride in the identity's carry");
    // The next seal sends them with customer 1's open hour: 1.5 + 3 carried.
    forward::forward(&mut c, "a", &[], open + HOUR_MS).await.unwrap();
    seal::seal(&mut c, &lease, &products(), open + HOUR_MS, &POLICY, RULES).await.unwrap();
    let last = seal::records(&c, "p").await.unwrap().into_iter().find(|r| r.key.hour_ms == open).unwrap();
    assert_eq!((last.key.identity.clone(), last.quantity), (customer(1), 4));

    // Putting the same mapping again moves nothing; every agent's copy follows by revision, removal included.
    assert_eq!(registry::put_mapping(&mut c, &mapping("t1", customer(1)), now).await.unwrap(), MappingPut::default());
    let all = registry::changes_since(&mut c, 0).await.unwrap();
    assert_eq!(
        all.mappings.iter().map(|(t, m)| (t.as_str(), m.is_some())).collect::<Vec<_>>(),
        [("t2", true), ("t1", true)]
    );
    assert_eq!(all.customers.len(), 1, "one customer, created by the first mapping");
    assert_eq!(all.agreements.len(), 2);
    assert!(registry::remove_mapping(&mut c, "t1").await.unwrap());
    assert!(!registry::remove_mapping(&mut c, "t1").await.unwrap());
    let since = registry::changes_since(&mut c, all.revision).await.unwrap();
    assert_eq!(since.mappings, vec![("t1".to_string(), None)]);
    assert!(since.revision > all.revision);
    assert_eq!(registry::changes_since(&mut c, since.revision).await.unwrap().revision, since.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn lifecycle_events_are_decided_by_the_agents_rule_replays_change_nothing_and_concurrent_writers_agree() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let dep = lifecycle(LifecycleKind::Deprovisioning, 2, "e1");
    let first = registry::apply_lifecycle(&mut c, &dep, 1000).await.unwrap();
    assert!(first.applied && first.leaves);
    assert_eq!(first.status, Some(CustomerStatus::Deprovisioning { since_ms: 1000 }));
    // The same event again (SNS redelivers, or it was posted to another agent): nothing changes.
    let replay = registry::apply_lifecycle(&mut c, &dep, 2000).await.unwrap();
    assert!(!replay.applied && !replay.leaves);
    assert_eq!(replay.status, Some(CustomerStatus::Deprovisioning { since_ms: 1000 }));
    // An older kind after a newer one: recorded, not applied.
    let old = registry::apply_lifecycle(&mut c, &lifecycle(LifecycleKind::Active, 2, "e0"), 3000).await.unwrap();
    assert!(!old.applied);
    let left: i64 = c.query_one("SELECT left_at_ms FROM meterd_customers", &[]).await.unwrap().get(0);
    assert_eq!(left, 1000, "the final hour runs from the first event");
    let ended = registry::apply_lifecycle(&mut c, &lifecycle(LifecycleKind::Ended, 2, "e2"), 4000).await.unwrap();
    assert!(ended.applied && !ended.leaves, "it had already left");
    let unknown = LifecycleEvent {
        subject: Subject::Agreement { agreement_id: "agmt-nobody".into() },
        ..lifecycle(LifecycleKind::Ended, 9, "e9")
    };
    assert!(registry::apply_lifecycle(&mut c, &unknown, 5000).await.unwrap().unknown_agreement);

    // The same three events posted to three agents at once, in every order: one outcome, whatever the order.
    let url = pg.url();
    let mut tasks = Vec::new();
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]] {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = meterd_fleet::connect_plain(&url).await.unwrap();
            let kinds = [LifecycleKind::Active, LifecycleKind::Deprovisioning, LifecycleKind::Ended];
            for i in order {
                let ev = lifecycle(kinds[i].clone(), 3, &format!("c{i}"));
                registry::apply_lifecycle(&mut c, &ev, 10_000).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = registry::changes_since(&mut c, 0).await.unwrap();
    let (_, three) = all.customers.iter().find(|(k, _)| k == &format!("l{}", arn(3))).unwrap();
    assert!(matches!(three.status, CustomerStatus::Ended { .. }), "{:?}", three.status);
    let ended = three.history.iter().filter(|h| h.applied && matches!(h.status, CustomerStatus::Ended { .. }));
    assert_eq!(ended.count(), 1, "Ended is applied once, whichever delivery came first");
    assert_eq!(three.history.len(), 12, "every delivery is in the history");

    // Reinstating is the one way back; it clears the final-hour mark.
    let entry = StatusChange {
        at_ms: 6000,
        status: CustomerStatus::Active,
        source: "reinstated by ops".into(),
        event_id: None,
        applied: true,
    };
    let subject = Subject::License { license_arn: arn(2), account_id: None };
    let back = registry::amend_lifecycle(&mut c, &subject, entry.clone(), true).await.unwrap().unwrap();
    assert!(back.changed && back.lifecycle.status == CustomerStatus::Active);
    assert!(!registry::amend_lifecycle(&mut c, &subject, entry, true).await.unwrap().unwrap().changed);
    let row = c
        .query_one(
            "SELECT accepts_usage, left_at_ms FROM meterd_customers WHERE customer = $1",
            &[&format!("l{}", arn(2))],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, Option<i64>>(1)), (true, None));
    // AWS's CustomerNotSubscribed answer is kept in the same registry.
    registry::note_not_subscribed(&mut c, &customer(2), 7000).await.unwrap();
    let all = registry::changes_since(&mut c, 0).await.unwrap();
    let (_, two) = all.customers.iter().find(|(k, _)| k == &format!("l{}", arn(2))).unwrap();
    assert_eq!(two.not_subscribed_at_ms, Some(7000));
}

#[tokio::test]
async fn a_leaving_customers_open_hours_are_sealed_at_once_and_usage_forwarded_later_is_never_a_second_record() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = migrated(&pg).await;
    let now = now_ms();
    let open = hour_start(now);
    let me = nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    let lease = lease::acquire(&c, "acct", &me, LONG).await.unwrap().unwrap();
    let batch = [
        acked(event("c4-prev", customer(4), 2_000_000, open - HOUR_MS + 1000), now),
        acked(event("c4-open", customer(4), 1_000_000, now), now),
        acked(event("c5-open", customer(5), 7_000_000, now), now),
    ];
    forward::forward(&mut c, "a", &batch, open - HOUR_MS).await.unwrap();
    let params = POLICY.params(now, open);
    // Nobody left yet: nothing to seal early.
    assert_eq!(registry::seal_leaving(&mut c, &lease, &products(), &params).await.unwrap().records, 0);

    let left =
        registry::apply_lifecycle(&mut c, &lifecycle(LifecycleKind::Deprovisioning, 4, "d4"), now).await.unwrap();
    assert!(left.leaves);
    let stamp = meterd_fleet::report::structure(&c).await.unwrap();
    let s = registry::seal_leaving(&mut c, &lease, &products(), &params).await.unwrap();
    assert_ne!(meterd_fleet::report::structure(&c).await.unwrap(), stamp, "buckets became records: the stamp moves");
    assert_eq!(s.records, 2, "both of its open hours, the current one included");
    let records = seal::records(&c, "p").await.unwrap();
    assert_eq!(
        records.iter().map(|r| (r.key.hour_ms, r.quantity)).collect::<Vec<_>>(),
        [(open - HOUR_MS, 2), (open, 1)]
    );
    assert!(records.iter().all(|r| r.deadline_ms <= final_hour_deadline(now, 0)), "the final reporting hour");
    assert_eq!(buckets(&c).await, BTreeMap::from([((open, customer(5)), (Micros(7_000_000), Micros::ZERO))]));

    // An agent whose copy of the registry had not caught up acknowledged more of customer 4's usage, of both
    // hours: counted and flagged late, never a second record of an AWS key.
    let late = [
        acked(event("c4-late-open", customer(4), 4_000_000, now), now),
        acked(event("c4-late-prev", customer(4), 5_000_000, open - HOUR_MS + 2000), now),
    ];
    forward::forward(&mut c, "a", &late, now).await.unwrap();
    // The ordinary seal of the previous hour meets its taken key: into the open hour...
    seal::seal(&mut c, &lease, &products(), open, &POLICY, RULES).await.unwrap();
    // ...whose key is taken too: into the next hour, sealed once that hour has begun.
    registry::seal_leaving(&mut c, &lease, &products(), &params).await.unwrap();
    assert_eq!(seal::records(&c, "p").await.unwrap().len(), 2, "no record was added or replaced");
    let b = buckets(&c).await;
    assert_eq!(b.get(&(open + HOUR_MS, customer(4))), Some(&(Micros(9_000_000), Micros(9_000_000))), "{b:?}");
}
