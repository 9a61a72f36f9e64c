//! A large hour sealed in many small chunks, with the agent SIGKILLed again and again in the middle of the seal.
//! Each time, the store left behind holds every customer x dimension pair either as one open bucket or as one
//! sealed record, never both and never neither; the restarted agent resumes the seal from its durable progress;
//! in the end every record is billed by the emulator exactly once, as acknowledged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meterd_proto::v1;
use meterd_tests::{Agent, EmulatorProcess};
use rand::{Rng, SeedableRng};

const ACCOUNT: &str = "111122223333";
const DIMENSIONS: [&str; 2] = ["api_calls", "gb_hours"];

fn arn(c: usize) -> String {
    format!("arn:aws:license-manager::{ACCOUNT}:license:l-seal-{c:06}")
}

fn emulator_toml(customers: usize) -> String {
    let mut s = "seed = 7\nrate_limit_per_sec = 10.0\nstrict_wire = true\n[[products]]\nproduct_code = \"sealprod\"\n\
        dimensions = [\"api_calls\", \"gb_hours\"]\n"
        .to_string();
    for c in 0..customers {
        s.push_str(&format!(
            "[[customers]]\nproduct_code = \"sealprod\"\naws_account_id = \"{ACCOUNT}\"\nlicense_arn = \"{}\"\n",
            arn(c)
        ));
    }
    s
}

fn agent_toml(data: &std::path::Path, endpoint: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
# Small chunks: the hour is sealed in hundreds of atomic writes, so the kills land between and inside them.
seal_chunk = 20
[pipeline]
seal_grace = "4h"
tick = "20ms"
[accounts.emu]
region = "us-east-1"
endpoint_url = "{endpoint}"
test_credentials = true
calls_per_second = 10
[products.app]
identity = "license"
product_code = "sealprod"
dimensions = ["api_calls", "gb_hours"]
"#,
        data.display()
    )
}

/// Opens the killed agent's store directly: how many pairs are open buckets and how many are sealed records.
async fn left_behind(data: &std::path::Path) -> (usize, usize) {
    let store = meterd::store::Store::open(data).unwrap();
    let open = store.buckets().unwrap().len();
    let records = store.records().unwrap();
    let mut seen = std::collections::HashSet::new();
    assert!(records.iter().all(|r| seen.insert(r.key.clone())), "a pair sealed twice");
    let sealed_pairs: std::collections::HashSet<_> =
        records.iter().map(|r| (r.key.identity.clone(), r.key.dimension.clone())).collect();
    for (k, _) in store.buckets().unwrap() {
        assert!(!sealed_pairs.contains(&(k.identity, k.dimension)), "a pair both open and sealed");
    }
    store.close().await.unwrap();
    (open, records.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_chunked_seal_seals_every_bucket_exactly_once() {
    let seed: u64 = std::env::var("METERD_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1919);
    // 10,000 pairs drain in ~40 s at the quota; METERD_SEAL_CRASH_PAIRS raises it.
    let pairs: usize = std::env::var("METERD_SEAL_CRASH_PAIRS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let customers = pairs.div_ceil(DIMENSIONS.len());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    eprintln!("seal crash test seed={seed} pairs={}", customers * DIMENSIONS.len());
    let emulator = EmulatorProcess::start(&emulator_toml(customers)).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&agent_toml(data.path(), &emulator.url)).unwrap();

    // One past hour, inside AWS's window, kept open by the long grace.
    let hour = meterd::clock::system_now_ms() / 1000 / 3600 * 3600 - 2 * 3600;
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut events = Vec::new();
    for c in 0..customers {
        for dim in DIMENSIONS {
            let q: u64 = rng.random_range(1..1000);
            events.push(v1::UsageEvent {
                idempotency_key: format!("{c}-{dim}"),
                customer: Some(v1::Customer {
                    identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                        customer_aws_account_id: ACCOUNT.into(),
                        license_arn: arn(c),
                    })),
                }),
                dimension: dim.into(),
                quantity: q.to_string(),
                timestamp: Some(meterd_proto::Timestamp { seconds: hour + 60, nanos: 0 }),
                tags: Default::default(),
                product: String::new(),
            });
            expected.insert((arn(c), dim.to_string()), q);
        }
    }
    let total = events.len();
    let client = agent.client().await.unwrap();
    for batch in events.chunks(1000) {
        let r = client
            .metering()
            .record_usage_batch(v1::RecordUsageBatchRequest { events: batch.to_vec() })
            .await
            .unwrap()
            .into_inner();
        assert!(r.results.iter().all(|r| matches!(r.outcome, Some(v1::event_result::Outcome::Receipt(_)))));
    }

    // `meterd flush` starts the seal; the kills cut it short, and each restarted agent's sealer resumes it.
    let flushing = tokio::spawn(async move { client.admin().flush(v1::FlushRequest {}).await });
    // Kills that cut a running seal short: it had sealed more than at the previous kill, and not everything.
    let mut mid_seal = 0;
    let mut kills = 0;
    let mut last_sealed = 0;
    let mut delay_ms = 40u64;
    let mut running = true;
    while kills < 12 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(delay_ms / 2..=delay_ms))).await;
        agent.kill9();
        kills += 1;
        let (open, sealed) = left_behind(data.path()).await;
        assert_eq!(open + sealed, total, "after kill {kills}: every pair is one open bucket or one record");
        eprintln!("kill {kills} after up to {delay_ms} ms: {sealed} sealed, {open} open");
        if open == 0 {
            running = false;
            break;
        }
        if sealed > last_sealed {
            mid_seal += 1;
        } else {
            // Killed before the (resumed) seal wrote a chunk: give the next run longer.
            delay_ms = (delay_ms * 2).min(5_000);
        }
        last_sealed = sealed;
        agent = agent.restart().unwrap();
    }
    let _ = flushing.await;
    assert!(mid_seal > 0, "no kill fell in the middle of the seal: the test proved nothing");
    if !running {
        agent = agent.restart().unwrap();
    }

    // Drain at the quota; the report must reconcile with nothing open and nothing pending.
    let deadline = Instant::now() + Duration::from_secs(60 + total as u64 / 100);
    let client = agent.client().await.unwrap();
    loop {
        assert!(Instant::now() < deadline, "did not drain");
        let s = client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
        if s.pending_records == 0 && s.open_buckets == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = client.admin().report(v1::ReportRequest {}).await.unwrap().into_inner();
    assert!(report.totals.as_ref().is_some_and(|t| t.reconciled && t.pending == "0"), "{:?}", report.totals);
    let totals = emulator.inspect("/_emulator/totals").unwrap();
    let mut billed: BTreeMap<(String, String), u64> = BTreeMap::new();
    for t in totals.as_array().unwrap() {
        let key = (t["license_arn"].as_str().unwrap().to_string(), t["dimension"].as_str().unwrap().to_string());
        *billed.entry(key).or_default() += t["quantity"].as_str().unwrap().parse::<u64>().unwrap();
    }
    assert!(billed == expected, "billed totals differ from acknowledged totals");
    let counters = emulator.inspect("/_emulator/counters").unwrap();
    assert_eq!(counters["duplicates"], 0, "{counters}");
    eprintln!("{kills} kills ({mid_seal} mid-seal), {total} records billed exactly once, counters {counters}");
    assert_eq!(agent.terminate().unwrap(), Some(0));
}
