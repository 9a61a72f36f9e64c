//! `identity = "deployment"` under crashes: SIGKILL the agent at random moments while it sends MeterUsage calls
//! to a separate emulator process (slow answers, lost answers, throttling), restart it, repeat until drained.
//! Every resend of a record must be byte-identical (same ClientToken, same body), answered idempotently, and
//! every dimension × hour billed exactly once with exactly the acknowledged usage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meterd_proto::v1;
use meterd_tests::{Agent, EmulatorProcess};
use rand::{Rng, SeedableRng};

const DIMS: [&str; 4] = ["vcpu_hours", "gb_stored", "requests", "users"];

fn emulator_toml(seed: u64) -> String {
    format!(
        "seed = {seed}\nrate_limit_per_sec = 10.0\n[[products]]\nproduct_code = \"amicrash\"\ndimensions = {DIMS:?}\n\
         [faults]\nlatency_ms = 60\nthrottle_probability = 0.1\ndrop_response_probability = 0.3\n"
    )
}

fn agent_toml(data: &std::path::Path, endpoint: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
[pipeline]
seal_grace = "4h"
tick = "20ms"
[accounts.instance]
region = "us-east-1"
endpoint_url = "{endpoint}"
test_credentials = true
calls_per_second = 10
call_timeout = "2s"
[products.ami]
identity = "deployment"
product_code = "amicrash"
dimensions = {DIMS:?}
"#,
        data.display()
    )
}

async fn drained(agent: &Agent) -> Option<v1::ReportTotals> {
    let client = agent.client().await.ok()?;
    let r = client.admin().report(v1::ReportRequest {}).await.ok()?.into_inner();
    let t = r.totals?;
    let sealed = r.rows.iter().any(|row| row.state != "open");
    let open = r.rows.iter().any(|row| row.state == "open");
    (t.pending == "0" && sealed && !open).then_some(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_meter_usage_resends_identical_calls_billed_once() {
    let seed: u64 = std::env::var("METERD_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1414);
    let scenarios: u64 = std::env::var("METERD_CRASH_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    eprintln!("deployment crash test seed={seed} scenarios={scenarios}");
    let (mut total_kills, mut total_resends) = (0, 0);
    for scenario in 0..scenarios {
        let emulator = EmulatorProcess::start(&emulator_toml(seed + scenario)).unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut agent = Agent::start(&agent_toml(data.path(), &emulator.url)).unwrap();

        // Three past hours, well inside MeterUsage's 6 h window (deadline: hour + 6 h − 30 min).
        let now_s = meterd::clock::system_now_ms() / 1000;
        let hour0 = now_s / 3600 * 3600 - 3 * 3600;
        let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
        let mut events = Vec::new();
        for dim in DIMS {
            for h in 0..3 {
                let q: u64 = rng.random_range(1..1000);
                events.push(v1::UsageEvent {
                    idempotency_key: format!("s{scenario}-{dim}-{h}"),
                    customer: None,
                    dimension: dim.into(),
                    quantity: q.to_string(),
                    timestamp: Some(meterd_proto::Timestamp { seconds: hour0 + h * 3600 + 60, nanos: 0 }),
                    tags: Default::default(),
                    product: String::new(),
                });
                expected.insert((dim.to_string(), hour0 + h * 3600), q);
            }
        }
        let client = agent.client().await.unwrap();
        let r = client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events }).await.unwrap();
        assert!(
            r.into_inner().results.iter().all(|r| matches!(r.outcome, Some(v1::event_result::Outcome::Receipt(_))))
        );
        let f = client.admin().flush(v1::FlushRequest {}).await.unwrap().into_inner();
        assert_eq!(f.records_sealed, (DIMS.len() * 3) as u64);

        let deadline = Instant::now() + Duration::from_secs(240);
        let mut kills = 0;
        loop {
            assert!(Instant::now() < deadline, "scenario {scenario} did not drain");
            let wait = Duration::from_millis(rng.random_range(20..400));
            let started = Instant::now();
            let mut done = false;
            while started.elapsed() < wait {
                if let Some(t) = drained(&agent).await {
                    assert!(t.reconciled, "{t:?}");
                    done = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            if done {
                break;
            }
            agent.kill9();
            kills += 1;
            agent = agent.restart().unwrap();
        }
        total_kills += kills;

        // Billed exactly once per dimension × hour, exactly what was acknowledged.
        let ledger = emulator.inspect("/_emulator/ledger").unwrap();
        let mut billed: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for e in ledger.as_array().unwrap() {
            assert_eq!(e["operation"], "MeterUsage");
            let key = (e["dimension"].as_str().unwrap().to_string(), e["hour_start"].as_i64().unwrap());
            let q = e["quantity"].as_str().unwrap().parse::<u64>().unwrap();
            assert!(billed.insert(key.clone(), q).is_none(), "scenario {scenario}: {key:?} billed twice");
        }
        assert_eq!(billed, expected, "scenario {scenario}: billed differs from acknowledged");
        let counters = emulator.inspect("/_emulator/counters").unwrap();
        assert_eq!(counters["duplicates"], 0, "scenario {scenario}: {counters}");

        // Every send of one record is the same request body, byte for byte (ClientToken included).
        let requests = emulator.inspect("/_emulator/requests").unwrap();
        let mut bodies: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
        for r in requests.as_array().unwrap().iter().filter(|r| r["operation"] == "MeterUsage") {
            let body = r["body"].as_str().unwrap().to_string();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["DryRun"] == true {
                continue;
            }
            let key = (v["UsageDimension"].as_str().unwrap().to_string(), v["Timestamp"].as_i64().unwrap());
            bodies.entry(key).or_default().push(body);
        }
        for (key, sent) in &bodies {
            assert!(sent.iter().all(|b| b == &sent[0]), "scenario {scenario}: {key:?} resent differently: {sent:#?}");
            total_resends += sent.len() - 1;
        }
        eprintln!(
            "scenario {scenario}: {kills} kills, {} records billed once, {} resends, counters {counters}",
            billed.len(),
            bodies.values().map(|b| b.len() - 1).sum::<usize>()
        );
        assert_eq!(agent.terminate().unwrap(), Some(0));
    }
    assert!(total_kills > 0, "no kill happened: the test proved nothing");
    assert!(total_resends > 0, "no record was resent: the test proved nothing");
}
