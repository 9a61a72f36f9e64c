//! Invariant 1 (ack means durable) and 2 (exactly once per event) against the real binary:
//! acknowledge events under concurrent load, SIGKILL the agent at a random moment, restart, and check that
//! every acknowledged event is still there and that every bucket total is exact after clients retry. The
//! second test does the same while an operator repacks the store over and over, so kills land mid-copy,
//! mid-switch and mid-cleanup.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meterd_proto::v1;
use meterd_tests::{Agent, basic_config};
use rand::{Rng, SeedableRng};

type Acked = Arc<Mutex<Vec<(v1::UsageEvent, v1::Receipt)>>>;
type Attempted = Arc<Mutex<Vec<v1::UsageEvent>>>;

fn random_event(rng: &mut impl Rng, key: String) -> v1::UsageEvent {
    let customer = v1::Customer {
        identity: Some(match rng.random_range(0..3) {
            0 => v1::customer::Identity::TenantId(format!("tenant-{}", rng.random_range(0..3))),
            _ => v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                customer_aws_account_id: format!("11112222333{}", rng.random_range(0..2)),
                license_arn: "arn:aws:license-manager::111122223333:license:l-abc".into(),
            }),
        }),
    };
    let mut tags = std::collections::HashMap::new();
    if rng.random_bool(0.3) {
        tags.insert("team".to_string(), format!("t{}", rng.random_range(0..2)));
    }
    v1::UsageEvent {
        idempotency_key: key,
        customer: Some(customer),
        dimension: if rng.random_bool(0.5) { "api_calls" } else { "gb_hours" }.into(),
        quantity: format!("{}.{:06}", rng.random_range(0..50), rng.random_range(0..1_000_000)),
        timestamp: None,
        tags,
        product: String::new(),
    }
}

fn hour_of(r: &v1::Receipt) -> i64 {
    r.usage_hour.as_ref().unwrap().seconds
}

/// Bucket identity as a comparable string: hour | customer | dimension | tags.
fn bucket_label(ev: &v1::UsageEvent, hour: i64) -> String {
    let who = match ev.customer.as_ref().unwrap().identity.as_ref().unwrap() {
        v1::customer::Identity::TenantId(t) => format!("tenant:{t}"),
        v1::customer::Identity::AwsAccount(a) => format!("aws:{}/{}", a.customer_aws_account_id, a.license_arn),
        v1::customer::Identity::Legacy(l) => format!("legacy:{}", l.customer_identifier),
    };
    let tags: BTreeMap<_, _> = ev.tags.iter().collect();
    format!("{}|{who}|{}|{tags:?}", hour * 1000, ev.dimension)
}

fn micros(q: &str) -> u128 {
    meterd::domain::quantity::Micros::parse_event(q).unwrap().0
}

async fn load(agent_target: String, acked: Acked, attempted: Attempted, iteration: usize, seed: u64) {
    let client = meterd_proto::client::Client::connect(&agent_target, Duration::from_secs(5)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let mut m = client.metering();
        let (acked, attempted) = (acked.clone(), attempted.clone());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (w as u64) << 32 ^ iteration as u64);
        tasks.spawn(async move {
            for n in 0.. {
                if w % 4 == 0 {
                    // Some callers use batches: all of a batch is acknowledged together.
                    let evs: Vec<_> =
                        (0..20).map(|i| random_event(&mut rng, format!("i{iteration}-w{w}-b{n}-{i}"))).collect();
                    attempted.lock().unwrap().extend(evs.iter().cloned());
                    let Ok(r) = m.record_usage_batch(v1::RecordUsageBatchRequest { events: evs.clone() }).await else {
                        return;
                    };
                    let mut a = acked.lock().unwrap();
                    for (ev, res) in evs.into_iter().zip(r.into_inner().results) {
                        match res.outcome {
                            Some(v1::event_result::Outcome::Receipt(rc)) => a.push((ev, rc)),
                            other => panic!("valid event refused: {other:?}"),
                        }
                    }
                } else {
                    let ev = random_event(&mut rng, format!("i{iteration}-w{w}-{n}"));
                    attempted.lock().unwrap().push(ev.clone());
                    let Ok(r) = m.record_usage(v1::RecordUsageRequest { event: Some(ev.clone()) }).await else {
                        return;
                    };
                    acked.lock().unwrap().push((ev, r.into_inner().receipt.unwrap()));
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Repacks back to back until the agent dies; returns how many finished.
async fn repack_until_killed(agent_target: String) -> u64 {
    let Ok(client) = meterd_proto::client::Client::connect(&agent_target, Duration::from_secs(5)).await else {
        return 0;
    };
    let mut done = 0;
    while client.admin().repack(v1::RepackRequest {}).await.is_ok() {
        done += 1;
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_and_totals_stay_exact() {
    crash_run(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_during_repacks() {
    crash_run(true).await
}

async fn crash_run(repacking: bool) {
    let seed: u64 = std::env::var("METERD_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261127);
    let iterations: usize = std::env::var("METERD_CRASH_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    eprintln!("crash test seed={seed} iterations={iterations} (set METERD_CRASH_SEED to replay)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&basic_config(data.path(), "")).unwrap();
    let acked: Acked = Default::default();
    let attempted: Attempted = Default::default();

    if repacking {
        // Enough keys that a repack takes a while, so kills land inside the copy as well as around it.
        let client = agent.client().await.unwrap();
        let mut prng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for b in 0..10 {
            let events: Vec<_> = (0..1000).map(|i| random_event(&mut prng, format!("preload-{b}-{i}"))).collect();
            let r = client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events: events.clone() }).await;
            let mut a = acked.lock().unwrap();
            attempted.lock().unwrap().extend(events.iter().cloned());
            for (ev, res) in events.into_iter().zip(r.unwrap().into_inner().results) {
                let Some(v1::event_result::Outcome::Receipt(rc)) = res.outcome else { panic!("{res:?}") };
                a.push((ev, rc));
            }
        }
        let t = std::time::Instant::now();
        let r = client.admin().repack(v1::RepackRequest {}).await.unwrap().into_inner();
        eprintln!("preloaded: a repack of {} keys takes {:?}", r.keys, t.elapsed());
    }

    for iteration in 0..iterations {
        let load = tokio::spawn(load(agent.target(), acked.clone(), attempted.clone(), iteration, seed));
        let repacks = repacking.then(|| tokio::spawn(repack_until_killed(agent.target())));
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        agent.kill9();
        load.await.unwrap();
        if let Some(r) = repacks {
            eprintln!("iteration {iteration}: {} repacks finished before the kill", r.await.unwrap());
        }
        agent = agent.restart().unwrap();

        // Every acknowledged event must be found, with its original receipt.
        let client = agent.client().await.unwrap();
        let snapshot = acked.lock().unwrap().clone();
        assert!(!snapshot.is_empty(), "iteration {iteration} acknowledged nothing");
        for chunk in snapshot.chunks(500) {
            let events = chunk.iter().map(|(e, _)| e.clone()).collect();
            let r = client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events }).await.unwrap();
            for ((ev, original), res) in chunk.iter().zip(r.into_inner().results) {
                let Some(v1::event_result::Outcome::Receipt(rc)) = res.outcome else {
                    panic!("acknowledged event {} refused after restart: {res:?}", ev.idempotency_key)
                };
                assert!(rc.replayed, "acknowledged event {} was lost by the crash", ev.idempotency_key);
                assert_eq!((&rc.usage_hour, &rc.recorded_at), (&original.usage_hour, &original.recorded_at));
            }
        }
        eprintln!(
            "iteration {iteration}: {} acknowledged, {} attempted, all intact",
            snapshot.len(),
            attempted.lock().unwrap().len()
        );
    }

    // Clients retry what was never acknowledged; afterwards every attempted event is stored exactly once.
    let client = agent.client().await.unwrap();
    let all = attempted.lock().unwrap().clone();
    let mut expected: BTreeMap<String, u128> = BTreeMap::new();
    for chunk in all.chunks(500) {
        let r =
            client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events: chunk.to_vec() }).await.unwrap();
        for (ev, res) in chunk.iter().zip(r.into_inner().results) {
            let Some(v1::event_result::Outcome::Receipt(rc)) = res.outcome else { panic!("{res:?}") };
            *expected.entry(bucket_label(ev, hour_of(&rc))).or_default() += micros(&ev.quantity);
        }
    }
    assert_eq!(agent.terminate().unwrap(), Some(0), "SIGTERM must exit 0");

    // Read the store directly: bucket totals are exactly the sum of distinct events.
    let store = meterd::store::Store::open(data.path()).unwrap();
    let mut actual: BTreeMap<String, u128> = BTreeMap::new();
    for (k, b) in store.buckets().unwrap() {
        let tags: BTreeMap<_, _> = k.tags.iter().collect();
        let label = format!("{}|{}|{}|{tags:?}", k.hour_ms, k.identity.label(), k.dimension);
        *actual.entry(label).or_default() += b.total.0;
    }
    assert_eq!(actual, expected);
    assert_eq!(store.counters().events_stored.load(std::sync::atomic::Ordering::Relaxed), all.len() as u64);
    store.close().await.unwrap();
    let generations: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(generations.len(), 1, "exactly one live store generation is left: {generations:?}");
}
