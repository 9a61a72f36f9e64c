//! The shared ledger's report reads against a real PostgreSQL server: keyset pages of any size return every
//! record, bucket and carry exactly once (a record's tag sets adjacent, across page ends), the structure stamp
//! moves with a seal and not with a forward, the queue's totals and held tenants, revenue lost, and the seal
//! requests of `meterd flush`.

use std::collections::BTreeMap;
use std::time::Duration;

use meterd_core::clock::{HOUR_MS, hour_start};
use meterd_core::domain::event::{Identity, UsageEvent};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::{RecordState, RejectReason, SealedRecord};
use meterd_core::domain::seal::SealPolicy;
use meterd_fleet::forward::{self, Acked};
use meterd_fleet::lease::{self, Terms};
use meterd_fleet::seal::{self, SealRules};
use meterd_fleet::test_postgres::TestPostgres;
use meterd_fleet::{Client, migrate, nodes, report, seal_requests, totals, views};

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn customer(n: u32) -> Identity {
    if n == 0 {
        return Identity::Tenant("held-tenant".into());
    }
    Identity::Aws { account_id: "123456789012".into(), license_arn: format!("arn:aws:license-manager::lic-{n}") }
}

fn acked(key: &str, who: Identity, micros: u128, at_ms: i64, tag: &str) -> Acked {
    let event = UsageEvent {
        idempotency_key: key.into(),
        product: "p".into(),
        identity: who,
        dimension: "requests".into(),
        quantity: Micros(micros),
        timestamp_ms: Some(at_ms),
        tags: [("team".to_string(), tag.to_string())].into(),
    };
    Acked { event, received_ms: now_ms() }
}

const POLICY: SealPolicy =
    SealPolicy { window_ms: 6 * HOUR_MS, product_windows_ms: BTreeMap::new(), margin_ms: 0, zero_records: false };
const LONG: Terms = Terms { ttl: Duration::from_secs(300), margin: Duration::from_secs(10) };

/// More pages than any region here needs: a cursor that does not advance fails instead of looping.
const PAGES: usize = 200;

/// Every page of one region, `limit` at a time, through the keyset cursor.
async fn all_buckets(c: &Client, limit: i64) -> Vec<String> {
    let (mut out, mut after) = (Vec::new(), None);
    for _ in 0..PAGES {
        let page = report::buckets_after(c, after.as_ref(), limit).await.unwrap();
        assert!(page.len() as i64 <= limit);
        out.extend(page.iter().map(|(k, b)| format!("{k:?}={b:?}")));
        match page.last() {
            Some((k, _)) if page.len() as i64 == limit => after = Some(k.clone()),
            _ => return out,
        }
    }
    panic!("more than {PAGES} pages: the cursor does not advance");
}

async fn all_records(c: &Client, limit: i64) -> Vec<String> {
    let (mut out, mut after) = (Vec::new(), None);
    for _ in 0..PAGES {
        let page = report::records_after(c, after.as_ref(), limit).await.unwrap();
        out.extend(page.iter().map(|r| format!("{r:?}")));
        match page.last() {
            Some(r) if page.len() as i64 == limit => after = Some(r.key.clone()),
            _ => return out,
        }
    }
    panic!("more than {PAGES} pages: the cursor does not advance");
}

async fn all_carries(c: &Client, limit: i64) -> Vec<String> {
    let (mut out, mut after): (Vec<String>, Option<(String, Identity, String)>) = (Vec::new(), None);
    for _ in 0..PAGES {
        let a = after.as_ref().map(|(p, i, d)| (p.as_str(), i, d.as_str()));
        let page = report::carries_after(c, a, limit).await.unwrap();
        out.extend(page.iter().map(|c| format!("{c:?}")));
        match page.last() {
            Some(l) if page.len() as i64 == limit => {
                after = Some((l.product.clone(), l.identity.clone(), l.dimension.clone()))
            }
            _ => return out,
        }
    }
    panic!("more than {PAGES} pages: the cursor does not advance");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn keyset_pages_read_every_row_once_and_the_stamp_moves_with_seals_only() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    migrate::migrate(&mut c).await.unwrap();
    let open = hour_start(now_ms());
    let (h1, h2) = (open - 3 * HOUR_MS, open - 2 * HOUR_MS);
    let me = nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    let lease = lease::acquire(&c, "acct", &me, LONG).await.unwrap().unwrap();
    // 9 customers (one a held tenant) × 2 tag sets in each of two hours: 36 buckets, 18 future records.
    let mut batch = Vec::new();
    for h in [h1, h2] {
        for n in 0..9 {
            for tag in ["x", "y"] {
                batch.push(acked(&format!("{h}-{n}-{tag}"), customer(n), 700_000 + u128::from(n), h + 60_000, tag));
            }
        }
    }
    forward::forward(&mut c, "a", &batch, now_ms()).await.unwrap();
    let stamp0 = report::structure(&c).await.unwrap();
    let buckets: Vec<String> = views::buckets(&c).await.unwrap().iter().map(|(k, b)| format!("{k:?}={b:?}")).collect();
    assert_eq!(buckets.len(), 36);
    for limit in [1, 3, 5, 36, 100] {
        let paged = all_buckets(&c, limit).await;
        assert_eq!(sorted(paged.clone()), sorted(buckets.clone()), "pages of {limit}");
        // A record's tag sets are adjacent (the report sums them into one row across page ends).
        let record_of = |s: &String| s.split(", tags:").next().unwrap().to_string();
        let mut seen = Vec::new();
        for r in paged.iter().map(record_of) {
            if seen.last() != Some(&r) {
                assert!(!seen.contains(&r), "tag sets of {r} are not adjacent in pages of {limit}");
                seen.push(r);
            }
        }
    }
    // A forward adds to buckets: the structure is the same. A seal moves usage: the stamp changes.
    forward::forward(&mut c, "a", &[acked("more", customer(3), 1, h2 + 1, "x")], now_ms()).await.unwrap();
    assert_eq!(report::structure(&c).await.unwrap(), stamp0);
    let rules = SealRules { down_after: Duration::from_secs(60), max_wait: Duration::from_secs(24 * 3600) };
    let s = seal::seal(&mut c, &lease, &["p".to_string()], h2, &POLICY, rules).await.unwrap();
    assert_eq!(s.sealed_through, Some(h2));
    let stamp1 = report::structure(&c).await.unwrap();
    assert_ne!(stamp1, stamp0, "a seal moved usage: the stamp must change");
    seal::seal(&mut c, &lease, &["p".to_string()], open, &POLICY, rules).await.unwrap();
    assert_ne!(report::structure(&c).await.unwrap(), stamp1);

    let records: Vec<String> = seal::records(&c, "p").await.unwrap().iter().map(|r| format!("{r:?}")).collect();
    assert_eq!(records.len(), 18);
    let carries = all_carries(&c, 1000).await;
    assert_eq!(carries.len(), 9, "one carry per series");
    for limit in [1, 4, 18, 50] {
        assert_eq!(sorted(all_records(&c, limit).await), sorted(records.clone()), "record pages of {limit}");
        assert_eq!(sorted(all_carries(&c, limit).await), sorted(carries.clone()), "carry pages of {limit}");
    }
    assert!(all_buckets(&c, 7).await.is_empty());

    // The queue: every record pending (each hour holds 1.4 units per customer: 1 unit sent, carries on).
    let q = totals::kept(&c).await.unwrap();
    let pending = seal::pending_records(&c, 1000).await.unwrap();
    assert_eq!(q.records, pending.len() as u64);
    assert_eq!(q.units, pending.iter().map(|r| u64::from(r.quantity)).sum::<u64>());
    assert_eq!((q.in_flight, q.first_hour_ms), (0, Some(h1)));
    assert_eq!(q.first_deadline_ms, pending.iter().map(|r| r.deadline_ms).min());
    let held: Vec<&SealedRecord> =
        pending.iter().filter(|r| matches!(&r.key.identity, Identity::Tenant(t) if t == "held-tenant")).collect();
    assert!(!held.is_empty());
    assert_eq!(
        (q.at_risk_records, q.at_risk_units),
        (held.len() as u64, held.iter().map(|r| u64::from(r.quantity)).sum::<u64>()),
        "the tenant's pending records are held (never sent as an identity) and it has no mapping: at risk"
    );
    assert_eq!(q, totals::recount(&c).await.unwrap());

    // One record rejected DuplicateRecord on its first send: lost revenue; one in flight.
    let mut lost = pending.iter().find(|r| r.quantity > 0).unwrap().clone();
    lost.state = RecordState::Rejected { reason: RejectReason::DuplicateRecord, aws_request_id: None, at_ms: 1 };
    let mut flying = pending.iter().rfind(|r| r.quantity > 0 && r.key != lost.key).unwrap().clone();
    flying.state = RecordState::InFlight { attempts: 1, next_attempt_ms: 1 };
    seal::update_records(&mut c, &lease, &[lost.clone(), flying]).await.unwrap();
    assert_eq!(report::lost(&c).await.unwrap(), (1, u64::from(lost.quantity)));
    let q2 = totals::kept(&c).await.unwrap();
    assert_eq!((q2.records, q2.in_flight), (q.records - 1, 1));
    assert_eq!((q2.lost_records, q2.lost_units), (1, u64::from(lost.quantity)));
    assert_eq!(q2, totals::recount(&c).await.unwrap());
    assert_eq!(report::conflict_count(&c).await.unwrap(), 0);
}

#[tokio::test]
async fn seal_requests_only_move_forward_and_are_cleared_once_satisfied() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    migrate::migrate(&mut c).await.unwrap();
    let open = hour_start(now_ms());
    assert_eq!(seal_requests::requested(&c, "acct").await.unwrap(), None);
    seal_requests::request(&c, "acct", open, "b").await.unwrap();
    // An older flush (a slower clock, a late retry) never pulls the request back.
    seal_requests::request(&c, "acct", open - HOUR_MS, "c").await.unwrap();
    assert_eq!(seal_requests::requested(&c, "acct").await.unwrap(), Some(open));
    // Sealed short of it: the request stays; sealed through it: cleared.
    seal_requests::done(&c, "acct", open - HOUR_MS).await.unwrap();
    assert_eq!(seal_requests::requested(&c, "acct").await.unwrap(), Some(open));
    seal_requests::done(&c, "acct", open).await.unwrap();
    assert_eq!(seal_requests::requested(&c, "acct").await.unwrap(), None);
    // What a flush waits for: live nodes whose watermark is short of the cutoff.
    nodes::register(&c, "a", "", Duration::from_secs(60)).await.unwrap();
    nodes::register(&c, "b", "", Duration::from_secs(60)).await.unwrap();
    forward::forward(&mut c, "a", &[], open + 1).await.unwrap();
    let lagging = seal_requests::lagging(&c, open, Duration::from_secs(60)).await.unwrap();
    assert_eq!(lagging, ["b"], "b never forwarded; a is past the cutoff");
}
