//! Usage drops in fleet mode, against a real PostgreSQL: the detection over the shared ledger's kept hour totals
//! and index reads (`fleet::hours`) finds what the detection over every record and bucket of the hours finds
//! (`silence::last_ended_hour_by_scan`), with more customers per hour than the biggest-records lists hold.

use std::collections::BTreeMap;
use std::time::Duration;

use meterd::clock::{HOUR_MS, hour_start};
use meterd::domain::event::{Identity, UsageEvent};
use meterd::domain::quantity::Micros;
use meterd::domain::seal::SealPolicy;
use meterd::domain::silence::{Settings, baseline_hours};
use meterd::fleet::hours::{FleetHours, last_ended_hour};
use meterd_fleet::forward::{self, Acked};
use meterd_fleet::lease::{self, Terms};
use meterd_fleet::seal::{self, SealRules};
use meterd_fleet::test_postgres::TestPostgres;
use meterd_fleet::{migrate, nodes};

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn customer(n: u32) -> Identity {
    Identity::Aws { account_id: "123456789012".into(), license_arn: format!("arn:aws:license-manager::lic-{n}") }
}

fn event(key: String, who: Identity, units: u128, at_ms: i64) -> Acked {
    let event = UsageEvent {
        idempotency_key: key,
        product: "p".into(),
        identity: who,
        dimension: "requests".into(),
        quantity: Micros::from_units(units as u64),
        timestamp_ms: Some(at_ms),
        tags: Default::default(),
    };
    Acked { event, received_ms: now_ms() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_drops_are_the_drops_of_every_record_and_bucket_of_the_hours() {
    let pg = TestPostgres::start().expect("postgres");
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    migrate::migrate(&mut c).await.unwrap();
    let me = nodes::register(&c, "a", "", Duration::from_secs(600)).await.unwrap();
    let terms = Terms { ttl: Duration::from_secs(600), margin: Duration::from_secs(10) };
    let lease = lease::acquire(&c, "acct", &me, terms).await.unwrap().unwrap();

    // The last ended hour and its baseline hours: customers 1-3 use 50 units in every baseline hour; in the hour
    // itself 1 keeps it up, 2 falls to 1 unit, 3 is silent. 120 small customers (1 unit an hour: below the
    // minimum baseline) push the biggest-records lists past what they hold.
    let now = now_ms();
    let hour = hour_start(now) - HOUR_MS;
    let mut usage: BTreeMap<(i64, u32), u128> = BTreeMap::new();
    for h in baseline_hours(hour) {
        for n in 1..=3 {
            usage.insert((h, n), 50);
        }
        for n in 100..220 {
            usage.insert((h, n), 1);
        }
    }
    usage.insert((hour, 1), 50);
    usage.insert((hour, 2), 1);
    for n in 100..220 {
        usage.insert((hour, n), 1);
    }
    let events: Vec<Acked> =
        usage.iter().map(|((h, n), u)| event(format!("{h}-{n}"), customer(*n), *u, h + 60_000)).collect();
    for batch in events.chunks(1000) {
        forward::forward(&mut c, "a", batch, now_ms()).await.unwrap();
    }
    // The baseline hours sealed (records, read through the lists and the index), the hour itself still open.
    let policy =
        SealPolicy { window_ms: 6 * HOUR_MS, product_windows_ms: BTreeMap::new(), margin_ms: 0, zero_records: false };
    let rules = SealRules { down_after: Duration::from_secs(600), max_wait: Duration::from_secs(24 * 3600) };
    seal::seal(&mut c, &lease, &["p".to_string()], hour, &policy, rules).await.unwrap();

    let settings = Settings::default();
    let kept =
        last_ended_hour(meterd_fleet::connect_plain(&pg.url()).await.unwrap(), settings.clone(), now).await.unwrap();
    let reference = {
        let hours = FleetHours {
            client: meterd_fleet::connect_plain(&pg.url()).await.unwrap(),
            handle: tokio::runtime::Handle::current(),
        };
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || meterd::silence::last_ended_hour_by_scan(&hours, &settings, now))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(kept, reference, "the kept figures give the drops every record and bucket give");
    let who: Vec<Option<String>> = kept.iter().map(|d| d.customer.clone()).collect();
    assert!(who.contains(&Some(customer(2).label())) && who.contains(&Some(customer(3).label())), "{kept:?}");
    assert!(!who.contains(&Some(customer(1).label())), "{kept:?}");
}
