//! Invariants 4 and 7 under crashes: SIGKILL the agent at random moments while it seals and submits to a
//! separate emulator process, restart it, repeat until drained. The emulator must have billed exactly the
//! acknowledged usage, with no DuplicateRecord, however the kills fell.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meterd_proto::v1;
use meterd_tests::{Agent, EmulatorProcess};
use rand::{Rng, SeedableRng};

const ACCOUNT: &str = "111122223333";
const CUSTOMERS: usize = 25;

fn arn(c: usize) -> String {
    format!("arn:aws:license-manager::{ACCOUNT}:license:l-crash-{c:03}")
}

fn emulator_toml(seed: u64) -> String {
    let mut s = format!(
        "seed = {seed}\nrate_limit_per_sec = 10.0\nstrict_wire = true\n[[products]]\nproduct_code = \"crashprod\"\ndimensions = [\"api_calls\", \"gb_hours\"]\n"
    );
    for c in 0..CUSTOMERS {
        s.push_str(&format!(
            "[[customers]]\nproduct_code = \"crashprod\"\naws_account_id = \"{ACCOUNT}\"\nlicense_arn = \"{}\"\n",
            arn(c)
        ));
    }
    // Slow answers and lost acknowledgements widen the window between "sent" and "recorded as accepted".
    s.push_str("[faults]\nlatency_ms = 40\nthrottle_probability = 0.1\ndrop_response_probability = 0.15\nunprocessed_probability = 0.1\n");
    s
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
[accounts.emu]
region = "us-east-1"
endpoint_url = "{endpoint}"
test_credentials = true
calls_per_second = 10
call_timeout = "2s"
[products.app]
identity = "license"
product_code = "crashprod"
dimensions = ["api_calls", "gb_hours"]
"#,
        data.display()
    )
}

/// The report's totals once everything is sealed and nothing is pending; None before (or if unreachable).
async fn drained(agent: &Agent) -> Option<v1::ReportTotals> {
    let client = agent.client().await.ok()?;
    let r = client.admin().report(v1::ReportRequest {}).await.ok()?.into_inner();
    let t = r.totals?;
    let sealed = r.rows.iter().any(|row| row.state != "open");
    let open = r.rows.iter().any(|row| row.state == "open");
    (t.pending == "0" && sealed && !open).then_some(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_seal_and_submit_never_loses_or_duplicates() {
    let seed: u64 = std::env::var("METERD_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(4242);
    let scenarios: u64 = std::env::var("METERD_CRASH_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    eprintln!("submit crash test seed={seed} scenarios={scenarios}");
    let mut total_kills = 0;
    for scenario in 0..scenarios {
        let emulator = EmulatorProcess::start(&emulator_toml(seed + scenario)).unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut agent = Agent::start(&agent_toml(data.path(), &emulator.url)).unwrap();

        // Usage for three past hours, inside AWS's window.
        let now_s = meterd::clock::system_now_ms() / 1000;
        let hour0 = now_s / 3600 * 3600 - 3 * 3600;
        let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut events = Vec::new();
        for c in 0..CUSTOMERS {
            for dim in ["api_calls", "gb_hours"] {
                for h in 0..3 {
                    let q: u64 = rng.random_range(1..1000);
                    events.push(v1::UsageEvent {
                        idempotency_key: format!("s{scenario}-{c}-{dim}-{h}"),
                        customer: Some(v1::Customer {
                            identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                                customer_aws_account_id: ACCOUNT.into(),
                                license_arn: arn(c),
                            })),
                        }),
                        dimension: dim.into(),
                        quantity: q.to_string(),
                        timestamp: Some(meterd_proto::Timestamp { seconds: hour0 + h * 3600 + 60, nanos: 0 }),
                        tags: Default::default(),
                        product: String::new(),
                    });
                    *expected.entry((arn(c), dim.to_string())).or_default() += q;
                }
            }
        }
        let client = agent.client().await.unwrap();
        let r = client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events }).await.unwrap();
        assert!(
            r.into_inner().results.iter().all(|r| matches!(r.outcome, Some(v1::event_result::Outcome::Receipt(_))))
        );
        // The long grace kept these past hours open; seal them all now (`meterd flush`).
        let f = client.admin().flush(v1::FlushRequest {}).await.unwrap().into_inner();
        assert_eq!(f.records_sealed, (2 * CUSTOMERS * 3) as u64);

        // Kill at random moments until a run drains the outbox.
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut kills = 0;
        loop {
            assert!(Instant::now() < deadline, "scenario {scenario} did not drain");
            let wait = Duration::from_millis(rng.random_range(20..500));
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

        let totals = emulator.inspect("/_emulator/totals").unwrap();
        let mut billed: BTreeMap<(String, String), u64> = BTreeMap::new();
        for t in totals.as_array().unwrap() {
            let key = (t["license_arn"].as_str().unwrap().to_string(), t["dimension"].as_str().unwrap().to_string());
            *billed.entry(key).or_default() += t["quantity"].as_str().unwrap().parse::<u64>().unwrap();
        }
        assert_eq!(billed, expected, "scenario {scenario}: billed totals differ from acknowledged totals");
        let counters = emulator.inspect("/_emulator/counters").unwrap();
        assert_eq!(counters["duplicates"], 0, "scenario {scenario}: {counters}");
        eprintln!(
            "scenario {scenario}: {kills} kills, {} records billed exactly once, counters {counters}",
            2 * CUSTOMERS * 3
        );
        assert_eq!(agent.terminate().unwrap(), Some(0));
    }
    assert!(total_kills > 0, "no kill happened: the test proved nothing");
}
