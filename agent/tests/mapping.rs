//! Invariant 3 across every way of naming a customer: a tenant id (held while unmapped), the marketplace
//! identity named directly, several tenants mapped to one identity. Whatever the order, at most one record per
//! AWS key (customer as AWS knows it, dimension, hour) can ever be sent, and every unit is still billed once.

use meterd::config::LateUsage;
use meterd::domain::customer::TenantMapping;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::lifecycle::{LifecycleEvent, LifecycleKind, Subject};
use meterd::domain::quantity::Micros;
use meterd::domain::record::{RecordState, RejectReason, SealedRecord};
use meterd::report;
use meterd::store::{IngestOutcome, SealParams, Store, keys};

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;
const ARN: &str = "arn:aws:license-manager::111122223333:license:l-0001";

fn identity() -> Identity {
    Identity::Aws { account_id: "111122223333".into(), license_arn: ARN.into() }
}

fn ev(key: &str, who: Identity, units: u64, at_ms: i64) -> UsageEvent {
    UsageEvent {
        idempotency_key: key.into(),
        product: "p".into(),
        identity: who,
        dimension: "d".into(),
        quantity: Micros::from_units(units),
        timestamp_ms: Some(at_ms),
        tags: TagSet::new(),
    }
}

fn tenant(t: &str) -> Identity {
    Identity::Tenant(t.into())
}

fn mapping(t: &str) -> TenantMapping {
    TenantMapping {
        tenant_id: t.into(),
        product: "p".into(),
        identity: identity(),
        agreement_id: None,
        updated_at_ms: T0,
    }
}

fn seal_before(hour_ms: i64) -> SealParams {
    SealParams {
        cutoff_hour_ms: hour_ms,
        now_ms: hour_ms,
        window_ms: 24 * HOUR,
        product_windows_ms: Default::default(),
        margin_ms: 0,
        zero_records: false,
    }
}

/// The AWS key each record would be sent under, for every record that can still be or was sent.
fn aws_keys(store: &Store) -> Vec<(i64, Vec<u8>, String)> {
    let mut out = Vec::new();
    for r in store.records().unwrap() {
        if matches!(r.state, RecordState::Carried | RecordState::Merged { .. }) {
            continue;
        }
        let wire = match (&r.key.identity, &r.sent_as) {
            (Identity::Tenant(t), None) => match store.mapping(t).unwrap() {
                Some(m) => m.identity,
                None => continue,
            },
            (Identity::Tenant(_), Some(sent)) => sent.clone(),
            (id, _) => id.clone(),
        };
        out.push((r.key.hour_ms, keys::lifecycle_key(&wire).unwrap(), r.key.dimension.clone()));
    }
    out
}

async fn assert_one_record_per_aws_key(store: &Store) {
    let keys = aws_keys(store);
    let unique: std::collections::HashSet<_> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), keys.len(), "two records for one AWS key: {keys:?}");
    let rep = report::build(store).await.unwrap();
    assert!(rep.totals.reconciled, "{:?}", rep.totals);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn record_of(store: &Store, who: &Identity, hour_ms: i64) -> Option<SealedRecord> {
    store.records().unwrap().into_iter().find(|r| r.key.identity == *who && r.key.hour_ms == hour_ms)
}

#[test]
fn open_tenant_usage_merges_into_the_identitys_open_bucket() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        store.ingest(vec![ev("a", tenant("t"), 2, T0 + 1)], T0 + 1, LateUsage::Carry).await.unwrap();
        store.ingest(vec![ev("b", identity(), 3, T0 + 2)], T0 + 2, LateUsage::Carry).await.unwrap();
        assert_eq!(store.put_mapping(mapping("t"), T0 + 3).await.unwrap(), 1);
        store.seal(seal_before(T0 + HOUR)).await.unwrap();
        let records = store.records().unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!((records[0].quantity, &records[0].key.identity), (5, &identity()));
        assert_one_record_per_aws_key(&store).await;
        store.close().await.unwrap();
    });
}

#[test]
fn a_held_record_whose_key_the_identity_has_is_merged_into_its_next_open_hour() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        store.ingest(vec![ev("a", tenant("t"), 3, T0 + 1)], T0 + 1, LateUsage::Carry).await.unwrap();
        store.ingest(vec![ev("b", identity(), 5, T0 + 2)], T0 + 2, LateUsage::Carry).await.unwrap();
        store.seal(seal_before(T0 + HOUR)).await.unwrap();
        // The identity's record is already accepted by AWS when the mapping arrives.
        let own = record_of(&store, &identity(), T0).unwrap();
        let accepted =
            RecordState::Accepted { metering_record_id: None, aws_request_id: None, at_ms: 0, verify: false };
        store.update_records(vec![SealedRecord { state: accepted, ..own }]).await.unwrap();

        let now = T0 + HOUR + 10 * 60_000;
        store.put_mapping(mapping("t"), now).await.unwrap();
        let held = record_of(&store, &tenant("t"), T0).unwrap();
        assert_eq!(
            held.state,
            RecordState::Merged { into: identity(), into_hour_ms: T0 + HOUR, at_ms: now },
            "never sent under a key AWS already holds"
        );
        assert_eq!(store.pending_count().unwrap(), 0, "a merged record leaves the queue");
        assert_one_record_per_aws_key(&store).await;
        let rep = report::build(&store).await.unwrap();
        assert_eq!((rep.totals.carried.as_str(), rep.totals.merged_units), ("3", 3), "{:?}", rep.totals);

        // The identity's next hour carries the 3 units, even with no usage of its own.
        store.seal(seal_before(T0 + 2 * HOUR)).await.unwrap();
        let next = record_of(&store, &identity(), T0 + HOUR).unwrap();
        assert_eq!((next.quantity, &next.state), (3, &RecordState::Sealed));
        assert_one_record_per_aws_key(&store).await;
        assert_eq!(report::build(&store).await.unwrap().totals.recorded, "8");

        // Mapping again changes nothing.
        store.put_mapping(mapping("t"), now + 1).await.unwrap();
        assert_eq!(record_of(&store, &tenant("t"), T0).unwrap(), held);
        store.close().await.unwrap();
    });
}

#[test]
fn a_held_record_with_a_free_key_takes_it_and_a_second_tenant_for_that_key_is_merged() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        store.ingest(vec![ev("a", tenant("t1"), 2, T0 + 1)], T0 + 1, LateUsage::Carry).await.unwrap();
        store.ingest(vec![ev("b", tenant("t2"), 7, T0 + 1)], T0 + 1, LateUsage::Carry).await.unwrap();
        store.seal(seal_before(T0 + HOUR)).await.unwrap();
        store.put_mapping(mapping("t1"), T0 + HOUR).await.unwrap();
        let first = record_of(&store, &tenant("t1"), T0).unwrap();
        assert_eq!((first.sent_as.as_ref(), &first.state), (Some(&identity()), &RecordState::Sealed));
        store.put_mapping(mapping("t2"), T0 + HOUR).await.unwrap();
        let second = record_of(&store, &tenant("t2"), T0).unwrap();
        assert!(matches!(second.state, RecordState::Merged { .. }), "{second:?}");
        assert_one_record_per_aws_key(&store).await;

        // The identity named directly for that sealed hour is late: it goes to the open hour, never to T0.
        store.ingest(vec![ev("c", identity(), 1, T0 + 5)], T0 + HOUR + 5, LateUsage::Carry).await.unwrap();
        store.seal(seal_before(T0 + 2 * HOUR)).await.unwrap();
        let next = record_of(&store, &identity(), T0 + HOUR).unwrap();
        assert_eq!(next.quantity, 8, "7 merged + 1 late");
        assert!(record_of(&store, &identity(), T0).is_none());
        assert_one_record_per_aws_key(&store).await;
        store.close().await.unwrap();
    });
}

#[test]
fn open_tenant_usage_for_an_hour_the_identity_sealed_early_moves_to_the_next_hour_as_late() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        store.ingest(vec![ev("a", identity(), 4, T0 + 1)], T0 + 1, LateUsage::Carry).await.unwrap();
        store.ingest(vec![ev("b", tenant("t"), 2, T0 + 2)], T0 + 2, LateUsage::Carry).await.unwrap();
        // Deprovisioning seals the identity's open hour at once.
        let deprovision = LifecycleEvent {
            kind: LifecycleKind::Deprovisioning,
            subject: Subject::License { license_arn: ARN.into(), account_id: Some("111122223333".into()) },
            agreement_id: None,
            product_code: None,
            event_id: Some("e1".into()),
            source_type: "License Deprovisioned".into(),
        };
        let params = SealParams { now_ms: T0 + 10, ..seal_before(T0 + HOUR) };
        assert_eq!(store.apply_lifecycle(deprovision, params).await.unwrap().records_sealed, 1);
        store.put_mapping(mapping("t"), T0 + 20).await.unwrap();
        let open = store.buckets().unwrap();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!((open[0].0.hour_ms, &open[0].0.identity), (T0 + HOUR, &identity()));
        assert_eq!((open[0].1.total, open[0].1.late), (Micros::from_units(2), Micros::from_units(2)));
        store.seal(seal_before(T0 + 2 * HOUR)).await.unwrap();
        assert_eq!(record_of(&store, &identity(), T0).unwrap().quantity, 4, "the early record is untouched");
        assert_one_record_per_aws_key(&store).await;
        store.close().await.unwrap();
    });
}

#[test]
fn duplicate_record_on_a_first_send_counts_as_lost_revenue() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        store.ingest(vec![ev("a", identity(), 6, T0 + 1)], T0 + 1, LateUsage::Carry).await.unwrap();
        store.ingest(vec![ev("b", tenant("x"), 2, T0 + 1)], T0 + 1, LateUsage::Carry).await.unwrap();
        store.seal(seal_before(T0 + HOUR)).await.unwrap();
        let mut pending = store.pending_records(10).unwrap();
        pending.sort_by_key(|r| r.quantity);
        let not_subscribed = RecordState::Rejected {
            reason: RejectReason::CustomerNotSubscribed,
            aws_request_id: None,
            at_ms: T0 + HOUR,
        };
        let duplicate = RecordState::Rejected {
            reason: RejectReason::DuplicateRecord,
            aws_request_id: Some("req-1".into()),
            at_ms: T0 + HOUR,
        };
        store
            .update_records(vec![
                SealedRecord { state: not_subscribed, ..pending[0].clone() },
                SealedRecord { state: duplicate, ..pending[1].clone() },
            ])
            .await
            .unwrap();
        let lost = store.lost().unwrap();
        assert_eq!((lost.records, lost.units), (1, 6), "only DuplicateRecord is lost revenue");
        let rep = report::build(&store).await.unwrap();
        assert!(rep.totals.reconciled);
        assert_eq!((rep.totals.lost_records, rep.totals.lost_units), (1, 6));
        assert_eq!(rep.exit_code(), 4, "reconciled, but revenue was lost");
        assert!(rep.to_table().contains("LOST REVENUE: 6 units"), "{}", rep.to_table());
        assert!(rep.rows.iter().any(|r| r.reason.contains("req-1")), "the AWS request id is shown");
        // Retention removes the record, not the loss.
        store.compact(T0 + 100 * HOUR).await.unwrap();
        assert_eq!(report::build(&store).await.unwrap().totals.lost_units, 6);
        store.close().await.unwrap();
    });
}

#[test]
fn usage_naming_a_bound_license_under_another_account_is_refused() {
    // meterd keys a license customer by its ARN (invariant 3, lifecycle): a second account on the same license
    // would be a second record AWS cannot bill. Once the license's account is known (here from a tenant
    // mapping), usage naming another account is refused at ingest instead of acked and lost at submission.
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        store.put_mapping(mapping("t"), T0).await.unwrap();
        let other = Identity::Aws { account_id: "444455556666".into(), license_arn: ARN.into() };
        let out = store
            .ingest(vec![ev("a", identity(), 2, T0 + 1), ev("b", other, 3, T0 + 2)], T0 + 2, LateUsage::Carry)
            .await
            .unwrap();
        assert!(matches!(out[0], IngestOutcome::Stored(_)), "{out:?}");
        assert!(matches!(out[1], IngestOutcome::NotActive(_)), "{out:?}");
        let (_, refusal) = out[1].refusal().unwrap();
        assert_eq!(refusal.field, "customer");
        assert!(
            refusal.message.contains("444455556666") && refusal.message.contains("111122223333"),
            "{}",
            refusal.message
        );
        store.seal(seal_before(T0 + HOUR)).await.unwrap();
        let records = store.records().unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_one_record_per_aws_key(&store).await;
        store.close().await.unwrap();
    });
}

#[test]
fn the_kept_at_risk_totals_follow_mapping_and_unmapping_of_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        // Held under tenant t for product q: mapping t (for product p) leaves it held, but by the status rule a
        // mapped tenant's records are not at risk; unmapping makes it at risk again.
        let held = UsageEvent { product: "q".into(), ..ev("a", tenant("t"), 4, T0) };
        store.ingest(vec![held], T0, LateUsage::Carry).await.unwrap();
        store.seal(seal_before(T0 + HOUR)).await.unwrap();
        let at_risk = |s: &Store| {
            let v = s.pending_view().unwrap();
            assert_eq!(v.totals, s.recount_pending().unwrap(), "kept totals = a full count");
            (v.totals.at_risk_records, v.totals.at_risk_units)
        };
        assert_eq!(at_risk(&store), (1, 4));
        store.put_mapping(mapping("t"), T0 + HOUR).await.unwrap();
        assert_eq!(at_risk(&store), (0, 0));
        assert!(store.remove_mapping("t").await.unwrap());
        assert_eq!(at_risk(&store), (1, 4));
        assert!(!store.remove_mapping("t").await.unwrap(), "a second unmap changes nothing");
        assert_eq!(at_risk(&store), (1, 4));
        store.close().await.unwrap();
    });
}
