//! Invariant 1 (ack means durable) and 2 (exactly once per event) against the real binary:
//! acknowledge events under concurrent load, SIGKILL the agent at a random moment, restart, and check that
//! every acknowledged event is still there and that every bucket total is exact after clients retry. The
//! second test does the same while an operator repacks the store over and over, so kills land mid-copy,
//! mid-switch and mid-cleanup.

use std::collections::BTreeMap;
use std::time::Duration;

use meterd_proto::v1;
use meterd_tests::crash::{Acked, Attempted, Load, assert_all_acknowledged_present, load, random_event, retry_all};
use meterd_tests::{Agent, basic_config};
use rand::{Rng, SeedableRng};

/// Repacks back to back until the agent dies; returns how many finished.
async fn repack_until_killed(agent_target: String) -> u64 {
    meterd_tests::crash::until_killed(
        agent_target,
        |c| async move { c.admin().repack(v1::RepackRequest {}).await.is_ok() },
    )
    .await
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
            let events: Vec<_> = (0..1000).map(|i| random_event(&mut prng, format!("preload-{b}-{i}"), None)).collect();
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
        let load =
            tokio::spawn(load(agent.target(), acked.clone(), attempted.clone(), iteration, seed, Load::default()));
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
        assert_all_acknowledged_present(&client, &acked, &format!("iteration {iteration}")).await;
        let snapshot = acked.lock().unwrap().clone();
        eprintln!(
            "iteration {iteration}: {} acknowledged, {} attempted, all intact",
            snapshot.len(),
            attempted.lock().unwrap().len()
        );
    }

    // Clients retry what was never acknowledged; afterwards every attempted event is stored exactly once.
    let client = agent.client().await.unwrap();
    let (expected, _, attempted_n) = retry_all(&client, &attempted).await;
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
    assert_eq!(store.counters().events_stored.load(std::sync::atomic::Ordering::Relaxed), attempted_n as u64);
    store.close().await.unwrap();
    let generations: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("sled"))
        .collect();
    assert_eq!(generations.len(), 1, "exactly one live store generation is left: {generations:?}");
}
