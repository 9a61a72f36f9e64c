//! `status`'s kept totals (migration 5, `meterd_fleet::totals`) against a real PostgreSQL: after every step of
//! randomized sequences of forwards (replays, conflicts, late usage), seals, record state updates, tenant mappings
//! and their removal, and leaving customers' early seals, the kept figures equal a from-scratch aggregate; the
//! migration's backfill computes the same figures for a database written before they were kept; and a write that
//! fails leaves both its changes and the totals as they were (they change in the same transaction).

use std::collections::BTreeMap;
use std::time::Duration;

use meterd_core::clock::{HOUR_MS, hour_start};
use meterd_core::domain::customer::TenantMapping;
use meterd_core::domain::event::{Identity, UsageEvent};
use meterd_core::domain::lifecycle::{LifecycleEvent, LifecycleKind, Subject};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::{ExpiryReason, RecordState, RejectReason, SealedRecord};
use meterd_core::domain::seal::SealPolicy;
use meterd_fleet::forward::{self, Acked};
use meterd_fleet::lease::{self, Lease, Terms};
use meterd_fleet::seal::{self, SealRules};
use meterd_fleet::test_postgres::TestPostgres;
use meterd_fleet::totals::{self, StatusTotals};
use meterd_fleet::{Client, hours, migrate, nodes, registry};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

const PRODUCTS: [&str; 2] = ["p", "q"];
const POLICY: SealPolicy =
    SealPolicy { window_ms: 6 * HOUR_MS, product_windows_ms: BTreeMap::new(), margin_ms: 0, zero_records: false };
const LONG: Terms = Terms { ttl: Duration::from_secs(600), margin: Duration::from_secs(10) };
const RULES: SealRules = SealRules { down_after: Duration::from_secs(600), max_wait: Duration::from_secs(24 * 3600) };

fn products() -> Vec<String> {
    PRODUCTS.iter().map(|p| p.to_string()).collect()
}

fn arn(n: u32) -> String {
    format!("arn:aws:license-manager::lic-{n}")
}

fn customer(n: u32) -> Identity {
    Identity::Aws { account_id: "123456789012".into(), license_arn: arn(n) }
}

/// Customers 1-5, and tenants t1-t3 (held until mapped).
fn anyone(rng: &mut ChaCha8Rng) -> Identity {
    match rng.random_range(0..8u32) {
        n @ 0..5 => customer(n + 1),
        n => Identity::Tenant(format!("t{}", n - 4)),
    }
}

struct World {
    c: Client,
    lease: Lease,
    open: i64,
    next_key: u32,
}

impl World {
    async fn new(pg: &TestPostgres) -> World {
        let mut c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
        migrate::migrate(&mut c).await.unwrap();
        let me = nodes::register(&c, "a", "", Duration::from_secs(600)).await.unwrap();
        nodes::register(&c, "b", "", Duration::from_secs(600)).await.unwrap();
        let lease = lease::acquire(&c, "acct", &me, LONG).await.unwrap().unwrap();
        World { c, lease, open: hour_start(now_ms()), next_key: 0 }
    }

    /// One random write; returns what it was (for the failure message).
    async fn step(&mut self, rng: &mut ChaCha8Rng) -> String {
        match rng.random_range(0..10u32) {
            0..4 => self.forward(rng).await,
            4 | 5 => {
                let cutoff = self.open - HOUR_MS * rng.random_range(0..5i64);
                let s = seal::seal(&mut self.c, &self.lease, &products(), cutoff, &POLICY, RULES).await.unwrap();
                format!("seal through {cutoff}: {s:?}")
            }
            6 | 7 => self.update(rng).await,
            8 => {
                let t = format!("t{}", rng.random_range(1..4u32));
                if rng.random_bool(0.3) {
                    let removed = registry::remove_mapping(&mut self.c, &t).await.unwrap();
                    format!("unmap {t}: {removed}")
                } else {
                    let m = TenantMapping {
                        tenant_id: t.clone(),
                        product: PRODUCTS[rng.random_range(0..2)].into(),
                        identity: customer(rng.random_range(1..6)),
                        agreement_id: None,
                        updated_at_ms: 1,
                    };
                    let put = registry::put_mapping(&mut self.c, &m, now_ms()).await.unwrap();
                    format!("map {m:?}: {put:?}")
                }
            }
            _ => {
                let n = rng.random_range(1..6u32);
                let event = LifecycleEvent {
                    kind: LifecycleKind::Deprovisioning,
                    subject: Subject::License { license_arn: arn(n), account_id: Some("123456789012".into()) },
                    agreement_id: None,
                    product_code: None,
                    event_id: Some(format!("leave-{n}")),
                    source_type: "test".into(),
                };
                registry::apply_lifecycle(&mut self.c, &event, now_ms()).await.unwrap();
                let params = POLICY.params(now_ms(), self.open);
                let s = registry::seal_leaving(&mut self.c, &self.lease, &products(), &params).await.unwrap();
                format!("customer {n} leaves: {s:?}")
            }
        }
    }

    /// A batch from node a or b: new keys, replays of earlier keys, and earlier keys with other content.
    async fn forward(&mut self, rng: &mut ChaCha8Rng) -> String {
        let node = if rng.random_bool(0.5) { "a" } else { "b" };
        let mut batch = Vec::new();
        for _ in 0..rng.random_range(1..15) {
            let reuse = self.next_key > 0 && rng.random_bool(0.2);
            let key = if reuse { rng.random_range(0..self.next_key) } else { self.next_key };
            self.next_key += u32::from(!reuse);
            // A key's content is fixed by the key (a replay), unless a conflict is wanted.
            let mut k = ChaCha8Rng::seed_from_u64(u64::from(key));
            let salt = if reuse && rng.random_bool(0.3) { 1_000 } else { 0 };
            let hour = self.open - HOUR_MS * k.random_range(0..4i64);
            let event = UsageEvent {
                idempotency_key: format!("k{key}"),
                product: PRODUCTS[k.random_range(0..2)].into(),
                identity: anyone(&mut k),
                dimension: ["requests", "gb"][k.random_range(0..2)].into(),
                quantity: Micros(k.random_range(1..3_000_000u128) + salt),
                timestamp_ms: Some(hour + k.random_range(0..HOUR_MS)),
                tags: [("team".to_string(), ["x", "y"][k.random_range(0..2)].to_string())].into(),
            };
            batch.push(Acked { event, received_ms: now_ms() });
        }
        let f = forward::forward(&mut self.c, node, &batch, now_ms()).await.unwrap();
        format!("forward {} events from {node}: stored {}, late {}", batch.len(), f.stored, f.late)
    }

    /// New states for a few pending records (or a refused change: a terminal record changed again).
    async fn update(&mut self, rng: &mut ChaCha8Rng) -> String {
        let pending = seal::pending_records(&self.c, 1000).await.unwrap();
        if pending.is_empty() {
            return "no pending record to update".into();
        }
        let mut changed: Vec<SealedRecord> = Vec::new();
        for _ in 0..rng.random_range(1..4) {
            let mut r = pending[rng.random_range(0..pending.len())].clone();
            if changed.iter().any(|c| c.key == r.key) {
                continue;
            }
            r.state = match rng.random_range(0..5u32) {
                0 | 1 => RecordState::InFlight { attempts: 1, next_attempt_ms: 1 },
                2 => RecordState::Accepted { metering_record_id: None, aws_request_id: None, at_ms: 1, verify: false },
                3 => RecordState::Rejected {
                    reason: [RejectReason::DuplicateRecord, RejectReason::CustomerNotSubscribed]
                        [rng.random_range(0..2)]
                    .clone(),
                    aws_request_id: None,
                    at_ms: 1,
                },
                _ => RecordState::Expired { reason: ExpiryReason::DeadlinePassed, at_ms: 1 },
            };
            changed.push(r);
        }
        let outcome = seal::update_records(&mut self.c, &self.lease, &changed).await;
        format!("update {} record(s): {:?}", changed.len(), outcome.map_err(|e| format!("{e:?}")))
    }

    async fn check(&self, step: usize, what: &str) -> StatusTotals {
        let kept = totals::kept(&self.c).await.unwrap();
        let scratch = totals::recount(&self.c).await.unwrap();
        assert_eq!(kept, scratch, "after step {step} ({what}): kept totals differ from a from-scratch aggregate");
        let (hours, hours_scratch) = (hours::kept(&self.c).await.unwrap(), hours::recount(&self.c).await.unwrap());
        assert_eq!(hours, hours_scratch, "after step {step} ({what}): kept hour totals differ from the ledger's");
        kept
    }
}

/// Takes the database back to schema version 4 (before the totals), keeping its ledger as it is.
async fn back_to_version_4(c: &Client) {
    c.batch_execute(
        "DROP TABLE meterd_compacted;
         DROP INDEX meterd_records_terminal;
         DELETE FROM meterd_schema_migrations WHERE version = 6;
         DROP TABLE meterd_queue_totals;
         DROP TABLE meterd_held_totals;
         DROP TABLE meterd_hour_totals;
         DROP INDEX meterd_records_usage;
         ALTER TABLE meterd_watermarks DROP COLUMN late, DROP COLUMN buckets_opened;
         DROP INDEX meterd_records_pending;
         CREATE INDEX meterd_records_pending ON meterd_records (deadline_ms) WHERE state IN ('sealed', 'in_flight');
         DELETE FROM meterd_schema_migrations WHERE version = 5;",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn kept_totals_equal_a_from_scratch_aggregate_after_random_writes_and_after_the_backfill() {
    let pg = TestPostgres::start().expect("postgres");
    let mut w = World::new(&pg).await;
    let mut at_risk_seen = 0;
    for seed in [1u64, 2, 3] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in 0..40 {
            let what = w.step(&mut rng).await;
            at_risk_seen = at_risk_seen.max(w.check(i, &format!("seed {seed}: {what}")).await.at_risk_records);
        }
    }
    // Every tenant unmapped: its held records are at risk again (and the backfill's held rows are seen below).
    for t in ["t1", "t2", "t3"] {
        registry::remove_mapping(&mut w.c, t).await.unwrap();
    }
    let before = w.check(120, "the sequences").await;
    // The sequences reached every figure (so a wrong one cannot hide behind a zero).
    assert!(before.records > 0 && before.in_flight > 0 && before.units > 0, "{before:?}");
    assert!(before.lost_records > 0 && before.open_buckets > 0 && before.late_events > 0, "{before:?}");
    assert!(at_risk_seen > 0 && before.at_risk_records > 0 && before.first_deadline_ms.is_some(), "{before:?}");

    // A database written before migration 5: the backfill computes the same figures (events stored come from
    // `forwarded`, kept since migration 2; late events from the dedupe window's keys, all still in it here).
    back_to_version_4(&w.c).await;
    let applied = migrate::migrate(&mut w.c).await.unwrap();
    assert_eq!(applied.versions, [5, 6]);
    assert_eq!(w.check(120, "the backfill").await, before);
    // And the writes go on from the backfilled rows.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for i in 0..20 {
        let what = w.step(&mut rng).await;
        w.check(i, &format!("after the backfill: {what}")).await;
    }
}

/// Makes every write to `table` fail (a trigger), so a write's transaction aborts at that statement.
async fn fail_writes_to(c: &Client, table: &str) {
    c.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION meterd_test_fail() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER meterd_test_fail BEFORE INSERT OR UPDATE OR DELETE ON {table}
             FOR EACH ROW EXECUTE FUNCTION meterd_test_fail();"
    ))
    .await
    .unwrap();
}

async fn allow_writes_to(c: &Client, table: &str) {
    c.batch_execute(&format!("DROP TRIGGER meterd_test_fail ON {table}")).await.unwrap();
}

#[tokio::test]
async fn a_write_that_fails_changes_neither_the_ledger_nor_the_totals() {
    let pg = TestPostgres::start().expect("postgres");
    let mut w = World::new(&pg).await;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Usage of tenants t0-t3 and customers 1-2 in two ended hours and the open one, then the first hour sealed.
    let mut batch = Vec::new();
    for (i, who) in (0..4).map(|k| Identity::Tenant(format!("t{k}"))).chain([customer(1), customer(2)]).enumerate() {
        for hours_ago in 0..3 {
            let event = UsageEvent {
                idempotency_key: format!("f{i}-{hours_ago}"),
                product: "p".into(),
                identity: who.clone(),
                dimension: "requests".into(),
                quantity: Micros(1_500_000),
                timestamp_ms: Some(w.open - HOUR_MS * hours_ago + 1),
                tags: Default::default(),
            };
            batch.push(Acked { event, received_ms: now_ms() });
        }
    }
    forward::forward(&mut w.c, "a", &batch, now_ms()).await.unwrap();
    forward::forward(&mut w.c, "b", &[], now_ms()).await.unwrap();
    seal::seal(&mut w.c, &w.lease, &products(), w.open - HOUR_MS, &POLICY, RULES).await.unwrap();
    w.check(0, "setup").await;

    // A write whose totals update fails must not change the ledger, and one whose ledger change fails must not
    // change the totals: a failure injected at one table aborts the write's whole transaction. (Totals written in
    // a transaction of their own, before or after the ledger's, would disagree with the ledger here.)
    let tables =
        ["meterd_held_totals", "meterd_queue_totals", "meterd_hour_totals", "meterd_records", "meterd_buckets"];
    for (k, table) in tables.into_iter().enumerate() {
        fail_writes_to(&w.c, table).await;
        let m = TenantMapping {
            tenant_id: format!("t{k}"),
            product: "p".into(),
            identity: customer(3),
            agreement_id: None,
            updated_at_ms: 1,
        };
        let mapped = registry::put_mapping(&mut w.c, &m, now_ms()).await;
        let pending = seal::pending_records(&w.c, 1000).await.unwrap();
        // One record accepted (it leaves the queue), one sent: every update changes the queue's totals.
        let accepted =
            RecordState::Accepted { metering_record_id: None, aws_request_id: None, at_ms: 1, verify: false };
        let updates = [
            SealedRecord { state: accepted, ..pending[0].clone() },
            SealedRecord { state: RecordState::InFlight { attempts: 1, next_attempt_ms: 1 }, ..pending[1].clone() },
        ];
        let update = seal::update_records(&mut w.c, &w.lease, &updates).await;
        let sealed = seal::seal(&mut w.c, &w.lease, &products(), w.open, &POLICY, RULES).await;
        let event = UsageEvent {
            idempotency_key: format!("extra-{k}"),
            product: "p".into(),
            identity: customer(1),
            dimension: "requests".into(),
            quantity: Micros(2_500_000),
            timestamp_ms: Some(w.open + 1),
            tags: Default::default(),
        };
        let forwarded = forward::forward(&mut w.c, "a", &[Acked { event, received_ms: now_ms() }], now_ms()).await;
        allow_writes_to(&w.c, table).await;
        let failed = [mapped.is_err(), update.is_err(), sealed.is_err(), forwarded.is_err()];
        assert!(failed.iter().any(|f| *f), "no write touched {table}");
        w.check(1, &format!("writes failing at {table}: {failed:?}")).await;
    }
    // Without the failures the same writes go through, and the totals follow them.
    for i in 0..10 {
        let what = w.step(&mut rng).await;
        w.check(2 + i, &what).await;
    }
}
