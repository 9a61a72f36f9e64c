//! The store conformance suite: what any [`Ledger`] backend must do, written only against the trait. sled runs
//! it in `store_conformance.rs`; a PostgreSQL backend runs the same functions with its own `open`.
//!
//! `open(dir)` opens (or reopens, after `close`) the backend whose durable state lives at `dir`; a backend kept
//! elsewhere (a database) uses `dir` only to tell instances apart.

use std::path::Path;

mod pages;
use pages::{moving_usage_is_counted, report_pages_cover_the_ledger_once};

use meterd::domain::catalog::LatePolicy;
use meterd::domain::customer::{CustomerStatus, StatusChange, TenantMapping};
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::ingest::{Inactive, IngestOutcome, IngestRules};
use meterd::domain::lifecycle::{LifecycleEvent, LifecycleKind, Subject};
use meterd::domain::quantity::Micros;
use meterd::domain::record::{ExpiryReason, RecordState, RejectReason};
use meterd::domain::seal::SealParams;
use meterd::store::{Ledger, StoreError};

pub const HOUR: i64 = 3_600_000;
pub const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;
pub(crate) const ARN: &str = "arn:aws:license-manager::111122223333:license:l-0001";
pub(crate) const CARRY: IngestRules = IngestRules { late: LatePolicy::Carry, max_lateness_ms: None };

pub(crate) fn aws() -> Identity {
    Identity::Aws { account_id: "111122223333".into(), license_arn: ARN.into() }
}

pub(crate) fn ev(key: &str, who: Identity, micros: u128, at_ms: i64, tag: Option<&str>) -> UsageEvent {
    UsageEvent {
        idempotency_key: key.into(),
        product: "p".into(),
        identity: who,
        dimension: "d".into(),
        quantity: Micros(micros),
        timestamp_ms: Some(at_ms),
        tags: tag.map(|t| TagSet::from([("team".to_string(), t.to_string())])).unwrap_or_default(),
    }
}

pub(crate) fn seal_before(hour_ms: i64) -> SealParams {
    SealParams {
        cutoff_hour_ms: hour_ms,
        now_ms: hour_ms,
        window_ms: 24 * HOUR,
        product_windows_ms: Default::default(),
        margin_ms: 0,
        zero_records: false,
    }
}

/// What a backend declares it does not do. A case (or the part of one) that needs a capability the backend
/// lacks is skipped, saying so, never weakened: sled declares [`Capabilities::ALL`], and each capability a
/// backend turns off is explained where that backend is documented (`docs/fleet.md` for PostgreSQL).
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// `compact` forgets the event keys stored before its cutoff too (sled: its dedupe segments). PostgreSQL
    /// forgets them with their day's partition on the database's clock instead (`partitions::drop_expired`), so
    /// its compaction folds the records only.
    pub forgets_keys_at_cutoff: bool,
}

impl Capabilities {
    // Each backend's test binary compiles this module: the PostgreSQL one declares its own.
    #[allow(dead_code)]
    pub const ALL: Capabilities = Capabilities { forgets_keys_at_cutoff: true };
}

/// Runs every case, each on a fresh directory.
pub async fn run_all<S: Ledger, F: Fn(&Path) -> S>(open: F, caps: Capabilities) {
    macro_rules! case {
        ($name:ident $(, $arg:expr)?) => {{
            let dir = tempfile::tempdir().unwrap();
            eprintln!("conformance: {}", stringify!($name));
            $name(&open, dir.path() $(, $arg)?).await;
        }};
    }
    case!(idempotency_and_durability);
    case!(late_usage_and_the_lateness_bound);
    case!(seal_freezes_one_record_per_key_and_carries_fractions);
    case!(record_updates_keep_content_frozen_and_count_lost_revenue);
    case!(mapping_moves_open_usage_and_gates_other_products);
    case!(a_leaving_customer_is_sealed_at_once_and_refused_after);
    case!(a_customer_named_by_its_agreement_leaves_at_once);
    case!(compaction_keeps_totals, caps);
    case!(hour_reads_stay_within_their_hour);
    case!(reclaiming_space_keeps_the_ledger);
    case!(report_pages_cover_the_ledger_once);
    case!(moving_usage_is_counted);
}

/// Space reclamation (sled: a repack into a fresh generation) is housekeeping: whatever a backend does, the
/// ledger reads the same afterwards and takes writes as before.
async fn reclaiming_space_keeps_the_ledger<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    s.ingest(
        vec![ev("a", aws(), 2_000_000, T0 + 1, None), ev("b", aws(), 1, T0 + HOUR + 1, None)],
        T0 + HOUR + 2,
        CARRY,
    )
    .await
    .unwrap();
    s.seal(seal_before(T0 + HOUR)).await.unwrap();
    let (records, buckets) = (s.records().unwrap(), s.buckets().unwrap());
    assert_eq!(s.reclaim_space(0.0).await.unwrap(), None, "a ratio of 0 turns reclamation off");
    // A ratio every ledger passes: the backend may reclaim now (sled's minimum size still applies).
    s.reclaim_space(f64::MIN_POSITIVE).await.unwrap();
    assert_eq!(s.records().unwrap(), records);
    assert_eq!(s.buckets().unwrap(), buckets);
    let again = s.ingest(vec![ev("a", aws(), 2_000_000, T0 + 1, None)], T0 + HOUR + 3, CARRY).await.unwrap();
    assert!(matches!(&again[0], IngestOutcome::Replayed(_)), "{again:?}");
    s.close().await.unwrap();
}

/// Silence detection reads single hours (records and open buckets) and where the history starts.
async fn hour_reads_stay_within_their_hour<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    assert_eq!(s.first_hour().unwrap(), None, "an empty ledger has no history");
    let events = vec![
        ev("a", aws(), 2_000_000, T0 + 1, None),
        ev("b", aws(), 3_000_000, T0 + HOUR + 1, None),
        ev("c", aws(), 4_000_000, T0 + 2 * HOUR + 1, None),
    ];
    s.ingest(events, T0 + 2 * HOUR + 2, CARRY).await.unwrap();
    assert_eq!(s.first_hour().unwrap(), Some(T0));
    s.seal(seal_before(T0 + HOUR)).await.unwrap();
    assert_eq!(s.first_hour().unwrap(), Some(T0), "a sealed record still starts the history");
    let sealed = s.records_of_hour(T0).unwrap();
    assert_eq!(sealed.iter().map(|r| (r.key.hour_ms, r.quantity)).collect::<Vec<_>>(), vec![(T0, 2)]);
    assert!(s.buckets_of_hour(T0).unwrap().is_empty(), "the sealed hour has no open buckets left");
    let open_hour = s.buckets_of_hour(T0 + HOUR).unwrap();
    assert_eq!(
        open_hour.iter().map(|(k, b)| (k.hour_ms, b.total)).collect::<Vec<_>>(),
        vec![(T0 + HOUR, Micros(3_000_000))]
    );
    assert!(s.records_of_hour(T0 + HOUR).unwrap().is_empty());
    assert_eq!(s.buckets_of_hour(T0 + 3 * HOUR).unwrap().len(), 0);
    s.close().await.unwrap();
}

async fn idempotency_and_durability<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    assert_eq!(s.sealed_through().unwrap(), None, "nothing sealed in a new ledger");
    let a = ev("a", aws(), 1_500_000, T0 + 1, None);
    let out = s.ingest(vec![a.clone(), a.clone(), ev("a", aws(), 2, T0 + 1, None)], T0 + 5, CARRY).await.unwrap();
    let IngestOutcome::Stored(first) = &out[0] else { panic!("{out:?}") };
    assert!(matches!(&out[1], IngestOutcome::Replayed(r) if r.recorded_at_ms == first.recorded_at_ms));
    assert!(matches!(&out[2], IngestOutcome::Conflict { existing } if existing.hour_ms == T0));
    s.close().await.unwrap();
    drop(s);
    // Acknowledged means durable: a reopened ledger answers a retry with the original receipt.
    let s = open(dir);
    let again = s.ingest(vec![a], T0 + 2 * HOUR, CARRY).await.unwrap();
    assert!(matches!(&again[0], IngestOutcome::Replayed(r) if r.recorded_at_ms == T0 + 5 && r.hour_ms == T0));
    let buckets = s.buckets().unwrap();
    assert_eq!(buckets.len(), 1);
    assert_eq!((buckets[0].1.total, buckets[0].1.events), (Micros(1_500_000), 1));
    assert_eq!(s.event("a").unwrap().map(|e| e.quantity), Some(Micros(1_500_000)));
    assert_eq!(s.event("nope").unwrap(), None);
    s.close().await.unwrap();
}

async fn late_usage_and_the_lateness_bound<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    s.seal(seal_before(T0 + HOUR)).await.unwrap();
    assert_eq!(s.sealed_through().unwrap(), Some(T0 + HOUR));
    let now = T0 + 2 * HOUR + 7;
    let reject = IngestRules { late: LatePolicy::Reject, max_lateness_ms: None };
    let out = s.ingest(vec![ev("r", aws(), 1, T0 + 1, None)], now, reject).await.unwrap();
    assert_eq!(out[0], IngestOutcome::LateRejected { hour_ms: T0 });
    let out = s.ingest(vec![ev("c", aws(), 1, T0 + 1, None)], now, CARRY).await.unwrap();
    assert!(matches!(&out[0], IngestOutcome::Stored(r) if r.hour_ms == T0 + 2 * HOUR), "{out:?}");
    let b = s.buckets().unwrap();
    assert_eq!((b[0].0.hour_ms, b[0].1.late), (T0 + 2 * HOUR, Micros(1)));
    let bounded = IngestRules { late: LatePolicy::Carry, max_lateness_ms: Some(HOUR) };
    let out = s.ingest(vec![ev("c", aws(), 1, T0 + 1, None), ev("o", aws(), 1, T0 + 1, None)], now, bounded).await;
    let out = out.unwrap();
    assert!(matches!(out[0], IngestOutcome::Replayed(_)), "a retry is answered whatever its age");
    assert_eq!(out[1], IngestOutcome::TooLate { event_time_ms: T0 + 1, max_lateness_ms: HOUR });
    assert_eq!(s.event("o").unwrap(), None);
    s.close().await.unwrap();
}

async fn seal_freezes_one_record_per_key_and_carries_fractions<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    let events = vec![
        ev("1", aws(), 1_600_000, T0 + 1, Some("a")),
        ev("2", aws(), 1_600_000, T0 + 2, Some("b")),
        ev("3", aws(), 300_000, T0 + 3, None),
        ev("4", aws(), 200_000, T0 + HOUR + 1, None),
    ];
    s.ingest(events, T0 + HOUR + 2, CARRY).await.unwrap();
    let sealed = s.seal(seal_before(T0 + 2 * HOUR)).await.unwrap();
    assert_eq!((sealed.records, sealed.carried_only, sealed.sealed_through), (1, 1, Some(T0 + 2 * HOUR)));
    assert_eq!(s.seal(seal_before(T0 + 2 * HOUR)).await.unwrap().records, 0, "sealing is idempotent");
    let records = s.records().unwrap();
    assert_eq!(records.len(), 2, "one record per (product, customer, dimension, hour)");
    let r = &records[0];
    assert_eq!(
        (r.key.hour_ms, r.quantity, r.carried_out, r.state.clone()),
        (T0, 3, Micros(500_000), RecordState::Sealed)
    );
    assert_eq!(r.allocations.iter().map(|a| a.quantity).sum::<u32>(), 3);
    assert_eq!(r.deadline_ms, T0 + 24 * HOUR);
    // 0.5 carried in + 0.2 = 0.7: nothing to send, all carried on.
    assert_eq!((records[1].state.clone(), records[1].carried_out), (RecordState::Carried, Micros(700_000)));
    assert_eq!(s.carries().unwrap(), vec![Micros(700_000)]);
    assert!(s.buckets().unwrap().is_empty());
    assert_eq!(s.pending_records(10).unwrap().len(), 1);
    let snap = s.snapshot().await.unwrap();
    assert_eq!((snap.records, snap.carries, snap.buckets.len()), (records, vec![Micros(700_000)], 0));
    s.close().await.unwrap();
}

async fn record_updates_keep_content_frozen_and_count_lost_revenue<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    let other = Identity::Legacy { customer_identifier: "c2".into() };
    s.ingest(vec![ev("1", aws(), 2_000_000, T0 + 1, None)], T0 + 2, CARRY).await.unwrap();
    s.ingest(vec![ev("2", other, 5_000_000, T0 + HOUR + 1, None)], T0 + HOUR + 2, CARRY).await.unwrap();
    s.seal(seal_before(T0 + 2 * HOUR)).await.unwrap();
    let pending = s.pending_records(10).unwrap();
    assert_eq!(pending.iter().map(|r| r.key.hour_ms).collect::<Vec<_>>(), vec![T0, T0 + HOUR], "most urgent first");
    let (first, second) = (pending[0].clone(), pending[1].clone());
    let changed = meterd::domain::record::SealedRecord { quantity: 9, ..first.clone() };
    assert!(matches!(s.update_records(vec![changed]).await, Err(StoreError::Corrupt(_))), "content is frozen");
    let in_flight = meterd::domain::record::SealedRecord {
        state: RecordState::InFlight { attempts: 1, next_attempt_ms: T0 },
        ..first.clone()
    };
    s.update_records(vec![in_flight]).await.unwrap();
    let lost = meterd::domain::record::SealedRecord {
        state: RecordState::Rejected { reason: RejectReason::DuplicateRecord, aws_request_id: None, at_ms: T0 },
        ..first.clone()
    };
    let expired = meterd::domain::record::SealedRecord {
        state: RecordState::Expired { reason: ExpiryReason::DeadlinePassed, at_ms: T0 },
        ..second
    };
    s.update_records(vec![lost.clone(), expired]).await.unwrap();
    assert!(s.pending_records(10).unwrap().is_empty(), "terminal records leave the queue");
    assert!(matches!(s.update_records(vec![lost]).await, Err(StoreError::Corrupt(_))), "terminal is final");
    let l = s.lost().unwrap();
    assert_eq!((l.records, l.units), (1, 2), "counted once, in the same write as the state");
    s.close().await.unwrap();
}

async fn mapping_moves_open_usage_and_gates_other_products<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    let t = Identity::Tenant("t".into());
    s.ingest(vec![ev("1", t.clone(), 2_000_000, T0 + 1, None)], T0 + 2, CARRY).await.unwrap();
    assert_eq!(s.buckets().unwrap()[0].0.identity, t, "held under the tenant while unmapped");
    let m = TenantMapping {
        tenant_id: "t".into(),
        product: "p".into(),
        identity: aws(),
        agreement_id: None,
        updated_at_ms: T0,
    };
    assert_eq!(s.put_mapping(m.clone(), T0 + 3).await.unwrap(), 1);
    assert_eq!(s.mapping("t").unwrap(), Some(m.clone()));
    assert_eq!(s.mappings().unwrap(), vec![m]);
    assert_eq!(s.lifecycle(&aws()).unwrap().map(|l| l.status), Some(CustomerStatus::Active));
    s.ingest(vec![ev("2", t.clone(), 1_000_000, T0 + 4, None)], T0 + 5, CARRY).await.unwrap();
    let b = s.buckets().unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].0.identity.clone(), b[0].1.total, b[0].1.events), (aws(), Micros(3_000_000), 2));
    let elsewhere = UsageEvent { product: "q".into(), ..ev("3", t, 1, T0 + 4, None) };
    let out = s.ingest(vec![elsewhere], T0 + 5, CARRY).await.unwrap();
    assert!(matches!(&out[0], IngestOutcome::NotActive(Inactive::MappedElsewhere { .. })), "{out:?}");
    assert!(s.remove_mapping("t".into()).await.unwrap());
    assert!(!s.remove_mapping("t".into()).await.unwrap());
    s.close().await.unwrap();
}

async fn a_leaving_customer_is_sealed_at_once_and_refused_after<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    s.ingest(vec![ev("1", aws(), 2_000_000, T0 + 1, None)], T0 + 2, CARRY).await.unwrap();
    let leave = LifecycleEvent {
        kind: LifecycleKind::Deprovisioning,
        subject: Subject::License { license_arn: ARN.into(), account_id: None },
        agreement_id: Some("agmt-1".into()),
        product_code: None,
        event_id: Some("e1".into()),
        source_type: "License Deprovisioned".into(),
    };
    let params = SealParams { margin_ms: 30 * 60_000, ..seal_before(T0 + 10) };
    let o = s.apply_lifecycle(leave.clone(), params.clone()).await.unwrap();
    assert!(o.applied && o.records_sealed == 1, "{o:?}");
    let r = &s.pending_records(10).unwrap()[0];
    assert_eq!(r.deadline_ms, T0 + 10 + HOUR - 30 * 60_000, "the final hour goes first");
    assert!(!s.apply_lifecycle(leave, params).await.unwrap().applied, "a duplicate changes nothing");
    let out = s.ingest(vec![ev("2", aws(), 1, T0 + 20, None)], T0 + 21, CARRY).await.unwrap();
    assert!(matches!(&out[0], IngestOutcome::NotActive(Inactive::Status(CustomerStatus::Deprovisioning { .. }))));
    let entry = StatusChange {
        at_ms: T0 + 30,
        status: CustomerStatus::Active,
        source: "operator".into(),
        event_id: None,
        applied: true,
    };
    let agreement = Subject::Agreement { agreement_id: "agmt-1".into() };
    let a = s.amend_lifecycle(agreement, entry, true).await.unwrap().expect("found by agreement");
    assert!(a.changed && a.lifecycle.status == CustomerStatus::Active);
    s.note_not_subscribed(aws(), T0 + 40).await.unwrap();
    let life = s.lifecycles().unwrap();
    assert_eq!(life.len(), 1);
    assert_eq!(life[0].not_subscribed_at_ms, Some(T0 + 40));
    s.close().await.unwrap();
}

/// `Purchase Agreement Ended` names only the agreement: the ledger finds the customer by it and seals its open
/// hours in the same way as when the license is named.
async fn a_customer_named_by_its_agreement_leaves_at_once<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path) {
    let s = open(dir);
    let event = |kind, subject, id: &str, source: &str| LifecycleEvent {
        kind,
        subject,
        agreement_id: Some("agmt-2".into()),
        product_code: None,
        event_id: Some(id.into()),
        source_type: source.into(),
    };
    let license = Subject::License { license_arn: ARN.into(), account_id: Some("111122223333".into()) };
    let params = SealParams { margin_ms: 30 * 60_000, ..seal_before(T0 + 10) };
    let created = event(LifecycleKind::Active, license, "e1", "Purchase Agreement Created - Manufacturer");
    s.apply_lifecycle(created, params.clone()).await.unwrap();
    s.ingest(vec![ev("1", aws(), 2_000_000, T0 + 1, None)], T0 + 2, CARRY).await.unwrap();
    let agreement = Subject::Agreement { agreement_id: "agmt-2".into() };
    let ended = event(LifecycleKind::Ended, agreement, "e2", "Purchase Agreement Ended - Manufacturer");
    let o = s.apply_lifecycle(ended, params).await.unwrap();
    assert!(o.applied && o.records_sealed == 1, "{o:?}");
    assert!(s.buckets().unwrap().is_empty(), "the customer's open hour is sealed");
    let r = &s.pending_records(10).unwrap()[0];
    assert_eq!((r.key.identity.clone(), r.deadline_ms), (aws(), T0 + 10 + HOUR - 30 * 60_000));
    s.close().await.unwrap();
}

async fn compaction_keeps_totals<S: Ledger, F: Fn(&Path) -> S>(open: &F, dir: &Path, caps: Capabilities) {
    let s = open(dir);
    s.ingest(vec![ev("1", aws(), 2_000_000, T0 + 1, None)], T0 + 2, CARRY).await.unwrap();
    s.seal(seal_before(T0 + HOUR)).await.unwrap();
    let r = s.pending_records(1).unwrap().remove(0);
    let accepted =
        RecordState::Accepted { metering_record_id: Some("m".into()), aws_request_id: None, at_ms: T0, verify: false };
    s.update_records(vec![meterd::domain::record::SealedRecord { state: accepted, ..r }]).await.unwrap();
    let c = s.compact(T0 + 50 * HOUR).await.unwrap();
    assert_eq!((c.records, c.accepted, c.recorded), (1, 2, Micros(2_000_000)));
    assert!(s.records().unwrap().is_empty());
    assert_eq!(s.compacted().unwrap(), c);
    if caps.forgets_keys_at_cutoff {
        assert_eq!(c.events, 1);
        assert!(s.event("1").unwrap().is_none());
    } else {
        eprintln!("conformance: compaction_keeps_totals: event keys leave by the backend's own clock, not checked");
    }
    // A second compaction finds nothing more, and the kept totals stay.
    assert_eq!(s.compact(T0 + 50 * HOUR).await.unwrap().records, 0);
    assert_eq!(s.compacted().unwrap(), c);
    // The report keeps the units: an accepted record's units are still in its totals after it is gone.
    assert_eq!(s.snapshot().await.unwrap().compacted, c);
    s.close().await.unwrap();
}
