//! Usage drops in fleet mode, against a real PostgreSQL: the detection over the shared ledger's kept hour totals
//! and index reads (`fleet::hours`) finds what the detection over every record and bucket of the hours finds
//! (`silence::last_ended_hour_by_scan`), with more customers per hour than the biggest-records lists hold; and
//! `meterd_usage_drops` on a fleet agent counts the shared ledger's drops (its spool holds no usage).

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

/// A fleet agent's `/metrics` counts the shared ledger's drops, read at scrape time; an unreachable database
/// leaves the family out of the scrape, never fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_agents_drops_metric_counts_the_shared_ledgers_drops() {
    use meterd::fleet::hours::FleetDrops;
    use meterd::silence::DropsMetric;
    let pg = TestPostgres::start().expect("postgres");
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    migrate::migrate(&mut c).await.unwrap();
    nodes::register(&c, "a", "", Duration::from_secs(600)).await.unwrap();
    // Customer 1 uses 50 units in every baseline hour and 1 in the last ended hour; customer 2 keeps it up.
    let now = now_ms();
    let hour = hour_start(now) - HOUR_MS;
    let mut events = Vec::new();
    for h in baseline_hours(hour) {
        events.push(event(format!("{h}-1"), customer(1), 50, h + 60_000));
        events.push(event(format!("{h}-2"), customer(2), 50, h + 60_000));
    }
    events.push(event(format!("{hour}-1"), customer(1), 1, hour + 60_000));
    events.push(event(format!("{hour}-2"), customer(2), 50, hour + 60_000));
    forward::forward(&mut c, "a", &events, now_ms()).await.unwrap();
    let expected =
        last_ended_hour(meterd_fleet::connect_plain(&pg.url()).await.unwrap(), Settings::default(), now).await.unwrap();
    assert!(!expected.is_empty(), "the setup makes a drop");

    let config = |url: &str| {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"/nonexistent\"\n\
             [products.p]\nidentity = \"license\"\ndimensions = [\"requests\", \"gb\"]\n\
             [fleet]\ndatabase_url = \"{url}\"\n"
        );
        std::sync::Arc::new(
            meterd::config::Config::from_toml_with_env(&toml, std::path::Path::new("t.toml"), |_| None).unwrap(),
        )
    };
    let scrape = |url: String| {
        let registry = meterd::metrics::Registry::default();
        registry.register(std::sync::Arc::new(DropsMetric {
            config: config(&url),
            source: std::sync::Arc::new(FleetDrops {
                db: meterd_fleet::connect::Database::parse(&url, None).unwrap(),
                handle: tokio::runtime::Handle::current(),
            }),
            clock: meterd::clock::ManualClock::new(now),
        }));
        tokio::task::spawn_blocking(move || registry.render())
    };
    let text = scrape(pg.url()).await.unwrap().unwrap();
    let samples = meterd_tests_parse(&text);
    assert_eq!(
        samples.get("meterd_usage_drops{product=\"p\",dimension=\"requests\"}"),
        Some(&(expected.len() as f64)),
        "{text}"
    );
    assert_eq!(samples.get("meterd_usage_drops{product=\"p\",dimension=\"gb\"}"), Some(&0.0), "{text}");
    // Nothing listens on that port: the family is left out, the scrape still answers.
    let text = scrape(format!("postgres://meterd@127.0.0.1:{}/meterd?connect_timeout=2", pg.port() + 1))
        .await
        .unwrap()
        .unwrap();
    assert!(!text.contains("meterd_usage_drops"), "{text}");
}

/// `name{labels} value` lines of a scrape.
fn meterd_tests_parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}
