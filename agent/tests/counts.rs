//! The counts `status` shows without a scan (`store::counts`): open buckets and customers per lifecycle status,
//! kept in the same writes as what they count — every write path that opens or closes a bucket or writes a
//! customer — and counted once at open for a store written before them. The ingest/seal/mapping/retention
//! interleavings are also checked after every step of the `accounting` property test.

use meterd::clock::HOUR_MS;
use meterd::config::LateUsage;
use meterd::domain::customer::{CustomerStatus, StatusChange, TenantMapping};
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::lifecycle::{LifecycleEvent, LifecycleKind, Subject};
use meterd::domain::quantity::Micros;
use meterd::store::{SealParams, Store, keys};

const T0: i64 = 1_790_000_000_000 / HOUR_MS * HOUR_MS;

fn aws(c: u32) -> Identity {
    Identity::Aws { account_id: "111122223333".into(), license_arn: format!("arn:aws:license-manager::1:l-{c}") }
}

fn ev(key: &str, identity: Identity, tag: u32, at_ms: i64) -> UsageEvent {
    UsageEvent {
        idempotency_key: key.into(),
        product: "p".into(),
        identity,
        dimension: "d".into(),
        quantity: Micros::from_units(3),
        timestamp_ms: Some(at_ms),
        tags: if tag == 0 { TagSet::new() } else { [("team".to_string(), format!("t{tag}"))].into() },
    }
}

fn params(cutoff_hour_ms: i64, now_ms: i64) -> SealParams {
    SealParams {
        cutoff_hour_ms,
        now_ms,
        window_ms: 24 * HOUR_MS,
        margin_ms: 0,
        zero_records: false,
        product_windows_ms: Default::default(),
    }
}

fn license(c: u32) -> Subject {
    let Identity::Aws { account_id, license_arn } = aws(c) else { unreachable!() };
    Subject::License { license_arn, account_id: Some(account_id) }
}

fn lifecycle(kind: LifecycleKind, c: u32, id: &str) -> LifecycleEvent {
    LifecycleEvent {
        kind,
        subject: license(c),
        agreement_id: None,
        product_code: None,
        event_id: Some(id.into()),
        source_type: "test".into(),
    }
}

fn check(store: &Store) -> (u64, meterd::store::counts::CustomerCounts) {
    let (kept, scanned) = store.counts_kept_and_recounted().unwrap();
    assert_eq!(kept, scanned);
    kept
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn every_write_path_keeps_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(check(&store).0, 0);
        // Ingest opens buckets (two tag sets of one series, a tenant's, another hour's); a replay opens none.
        let events = vec![
            ev("a", aws(1), 0, T0 + 1),
            ev("b", aws(1), 1, T0 + 2),
            ev("c", Identity::Tenant("t".into()), 0, T0 + 3),
            ev("d", aws(2), 0, T0 + HOUR_MS + 4),
            ev("e", aws(3), 0, T0 + 5),
        ];
        store.ingest(events.clone(), T0 + HOUR_MS + 5, LateUsage::Carry).await.unwrap();
        store.ingest(events, T0 + HOUR_MS + 6, LateUsage::Carry).await.unwrap();
        assert_eq!(check(&store).0, 5);
        // A mapping moves the tenant's bucket into the identity's (one bucket fewer) and adds the customer.
        let m = TenantMapping {
            tenant_id: "t".into(),
            product: "p".into(),
            identity: aws(3),
            agreement_id: None,
            updated_at_ms: T0 + HOUR_MS + 7,
        };
        assert_eq!(store.put_mapping(m, T0 + HOUR_MS + 7).await.unwrap(), 1);
        let (open, customers) = check(&store);
        assert_eq!((open, customers.by_status.get("active").copied()), (4, Some(1)));
        // A leaving customer's buckets are sealed at once; it is counted as deprovisioning.
        let out = store
            .apply_lifecycle(lifecycle(LifecycleKind::Deprovisioning, 1, "e1"), params(T0, T0 + HOUR_MS + 8))
            .await
            .unwrap();
        assert_eq!(out.records_sealed, 1);
        let (open, customers) = check(&store);
        assert_eq!(open, 2, "its two tag sets were sealed");
        assert_eq!(customers.by_status.get("deprovisioning"), Some(&1));
        // AWS says another customer is not subscribed; an operator reinstates the leaving one.
        store.note_not_subscribed(aws(2), T0 + HOUR_MS + 9).await.unwrap();
        assert_eq!(check(&store).1.not_subscribed, 1);
        let entry = StatusChange {
            at_ms: T0 + HOUR_MS + 10,
            status: CustomerStatus::Active,
            source: "operator".into(),
            event_id: None,
            applied: true,
        };
        let amended = store.amend_lifecycle(license(1), entry, true).await.unwrap().unwrap();
        assert!(amended.changed);
        let (_, customers) = check(&store);
        assert_eq!(customers.by_status.get("deprovisioning"), None);
        assert_eq!(customers.by_status.get("active"), Some(&3));
        // The regular seal closes the rest.
        store.seal(params(T0 + 2 * HOUR_MS, T0 + 2 * HOUR_MS)).await.unwrap();
        assert_eq!(check(&store).0, 0);
        store.close().await.unwrap();
    });
}

#[test]
fn a_store_without_kept_counts_counts_them_once_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let store = Store::open(dir.path()).unwrap();
        store
            .ingest(vec![ev("a", aws(1), 0, T0 + 1), ev("b", aws(2), 1, T0 + 2)], T0 + 3, LateUsage::Carry)
            .await
            .unwrap();
        store.apply_lifecycle(lifecycle(LifecycleKind::Active, 1, "e1"), params(T0, T0 + 4)).await.unwrap();
        store.close().await.unwrap();
    });
    {
        // As an earlier meterd left it.
        let db = meterd::store::open_sled(&dir.path().join("sled"), 16 * 1024 * 1024).unwrap();
        db.remove(keys::OPEN_BUCKETS_KEY).unwrap().expect("kept");
        db.remove(keys::CUSTOMER_COUNTS_KEY).unwrap().expect("kept");
        db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let (open, customers) = check(&store);
    assert_eq!((open, customers.by_status.get("active").copied()), (2, Some(1)));
    rt.block_on(store.close()).unwrap();
}

/// Fleet mode copies the fleet's registry into the spool (`store::mirror`): lifecycles written that way move the
/// customers-per-status counts too, once per customer even when a copy holds two revisions of one.
#[test]
fn the_fleet_registry_copy_keeps_the_customer_counts() {
    use meterd::domain::customer::CustomerLifecycle;
    use meterd::store::mirror::RegistryCopy;
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let active = |c| CustomerLifecycle::new(aws(c), None, None);
        let ended = |c| CustomerLifecycle {
            status: CustomerStatus::Ended { since_ms: T0, reason: "test".into() },
            not_subscribed_at_ms: Some(T0),
            ..active(c)
        };
        let copy = RegistryCopy { customers: vec![active(1), active(2), ended(2)], ..Default::default() };
        store.mirror_registry(copy).await.unwrap();
        let (_, customers) = check(&store);
        assert_eq!((customers.by_status.get("active"), customers.by_status.get("ended")), (Some(&1), Some(&1)));
        assert_eq!(customers.not_subscribed, 1);
        // The next copy moves customer 1 on: from active to ended, not a second customer.
        store.mirror_registry(RegistryCopy { customers: vec![ended(1)], ..Default::default() }).await.unwrap();
        let (_, customers) = check(&store);
        assert_eq!((customers.by_status.get("active"), customers.by_status.get("ended")), (None, Some(&2)));
        store.close().await.unwrap();
    });
}
