//! Silence detection over five simulated weeks on a manual clock, through the real store: usage is ingested and
//! sealed hour by hour as the agent would, and `silence::last_ended_hour` reads back only the hours a baseline
//! needs. Weekly seasonality (quiet weekends) is never flagged; a steady customer that stops is flagged as soon
//! as the first silent hour ends, before and after that hour is sealed.

use meterd::clock::{Clock, HOUR_MS, ManualClock};
use meterd::config::LateUsage;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::quantity::Micros;
use meterd::domain::silence::Settings;
use meterd::silence::last_ended_hour;
use meterd::store::{IngestOutcome, SealParams, Store};

const DAY: i64 = 24 * HOUR_MS;
/// Monday 2026-11-02 00:00 UTC.
const MONDAY: i64 = 1_793_577_600_000;

fn customer(name: &str) -> Identity {
    Identity::Aws {
        account_id: "111122223333".into(),
        license_arn: format!("arn:aws:license-manager::111122223333:license:l-{name}"),
    }
}

fn is_weekend(hour_ms: i64) -> bool {
    matches!((hour_ms - MONDAY).div_euclid(DAY).rem_euclid(7), 5 | 6)
}

/// What each customer records in an hour: "big" works weekdays (quiet weekends), "steady" every day, "tiny"
/// is below the minimum volume.
fn usage_of(name: &str, hour_ms: i64) -> u64 {
    match name {
        "big" if is_weekend(hour_ms) => 4,
        "big" => 120,
        "steady" => 50,
        _ => 2,
    }
}

/// Records one hour of usage (a few events per customer, spread over the hour) at the hour's end.
async fn record_hour(store: &Store, hour_ms: i64, customers: &[&str]) {
    let mut events = Vec::new();
    for name in customers {
        let units = usage_of(name, hour_ms);
        for part in 0..4u64 {
            let share = units / 4 + u64::from(part < units % 4);
            events.push(UsageEvent {
                idempotency_key: format!("{name}-{hour_ms}-{part}"),
                product: "p".into(),
                identity: customer(name),
                dimension: "d".into(),
                quantity: Micros::from_units(share),
                timestamp_ms: Some(hour_ms + part as i64 * 15 * 60_000),
                tags: TagSet::new(),
            });
        }
    }
    for r in store.ingest(events, hour_ms + HOUR_MS - 1, LateUsage::Carry).await.unwrap() {
        assert!(
            matches!(r, IngestOutcome::Stored(ref receipt) if receipt.hour_ms / HOUR_MS == hour_ms / HOUR_MS),
            "{r:?}"
        );
    }
}

async fn seal_through(store: &Store, end_ms: i64) {
    store
        .seal(SealParams {
            cutoff_hour_ms: end_ms,
            now_ms: end_ms,
            window_ms: DAY,
            margin_ms: 0,
            zero_records: false,
            product_windows_ms: Default::default(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn quiet_weekends_are_not_flagged_and_a_stop_is_flagged_in_the_first_ended_hour() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let clock = ManualClock::new(MONDAY);
    let settings = Settings::default();
    let all = ["big", "steady", "tiny"];

    // Four weeks of history with quiet weekends; from the second week on, every hour is checked as it ends.
    let mut hour = MONDAY;
    let mut checked = 0;
    while hour < MONDAY + 28 * DAY {
        record_hour(&store, hour, &all).await;
        // Just after the hour ends, before it is sealed (the sealer waits `seal_grace`).
        clock.set(hour + HOUR_MS + 30_000);
        if hour >= MONDAY + 7 * DAY {
            let drops = last_ended_hour(&store, &settings, clock.now_ms()).unwrap();
            assert_eq!(drops, vec![], "flagged at {}", meterd::clock::rfc3339(hour));
            checked += 1;
        }
        seal_through(&store, hour + HOUR_MS).await;
        hour += HOUR_MS;
    }
    assert_eq!(checked, 21 * 24, "three weeks checked hour by hour, six weekends among them");

    // Week five, Wednesday 10:00: "big" stops calling (a deploy lost its record_usage); the others go on.
    let stop = MONDAY + 30 * DAY + 10 * HOUR_MS;
    while hour < stop {
        record_hour(&store, hour, &all).await;
        seal_through(&store, hour + HOUR_MS).await;
        hour += HOUR_MS;
    }
    record_hour(&store, stop, &["steady", "tiny"]).await;
    clock.set(stop + HOUR_MS + 30_000);
    let drops = last_ended_hour(&store, &settings, clock.now_ms()).unwrap();
    assert_eq!(drops.len(), 1, "{drops:?}");
    let d = &drops[0];
    assert_eq!((d.hour_ms, d.product.as_str(), d.dimension.as_str()), (stop, "p", "d"));
    assert_eq!(d.customer.as_deref(), Some(customer("big").label().as_str()));
    assert_eq!((d.observed, d.baseline), (Micros::ZERO, Micros::from_units(120)));

    // The same answer once the silent hour is sealed (it has no record at all: nothing was recorded).
    seal_through(&store, stop + HOUR_MS).await;
    assert_eq!(last_ended_hour(&store, &settings, clock.now_ms()).unwrap(), drops);

    // The whole product stops: its total is flagged too; "tiny" is below the minimum volume and is not.
    clock.set(stop + 2 * HOUR_MS + 30_000);
    let drops = last_ended_hour(&store, &settings, clock.now_ms()).unwrap();
    let who: Vec<_> = drops.iter().map(|d| d.customer.clone()).collect();
    assert_eq!(who, vec![None, Some(customer("big").label()), Some(customer("steady").label())]);
}
