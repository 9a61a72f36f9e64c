//! Fleet mode end to end: 3 real `meterd` agents sharing one ledger in a real PostgreSQL, submitting to a
//! separate emulator process. Events are sprayed across the agents, retries of a key land on another agent,
//! agents are SIGKILLed again and again (the submitting one included), PostgreSQL restarts once mid-ingest. At the
//! end the emulator has billed exactly what was acknowledged, per customer × dimension × hour, with no
//! DuplicateRecord.
//!
//! Two phases, so that every hour is sealed only after every acknowledged event reached the shared ledger (what
//! this test checks is exactly-once, not the late-usage rule): the agents first run with a long `seal_grace`
//! (nothing seals) while events are sprayed; once the shared ledger holds every key, they are restarted with a
//! short grace and the elected agent seals and submits while it and the others keep being killed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meterd::domain::quantity::Micros;
use meterd_fleet::test_postgres::TestPostgres;
use meterd_proto::v1;
use meterd_tests::{Agent, EmulatorProcess};
use rand::{Rng, SeedableRng};

const ACCOUNT: &str = "111122223333";
const CUSTOMERS: usize = 20;
const AGENTS: usize = 3;
const DIMENSIONS: [&str; 2] = ["api_calls", "gb_hours"];

fn arn(c: usize) -> String {
    format!("arn:aws:license-manager::{ACCOUNT}:license:l-fleet-{c:03}")
}

fn emulator_toml(seed: u64) -> String {
    let mut s = format!(
        "seed = {seed}\nrate_limit_per_sec = 10.0\nstrict_wire = true\n[[products]]\nproduct_code = \"fleetprod\"\ndimensions = [\"api_calls\", \"gb_hours\"]\n"
    );
    for c in 0..CUSTOMERS {
        s.push_str(&format!(
            "[[customers]]\nproduct_code = \"fleetprod\"\naws_account_id = \"{ACCOUNT}\"\nlicense_arn = \"{}\"\n",
            arn(c)
        ));
    }
    // Lost acknowledgements leave records InFlight: a takeover must resend them byte-identical.
    s.push_str("[faults]\nlatency_ms = 300\ndrop_response_probability = 0.2\nunprocessed_probability = 0.1\n");
    s
}

fn agent_toml(data: &std::path::Path, endpoint: &str, db: &str, node: usize, seal_grace: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[storage]
data_dir = "{data}"
[pipeline]
seal_grace = "{seal_grace}"
tick = "100ms"
[accounts.emu]
region = "us-east-1"
endpoint_url = "{endpoint}"
test_credentials = true
calls_per_second = 2
call_timeout = "2s"
[products.app]
identity = "license"
product_code = "fleetprod"
dimensions = ["api_calls", "gb_hours"]
[fleet]
database_url = "{db}"
node_id = "node-{node}"
forward_interval = "100ms"
forward_batch = 50
down_after = "10s"
max_wait = "12h"
"#,
        data = data.display()
    )
}

fn event(key: &str, c: usize, dim: &str, q: u64, at_s: i64) -> v1::UsageEvent {
    v1::UsageEvent {
        idempotency_key: key.into(),
        customer: Some(v1::Customer {
            identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                customer_aws_account_id: ACCOUNT.into(),
                license_arn: arn(c),
            })),
        }),
        dimension: dim.into(),
        quantity: q.to_string(),
        timestamp: Some(meterd_proto::Timestamp { seconds: at_s, nanos: 0 }),
        tags: Default::default(),
        product: String::new(),
    }
}

/// Sends `events` to agent `first`, and on any failure (the agent was killed, PostgreSQL is irrelevant here:
/// ack = "local") to the next agent, as an SDK retries with the same keys. Returns once acknowledged.
async fn send(agents: &[Option<Agent>], first: usize, events: &[v1::UsageEvent]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = first;
    loop {
        assert!(Instant::now() < deadline, "no agent acknowledged a batch within 60 s");
        if let Some(a) = &agents[i % AGENTS]
            && let Ok(client) = a.client().await
            && let Ok(r) =
                client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events: events.to_vec() }).await
        {
            let r = r.into_inner();
            assert!(
                r.results.iter().all(|r| matches!(r.outcome, Some(v1::event_result::Outcome::Receipt(_)))),
                "{r:?}"
            );
            return;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Billed quantity per (license, dimension, hour start in seconds), from the emulator's ledger.
fn billed(emulator: &EmulatorProcess) -> BTreeMap<(String, String, i64), u64> {
    let mut out = BTreeMap::new();
    for e in emulator.inspect("/_emulator/ledger").unwrap().as_array().unwrap() {
        let key = (
            e["license_arn"].as_str().unwrap().to_string(),
            e["dimension"].as_str().unwrap().to_string(),
            e["hour_start"].as_i64().unwrap(),
        );
        *out.entry(key).or_default() += e["quantity"].as_str().unwrap().parse::<u64>().unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_one_ledger_bill_exactly_once_through_kills_and_a_database_restart() {
    let seed: u64 = std::env::var("METERD_FLEET_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1313);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    eprintln!("fleet e2e seed={seed}");
    let started = Instant::now();
    let mut pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let emulator = EmulatorProcess::start(&emulator_toml(seed)).unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..AGENTS).map(|_| tempfile::tempdir().unwrap()).collect();
    let db_url = pg.url();
    let configs = |grace: &str| -> Vec<String> {
        (0..AGENTS).map(|n| agent_toml(dirs[n].path(), &emulator.url, &db_url, n, grace)).collect()
    };
    let mut agents: Vec<Option<Agent>> =
        configs("4h").iter().map(|c| Some(Agent::start(c).expect("agent starts"))).collect();

    // Phase 1: spray three past hours of usage over the agents, retry some batches on another agent, kill
    // agents between batches, restart PostgreSQL once.
    let hour0 = meterd::clock::system_now_ms() / 1000 / 3600 * 3600 - 3 * 3600;
    let mut expected: BTreeMap<(String, String, i64), u64> = BTreeMap::new();
    let mut keys = 0u64;
    let rounds = 24;
    let mut kills = 0;
    for round in 0..rounds {
        let mut events = Vec::new();
        for i in 0..20 {
            let c = rng.random_range(0..CUSTOMERS);
            let dim = DIMENSIONS[rng.random_range(0..2)];
            let h = rng.random_range(0..3i64);
            let q: u64 = rng.random_range(1..500);
            events.push(event(&format!("r{round}-{i}"), c, dim, q, hour0 + h * 3600 + 60 + i as i64));
            *expected.entry((arn(c), dim.to_string(), hour0 + h * 3600)).or_default() += q;
            keys += 1;
        }
        let first = rng.random_range(0..AGENTS);
        send(&agents, first, &events).await;
        if round % 3 == 0 {
            // The client did not see the answer: it retries the same keys on another agent.
            send(&agents, first + 1, &events).await;
        }
        if round == rounds / 2 {
            // A crash-like stop: the agents keep acknowledging into their spools while the database is away.
            pg.stop(false).expect("PostgreSQL stops");
        } else if round == rounds / 2 + 3 {
            pg.start_again().expect("PostgreSQL starts again");
        } else if round % 4 == 1 && !(rounds / 2..rounds / 2 + 3).contains(&round) {
            // (Not while the database is down: a starting agent waits for it before it serves.)
            let victim = rng.random_range(0..AGENTS);
            let mut a = agents[victim].take().unwrap();
            a.kill9();
            kills += 1;
            agents[victim] = Some(a.restart().expect("a killed agent restarts"));
        }
    }

    // Every acknowledged key reaches the shared ledger (the spools drain; forwards after the restart replay).
    let mut db = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stored = meterd_fleet::views::event_keys(&db).await.unwrap();
        if stored as u64 == keys {
            break;
        }
        assert!(Instant::now() < deadline, "the shared ledger holds {stored} of {keys} keys after 90 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(meterd_fleet::views::conflicts(&db).await.unwrap().is_empty(), "a retry was taken for a conflict");

    // Phase 2: the agents restart with a short grace; the elected one seals and submits. Kill the submitting
    // agent (and others) until the emulator has billed everything.
    let phase2 = configs("1s");
    for (slot, config) in agents.iter_mut().zip(&phase2) {
        let mut a = slot.take().unwrap();
        a.kill9();
        std::fs::write(&a.config_path, config).unwrap();
        *slot = Some(a.restart().unwrap());
    }
    // Two leaders at once: pause the submitting agent (SIGSTOP) past its lease, let another take over, resume it.
    // It wakes believing it leads; its writes are fenced by the lease epoch, and whatever it still sends is a
    // sealed, frozen record that AWS answers idempotently.
    let paused = Instant::now() + Duration::from_secs(60);
    let (first, first_epoch) = loop {
        assert!(Instant::now() < paused, "no agent took the submitter lease within 60 s");
        if let Some((_, h, e, _)) = meterd_fleet::lease::holders(&db).await.unwrap_or_default().first() {
            break (h.clone(), *e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let n: usize = first.trim_start_matches("node-").parse().unwrap();
    let pid = agents[n].as_ref().unwrap().pid() as i32;
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    loop {
        assert!(Instant::now() < paused, "nobody took over from the paused submitter within 60 s");
        let holders = meterd_fleet::lease::holders(&db).await.unwrap_or_default();
        if holders.first().is_some_and(|(_, h, e, _)| *h != first && *e > first_epoch) {
            eprintln!("{first} paused (epoch {first_epoch}); {} took over (epoch {})", holders[0].1, holders[0].2);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut leader_kills = 0;
    let mut killed_epoch = first_epoch;
    loop {
        if billed(&emulator) == expected {
            break;
        }
        assert!(Instant::now() < deadline, "not billed within 120 s: {:?}", billed(&emulator).len());
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        if leader_kills < 3 {
            // Only a live lease's holder, once per epoch: the agent submitting right now.
            let holders = meterd_fleet::lease::holders(&db).await.unwrap_or_default();
            if let Some((_, holder, epoch, left_ms)) = holders.first()
                && *left_ms > 0
                && *epoch > killed_epoch
            {
                killed_epoch = *epoch;
                let n: usize = holder.trim_start_matches("node-").parse().unwrap();
                eprintln!("killing the submitting agent {holder} (epoch {epoch})");
                let mut a = agents[n].take().unwrap();
                a.kill9();
                leader_kills += 1;
                kills += 1;
                agents[n] = Some(a.restart().unwrap());
            }
        }
        if db.is_closed() {
            db = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
        }
    }
    assert_eq!(billed(&emulator), expected, "billed differs from acknowledged per customer × dimension × hour");
    let counters = emulator.inspect("/_emulator/counters").unwrap();
    assert_eq!(counters["duplicates"], 0, "{counters}");
    // Every resend after a takeover was the same record, byte for byte (AWS's idempotent replay).
    assert_eq!(counters["replayed_with_other_allocations"], 0, "{counters}");
    assert!(leader_kills > 0, "the submitting agent was never killed: the test proved less than it says");
    eprintln!(
        "fleet e2e: {keys} keys, {} billed series, {kills} kills ({leader_kills} of the submitter), 1 PostgreSQL \
         restart, {:.0?}, counters {counters}",
        expected.len(),
        started.elapsed()
    );
    for a in agents.iter_mut().flatten() {
        assert_eq!(a.terminate().unwrap(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_is_one_live_agent_and_a_crashed_agent_takes_its_own_back_at_once() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let emulator = EmulatorProcess::start(&emulator_toml(7)).unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Agent::start(&agent_toml(a_dir.path(), &emulator.url, &pg.url(), 0, "4h")).unwrap();
    // Another data dir claiming the same node id while `a` heartbeats: refused (two spools, one watermark).
    let refused = Agent::start(&agent_toml(b_dir.path(), &emulator.url, &pg.url(), 0, "4h"));
    assert!(refused.is_err(), "a second agent with a live node id started");
    // SIGKILLed, `a` restarts at once on its own data dir, well within `down_after`: the id is its own.
    a.kill9();
    let mut a = a.restart().expect("a crash-restarted agent takes its own node id back");
    let client = a.client().await.unwrap();
    let hour = meterd::clock::system_now_ms() / 1000 / 3600 * 3600 - 3600;
    let r = client
        .metering()
        .record_usage_batch(v1::RecordUsageBatchRequest { events: vec![event("k", 0, "api_calls", 3, hour)] })
        .await
        .unwrap();
    assert!(matches!(r.into_inner().results[0].outcome, Some(v1::event_result::Outcome::Receipt(_))));
    assert_eq!(a.terminate().unwrap(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_forwards_its_spool_before_it_exits() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let emulator = EmulatorProcess::start(&emulator_toml(9)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A forward interval so long that only the drain at stop can ship the event in time.
    let config = agent_toml(dir.path(), &emulator.url, &pg.url(), 0, "4h")
        .replace("forward_interval = \"100ms\"", "forward_interval = \"60s\"")
        .replace("down_after = \"10s\"", "down_after = \"5m\"");
    let mut a = Agent::start(&config).unwrap();
    let db = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    // The forwarder's first pass (an empty outbox) has registered the node's watermark: wait for it, so the
    // event below is left for the next pass, a minute away.
    let deadline = Instant::now() + Duration::from_secs(30);
    while meterd_fleet::views::watermarks(&db).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the forwarder never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hour = meterd::clock::system_now_ms() / 1000 / 3600 * 3600 - 3600;
    let client = a.client().await.unwrap();
    let events = (0..5).map(|i| event(&format!("drain-{i}"), 0, "api_calls", 1, hour)).collect();
    client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events }).await.unwrap();
    assert_eq!(meterd_fleet::views::event_keys(&db).await.unwrap(), 0, "forwarded before the stop");
    // The fleet view shows the spool waiting, this node in the registry, and who submits for the account.
    let admin: std::net::SocketAddr = a.admin.as_ref().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let (code, body) = meterd_tests::stack::http_get(admin, "/fleet").await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        // The lease is taken at the account's first campaign: wait for it rather than for a time.
        if v["submitters"].as_array().is_some_and(|s| !s.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "no submitter in the fleet view: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((view["node_id"].as_str(), view["spool_events"].as_u64()), (Some("node-0"), Some(5)), "{view}");
    assert_eq!(view["nodes"][0]["node_id"], "node-0", "{view}");
    assert!(view["nodes"][0]["forward_lag_ms"].as_i64().is_some(), "{view}");
    assert_eq!(
        (view["submitters"][0]["account"].as_str(), view["submitters"][0]["node_id"].as_str()),
        (Some("emu"), Some("node-0"))
    );
    assert_eq!((view["event_keys"].as_i64(), view["conflicts"].as_u64()), (Some(0), Some(0)), "{view}");
    assert_eq!(a.terminate().unwrap(), Some(0));
    assert_eq!(meterd_fleet::views::event_keys(&db).await.unwrap(), 5, "the spool was not forwarded at stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_shared_answers_after_the_commit_and_unavailable_while_the_database_is_down() {
    let mut pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let emulator = EmulatorProcess::start(&emulator_toml(11)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The background forwarder is a minute away: only the shared acknowledgement can put events in PostgreSQL.
    let config = agent_toml(dir.path(), &emulator.url, &pg.url(), 0, "4h")
        .replace("forward_interval = \"100ms\"", "forward_interval = \"60s\"\nack = \"shared\"")
        .replace("down_after = \"10s\"", "down_after = \"5m\"");
    let mut a = Agent::start(&config).unwrap();
    let hour = meterd::clock::system_now_ms() / 1000 / 3600 * 3600 - 3600;
    let batch = |keys: &[&str]| v1::RecordUsageBatchRequest {
        events: keys.iter().map(|k| event(k, 0, "api_calls", 2, hour)).collect(),
    };
    let client = a.client().await.unwrap();
    client.metering().record_usage_batch(batch(&["s1", "s2", "s3"])).await.unwrap();
    let url = pg.url();
    let count = || async { meterd_fleet::views::event_keys(&meterd_fleet::connect_plain(&url).await.unwrap()).await };
    assert_eq!(count().await.unwrap(), 3, "answered before the shared ledger had the events");

    pg.stop(false).unwrap();
    let refused = client.metering().record_usage_batch(batch(&["s4"])).await.expect_err("answered without PostgreSQL");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // The fleet views say the database is away rather than show the spool as if it were the fleet.
    let status = client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    let fleet = status.fleet.expect("the fleet part, with this agent's own figures");
    assert!(fleet.database_error.starts_with("fleet database"), "{fleet:?}");
    assert_eq!((fleet.node_id.as_str(), status.pending_records), ("node-0", 0));
    let report = client.admin().report(v1::ReportRequest {}).await.expect_err("a report without the ledger");
    assert_eq!(report.code(), tonic::Code::Unavailable, "{report:?}");
    pg.start_again().unwrap();
    // The SDK's retry with the same key: replayed locally, committed in the shared ledger, answered.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.metering().record_usage_batch(batch(&["s4"])).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no answer after the database came back: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count().await.unwrap(), 4);
    assert_eq!(a.terminate().unwrap(), Some(0));
}

fn tenant_event(key: &str, tenant: &str, q: u64, at_s: i64) -> v1::UsageEvent {
    v1::UsageEvent {
        customer: Some(v1::Customer { identity: Some(v1::customer::Identity::TenantId(tenant.into())) }),
        ..event(key, 0, "api_calls", q, at_s)
    }
}

/// A License Deprovisioned event (EventBridge) without an agreement id: nothing to confirm with AWS.
fn deprovisioned(license_arn: &str, id: &str) -> String {
    serde_json::json!({
        "version": "0", "id": id, "detail-type": "License Deprovisioned - Manufacturer",
        "source": "aws.agreement-marketplace", "account": "999988887777", "time": "2026-11-22T10:30:00Z",
        "region": "us-east-1", "resources": [],
        "detail": {
            "license": {"arn": license_arn},
            "product": {"id": "prod-x", "code": "fleetprod"},
            "acceptor": {"accountId": ACCOUNT}
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_and_a_lifecycle_event_posted_to_one_agent_apply_where_the_fleet_submits() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let emulator = EmulatorProcess::start(&format!(
        "seed = 5\nrate_limit_per_sec = 10.0\nstrict_wire = true\n[[products]]\nproduct_code = \"fleetprod\"\n\
         dimensions = [\"api_calls\", \"gb_hours\"]\n[[customers]]\nproduct_code = \"fleetprod\"\n\
         aws_account_id = \"{ACCOUNT}\"\nlicense_arn = \"{}\"\n",
        arn(0)
    ))
    .unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret = b_dir.path().join("events.secret");
    std::fs::write(&secret, "s3cret-for-the-api-destination\n").unwrap();
    let marketplace = format!(
        "[marketplace]\nlisten = \"127.0.0.1:0\"\nredirect_url = \"https://app.example.com/welcome\"\n\
         events_secret_file = {:?}\n",
        secret.display().to_string()
    );
    // A grace of two hours: the ordinary seal cannot seal the current hour during this test, so whatever is
    // billed of it was sealed by the leaving-customer rule.
    let config = |dir: &std::path::Path, node| {
        agent_toml(dir, &emulator.url, &pg.url(), node, "2h").replace("[fleet]", &format!("{marketplace}[fleet]"))
    };
    let db = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    // B starts first and takes the submitter lease; A never submits while B lives.
    let mut b = Agent::start(&config(b_dir.path(), 0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while meterd_fleet::lease::holders(&db).await.unwrap_or_default().first().is_none_or(|h| h.1 != "node-0") {
        assert!(Instant::now() < deadline, "node-0 never took the submitter lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut a = Agent::start(&config(a_dir.path(), 1)).unwrap();
    let (a_client, b_client) = (a.client().await.unwrap(), b.client().await.unwrap());
    let now_s = meterd::clock::system_now_ms() / 1000;
    let record = |client: &meterd_proto::client::Client, ev: v1::UsageEvent| {
        let client = client.clone();
        async move { client.metering().record_usage(v1::RecordUsageRequest { event: Some(ev) }).await }
    };
    let identity_usage = || async {
        let mut units = Micros::ZERO;
        for (k, bucket) in meterd_fleet::views::buckets(&db).await.unwrap() {
            if k.identity.label().contains(&arn(0)) {
                units = units.try_add(bucket.total).unwrap();
            }
        }
        units
    };

    // Usage of an unmapped tenant, acknowledged by B: held under the tenant in the shared ledger.
    record(&b_client, tenant_event("t-1", "acme", 2, now_s)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while meterd_fleet::views::event_keys(&db).await.unwrap() < 1 {
        assert!(Instant::now() < deadline, "t-1 never forwarded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(identity_usage().await, Micros::ZERO);
    // The tenant is mapped through A: the held usage moves to the identity fleet-wide, and B's later usage of
    // the tenant is counted under it.
    let put = v1::PutCustomerRequest {
        tenant_id: "acme".into(),
        product: String::new(),
        identity: Some(v1::put_customer_request::Identity::AwsAccount(v1::AwsCustomer {
            customer_aws_account_id: ACCOUNT.into(),
            license_arn: arn(0),
        })),
        agreement_id: String::new(),
    };
    let info = a_client.customers().put(put).await.unwrap().into_inner();
    assert_eq!(info.buckets_moved, 1, "{info:?}");
    assert_eq!(identity_usage().await, Micros::from_units(2));
    record(&b_client, tenant_event("t-2", "acme", 3, now_s)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while identity_usage().await != Micros::from_units(5) {
        assert!(Instant::now() < deadline, "t-2 not counted under the identity: {:?}", identity_usage().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B's copy of the registry has the mapping too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b_client.customers().get(v1::GetCustomerRequest { tenant_id: "acme".into() }).await.is_err() {
        assert!(Instant::now() < deadline, "B never learned A's mapping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The customer leaves: the event is posted to A's marketplace listener. B, the submitter, seals its final
    // hour at once and sends it, long before the hour's ordinary seal.
    let key = [("x-meterd-events-key", "s3cret-for-the-api-destination")];
    let a_http: std::net::SocketAddr = a.http.as_ref().unwrap().parse().unwrap();
    let ev = deprovisioned(&arn(0), "ev-leave");
    let (code, _, body) =
        meterd_tests::stack::http_post_with(a_http, "/internal/marketplace/events", "application/json", &key, &ev)
            .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["applied"].as_bool(), v["status"].as_str()), (Some(true), Some("deprovisioning")), "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let total = |billed: BTreeMap<(String, String, i64), u64>| billed.values().sum::<u64>();
    while total(billed(&emulator)) < 5 {
        assert!(Instant::now() < deadline, "the final hour was not billed: {:?}", billed(&emulator));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sealed = meterd_fleet::seal::records(&db, "app").await.unwrap();
    assert_eq!(sealed.len(), 1, "{sealed:?}");
    // The final reporting hour: due within the hour after the event, not the ordinary window.
    assert!(sealed[0].deadline_ms <= meterd::clock::system_now_ms() + 3_600_000, "{:?}", sealed[0]);

    // B's copy follows: usage of the customer sent to B is refused, as a standalone agent refuses it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    let refused = loop {
        // A new key each time: a key acknowledged before the copy caught up would only replay.
        attempt += 1;
        match record(&b_client, event(&format!("after-{attempt}"), 0, "api_calls", 1, now_s)).await {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "B still accepts usage of a customer that left"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("deprovisioning"), "{}", refused.message());
    let tenant = record(&b_client, tenant_event("after-t", "acme", 1, now_s)).await.unwrap_err();
    assert_eq!(tenant.code(), tonic::Code::FailedPrecondition, "{tenant:?}");
    // The same event delivered again, to B this time: nothing changes.
    let b_http: std::net::SocketAddr = b.http.as_ref().unwrap().parse().unwrap();
    let (code, _, body) =
        meterd_tests::stack::http_post_with(b_http, "/internal/marketplace/events", "application/json", &key, &ev)
            .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"applied\":false"), "{body}");
    // Usage B acknowledged before its copy caught up is counted in a later hour, never a second record of the
    // final hour's AWS key: 5 units billed, no DuplicateRecord.
    let counters = emulator.inspect("/_emulator/counters").unwrap();
    assert_eq!(counters["duplicates"], 0, "{counters}");
    assert_eq!(total(billed(&emulator)), 5);
    assert_eq!(a.terminate().unwrap(), Some(0));
    assert_eq!(b.terminate().unwrap(), Some(0));
}

/// Runs `meterd` with `args` to its exit (failing the test if it has not exited within 60 s): exit code, stdout,
/// stderr.
fn meterd(args: &[&str]) -> (Option<i32>, String, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(meterd_tests::meterd_bin())
        .args(args)
        .env("METERD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("meterd {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_database_check_says_precisely_what_is_wrong_and_a_start_waiting_cannot_fix_is_refused() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let dir = tempfile::tempdir().unwrap();
    let config_at = |name: &str, url: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, agent_toml(&dir.path().join("data"), "http://127.0.0.1:9", url, 0, "4h")).unwrap();
        path.display().to_string()
    };
    // A fresh database: reachable, not migrated.
    let fresh = config_at("fresh", &pg.url());
    let (code, out, _) = meterd(&["check-config", &fresh, "--fleet"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("fleet: FAILED: meterd@127.0.0.1:") && out.contains("not migrated"), "{out}");
    // Migrated (as an agent does at start): the check passes and names the version.
    let mut c = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    meterd_fleet::migrate::migrate(&mut c).await.unwrap();
    let (code, out, _) = meterd(&["check-config", &fresh, "--fleet"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("schema at version {}", meterd_fleet::migrate::current())), "{out}");
    // Nothing listens there: the check says it cannot connect, where.
    let nowhere = config_at("nowhere", "postgres://meterd@127.0.0.1:9/meterd");
    let (code, out, _) = meterd(&["check-config", &nowhere, "--fleet"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("fleet.database_url: cannot connect to meterd@127.0.0.1:9/meterd"), "{out}");

    // A database that does not exist: waiting cannot fix it, so the agent refuses to start, naming the setting.
    let missing = config_at("missing", &format!("postgres://meterd@127.0.0.1:{}/nope", pg.port()));
    let (code, out, _) = meterd(&["check-config", &missing, "--fleet"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("does not exist"), "{out}");
    let (code, _, err) = meterd(&["run", "--config", &missing]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("fleet.database_url (meterd@127.0.0.1:") && err.contains("\"nope\" does not exist"), "{err}");
    // A schema migrated by a newer meterd: refused at start, not retried for ever.
    c.execute("INSERT INTO meterd_schema_migrations (version, name) VALUES (99, 'future')", &[]).await.unwrap();
    let (code, out, _) = meterd(&["check-config", &fresh, "--fleet"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("newer than this meterd knows"), "{out}");
    let (code, _, err) = meterd(&["run", "--config", &fresh]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("fleet.database_url") && err.contains("version 99, newer than this meterd knows"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_checks_run_on_every_fleet_agent() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let emulator = EmulatorProcess::start(
        "seed = 3\nrate_limit_per_sec = 10.0\nstrict_wire = true\n[[products]]\nproduct_code = \"fleetprod\"\n\
         dimensions = [\"api_calls\", \"gb_hours\"]\n[[products]]\nproduct_code = \"amiprod\"\n\
         dimensions = [\"vcpu_hours\"]\n",
    )
    .unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let deployment =
        "[products.ami]\nidentity = \"deployment\"\nproduct_code = \"amiprod\"\ndimensions = [\"vcpu_hours\"]\n[fleet]";
    let mut agents: Vec<Agent> = (0..2)
        .map(|n| {
            let config = agent_toml(dirs[n].path(), &emulator.url, &pg.url(), n, "4h").replace("[fleet]", deployment);
            Agent::start(&config).unwrap()
        })
        .collect();
    // The submitting agent and the other one alike: each host proves its own setup.
    for a in &agents {
        let client = a.client().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let checks = loop {
            let s = client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
            if !s.deployment_checks.is_empty()
                && s.deployment_checks.iter().all(|c| c.state == "ok" || c.state == "failed")
            {
                break s.deployment_checks;
            }
            assert!(Instant::now() < deadline, "checks never settled: {:?}", s.deployment_checks);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            checks.iter().map(|c| (c.product.as_str(), c.check.as_str(), c.state.as_str())).collect::<Vec<_>>(),
            [("ami", "dry_run:vcpu_hours", "ok")]
        );
    }
    for a in &mut agents {
        assert_eq!(a.terminate().unwrap(), Some(0));
    }
}

/// The whole report stream of `agent`: its rows (or groups) and its trailer.
async fn stream(
    client: &meterd_proto::client::Client,
    req: v1::ReportStreamRequest,
) -> (Vec<v1::ReportRow>, Vec<v1::ReportGroup>, v1::ReportTrailer) {
    let mut s = client.admin().report_stream(req).await.unwrap().into_inner();
    let (mut rows, mut groups) = (Vec::new(), Vec::new());
    while let Some(c) = s.message().await.unwrap() {
        match c.chunk.unwrap() {
            v1::report_chunk::Chunk::Rows(r) => rows.extend(r.rows),
            v1::report_chunk::Chunk::Groups(g) => groups.extend(g.groups),
            v1::report_chunk::Chunk::Trailer(t) => return (rows, groups, t),
        }
    }
    panic!("the report stream ended without its trailer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_status_and_flush_on_any_agent_show_and_seal_the_fleets_ledger() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let emulator = EmulatorProcess::start(&emulator_toml(17)).unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..AGENTS).map(|_| tempfile::tempdir().unwrap()).collect();
    // A long seal_grace: nothing is sealed unless a flush asks for it.
    let mut agents: Vec<Agent> = (0..AGENTS)
        .map(|n| Agent::start(&agent_toml(dirs[n].path(), &emulator.url, &pg.url(), n, "4h")).unwrap())
        .collect();
    let hour = meterd::clock::system_now_ms() / 1000 / 3600 * 3600 - 2 * 3600;
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut acked = 0u64;
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for i in 0..12usize {
        let (c, dim, q) = (i % 4, DIMENSIONS[i % 2], 3 + i as u64);
        let e = event(&format!("k{i}"), c, dim, q, hour + 60 + i as i64);
        if i % 2 == 0 {
            on_a.push(e)
        } else {
            on_b.push(e)
        }
        *expected.entry((format!("aws:{ACCOUNT}/{}", arn(c)), dim.to_string())).or_default() += q;
        acked += q;
    }
    // Agent C sees only a retry of one of A's keys (same content: counted once) — and B a key of A's reused with
    // other content: B acknowledges it (its spool never saw the key), the shared ledger records a conflict.
    let retry = on_a[0].clone();
    let mut reused = on_a[1].clone();
    reused.quantity = "1000".into();
    send_to(&agents[0], on_a).await;
    send_to(&agents[1], on_b).await;
    send_to(&agents[2], vec![retry]).await;
    let db = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while meterd_fleet::views::event_keys(&db).await.unwrap() < 12 {
        assert!(Instant::now() < deadline, "the spools were not forwarded within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only once A's event is in the shared ledger: the reuse on B is then the one refused.
    send_to(&agents[1], vec![reused]).await;
    while meterd_fleet::views::conflicts(&db).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the reused key was not forwarded within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The report on C (which acknowledged one replay only) is the fleet's: every open row, totals == acknowledged,
    // the conflict shown beside them.
    let c = agents[2].client().await.unwrap();
    let report = c.admin().report(v1::ReportRequest {}).await.unwrap().into_inner();
    let totals = report.totals.clone().unwrap();
    assert_eq!((totals.recorded.clone(), totals.open.clone()), (acked.to_string(), acked.to_string()), "{totals:?}");
    assert!(totals.reconciled && totals.conflicts == 1, "{totals:?}");
    let rows: BTreeMap<(String, String), u64> =
        report.rows.iter().map(|r| ((r.customer.clone(), r.dimension.clone()), r.recorded.parse().unwrap())).collect();
    assert_eq!(rows, expected, "the report's rows are the fleet's usage per customer × dimension");
    // The streamed report reads the same ledger: the summary, and rows narrowed by a filter (totals stay whole).
    let (_, groups, trailer) = stream(&c, v1::ReportStreamRequest::default()).await;
    assert_eq!(trailer.totals.as_ref(), Some(&totals), "the summary's totals");
    assert!(trailer.consistent && groups.iter().all(|g| g.hour.as_ref().unwrap().seconds == hour));
    assert_eq!(groups.iter().map(|g| g.rows).sum::<u64>(), expected.len() as u64);
    let customer = format!("aws:{ACCOUNT}/{}", arn(1));
    let (rows, _, trailer) =
        stream(&c, v1::ReportStreamRequest { rows: true, customer: customer.clone(), ..Default::default() }).await;
    assert_eq!(trailer.totals.as_ref(), Some(&totals), "a filter narrows the rows, not the totals");
    assert_eq!(rows.len(), expected.keys().filter(|(cu, _)| *cu == customer).count());
    assert!(rows.iter().all(|r| r.customer == customer && r.state == "open"), "{rows:?}");

    // The dashboard on C: the same ledger's totals, and the fleet's nodes.
    let admin: std::net::SocketAddr = agents[2].admin.as_ref().unwrap().parse().unwrap();
    let (code, body) = meterd_tests::stack::http_get(admin, "/api/dashboard").await;
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["totals"]["recorded"], acked.to_string(), "{}", doc["totals"]);
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(AGENTS), "{}", doc["nodes"]);

    // Status on C: the fleet's queue (nothing sealed yet), every node, and who submits for the account.
    let status = c.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    let fleet = status.fleet.clone().expect("status shows the fleet in fleet mode");
    assert_eq!((fleet.node_id.as_str(), fleet.database_error.as_str(), fleet.conflicts), ("node-2", "", 1));
    let nodes: Vec<&str> = fleet.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(nodes, ["node-0", "node-1", "node-2"], "{fleet:?}");
    assert!(fleet.nodes.iter().all(|n| n.live && n.watermark.is_some()), "{fleet:?}");
    let spools: Vec<bool> = fleet.nodes.iter().map(|n| n.spool_events.is_some()).collect();
    assert_eq!(spools, [false, false, true], "only the answering agent's own spool is known");
    assert_eq!(status.open_buckets, expected.len() as u64, "the shared ledger's open buckets");
    let keys = meterd_fleet::views::event_keys(&db).await.unwrap() as u64;
    assert_eq!(status.events_stored, keys, "events stored fleet-wide (C stored one replay only)");
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        if let Some((_, h, _, _)) = meterd_fleet::lease::holders(&db).await.unwrap().first() {
            break h.clone();
        }
        assert!(Instant::now() < deadline, "no agent took the submitter lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = c.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    let submitters = status.fleet.unwrap().submitters;
    assert_eq!((submitters[0].account.as_str(), submitters[0].node_id.as_str()), ("emu", holder.as_str()));
    // What an operator reads: `meterd status` and `meterd report` against C.
    let text = cli(&agents[2].target(), &["status"]).await;
    for n in 0..AGENTS {
        assert!(text.contains(&format!("  node node-{n}: live, heartbeat ")), "{text}");
    }
    assert!(text.contains(&format!("  submitter emu: node {holder} (lease epoch ")), "{text}");
    let json: serde_json::Value = serde_json::from_str(&cli(&agents[2].target(), &["status", "--json"]).await).unwrap();
    assert_eq!(json["fleet"]["nodes"].as_array().map(Vec::len), Some(AGENTS), "{json}");
    let text = cli(&agents[2].target(), &["report"]).await;
    assert!(text.contains(&format!("totals: recorded {acked} ")), "{text}");
    assert!(text.contains("conflicts: 1 events reused an idempotency key"), "{text}");

    // Flush on an agent that does not hold the lease: its spool is forwarded, and the holder seals the hour.
    let n = (0..AGENTS).find(|n| format!("node-{n}") != holder).unwrap();
    let other = agents[n].client().await.unwrap();
    other
        .metering()
        .record_usage_batch(v1::RecordUsageBatchRequest {
            events: vec![event("late-on-flusher", 0, "gb_hours", 5, hour + 7)],
        })
        .await
        .unwrap();
    acked += 5;
    let f = other.admin().flush(v1::FlushRequest {}).await.unwrap().into_inner();
    assert!(f.records_sealed >= expected.len() as u64 && f.sealed_through.is_some(), "{f:?}");
    assert!(f.sealed_through.as_ref().unwrap().seconds > hour, "{f:?}");
    assert!(meterd_fleet::views::sealed_through(&db, "app").await.unwrap() > Some(hour * 1000));
    let report = c.admin().report(v1::ReportRequest {}).await.unwrap().into_inner();
    let totals = report.totals.unwrap();
    assert_eq!((totals.recorded.clone(), totals.open.as_str()), (acked.to_string(), "0"), "{totals:?}");
    assert!(totals.reconciled, "{totals:?}");
    assert!(report.rows.iter().all(|r| r.state != "open"), "{:?}", report.rows);
    let status = c.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert!(status.sealed_through.unwrap().seconds > hour, "C sees the hour sealed fleet-wide");
    for a in &mut agents {
        assert_eq!(a.terminate().unwrap(), Some(0));
    }
}

/// Runs the `meterd` CLI against `target`; its standard output.
async fn cli(target: &str, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(meterd_tests::meterd_bin());
    cmd.args(args).args(["--target", target]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    String::from_utf8(out.stdout).unwrap()
}

async fn send_to(agent: &Agent, events: Vec<v1::UsageEvent>) {
    let r = agent.client().await.unwrap().metering().record_usage_batch(v1::RecordUsageBatchRequest { events }).await;
    let r = r.unwrap().into_inner();
    assert!(r.results.iter().all(|r| matches!(r.outcome, Some(v1::event_result::Outcome::Receipt(_)))), "{r:?}");
}

/// `/metrics` and the report (`Admin.Report`, `ReportStream`'s trailer) on a fleet agent show the shared ledger's
/// usage drops, not its spool's (which holds no usage): a customer that used 50 units in every baseline hour of
/// the last ended hour and 1 in it is a drop there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_agents_metrics_show_the_shared_ledgers_usage_drops() {
    use meterd::domain::event::{Identity, UsageEvent};
    use meterd::domain::quantity::Micros;
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let emulator = EmulatorProcess::start(&emulator_toml(23)).unwrap();
    // Another node's usage, straight into the shared ledger before this agent starts (weeks old: no agent would
    // take it now, and once an agent leads, those hours are sealed and later usage for them counts late).
    let mut db = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    meterd_fleet::migrate::migrate(&mut db).await.unwrap();
    meterd_fleet::nodes::register(&db, "elsewhere", "", Duration::from_secs(600)).await.unwrap();
    let now = meterd::clock::system_now_ms();
    let hour = meterd::clock::hour_start(now) - meterd::clock::HOUR_MS;
    let used = |h: i64, units: u64| meterd_fleet::forward::Acked {
        event: UsageEvent {
            idempotency_key: format!("drop-{h}"),
            product: "app".into(),
            identity: Identity::Aws { account_id: ACCOUNT.into(), license_arn: arn(1) },
            dimension: "api_calls".into(),
            quantity: Micros::from_units(units),
            timestamp_ms: Some(h + 60_000),
            tags: Default::default(),
        },
        received_ms: now,
    };
    let mut events: Vec<_> = meterd::domain::silence::baseline_hours(hour).into_iter().map(|h| used(h, 50)).collect();
    events.push(used(hour, 1));
    meterd_fleet::forward::forward(&mut db, "elsewhere", &events, now).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::start(&agent_toml(dir.path(), &emulator.url, &pg.url(), 0, "4h")).unwrap();
    let admin: std::net::SocketAddr = a.admin.as_ref().unwrap().parse().unwrap();
    let sample = "meterd_usage_drops{product=\"app\",dimension=\"api_calls\"}";
    let drops = || async {
        let (code, body) = meterd_tests::stack::http_get(admin, "/metrics").await;
        assert_eq!(code, 200, "{body}");
        meterd_tests::stack::parse_metrics(&body).get(sample).copied()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = drops().await;
        if n.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the agent's metrics never showed the shared ledger's drop: {n:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The report shows it too, both the one-reply report and the streamed one's trailer.
    let client = a.client().await.unwrap();
    let is_the_drop = |d: &v1::UsageDrop| {
        d.product == "app"
            && d.dimension == "api_calls"
            && d.customer.is_empty()
            && d.hour.as_ref().map(|t| t.seconds * 1000) == Some(hour)
            && Micros::parse_event(&d.observed).ok() == Some(Micros::from_units(1))
    };
    let report = client.admin().report(v1::ReportRequest {}).await.unwrap().into_inner();
    assert!(report.usage_drops.iter().any(is_the_drop), "Admin.Report's drops: {:?}", report.usage_drops);
    let mut stream = client.admin().report_stream(v1::ReportStreamRequest::default()).await.unwrap().into_inner();
    let mut trailer = None;
    while let Some(chunk) = stream.message().await.unwrap() {
        if let Some(v1::report_chunk::Chunk::Trailer(t)) = chunk.chunk {
            trailer = Some(t);
        }
    }
    let trailer = trailer.expect("the stream ends with its trailer");
    assert!(trailer.usage_drops.iter().any(is_the_drop), "ReportStream's drops: {:?}", trailer.usage_drops);
    assert_eq!(a.terminate().unwrap(), Some(0));
}

/// The lease holder's retention pass over the shared ledger: records accepted in an hour older than
/// `storage.retention` leave the ledger (folded into `meterd_compacted`, so the report's totals keep them) once
/// an agent leads on a clock past that age. The agent runs with `--simulate --clock-offset-ms` (its embedded
/// emulator on the same clock): first 20 s before an hour's end (room for a slow start on a busy machine), so that
/// hour is sealed and accepted soon after, then three days later; the database's clock is the real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holder_compacts_the_shared_ledgers_history_past_retention() {
    let pg = TestPostgres::start().expect("a throwaway PostgreSQL (Debian's postgresql package)");
    let dir = tempfile::tempdir().unwrap();
    let config = agent_toml(dir.path(), "http://127.0.0.1:9", &pg.url(), 0, "1s")
        .replace("[storage]\n", "[storage]\nretention = \"2d\"\ndedupe_window = \"1d\"\n");
    // The agent's clock 20 s before the end of the hour after this one.
    let now = meterd::clock::system_now_ms();
    let hour_ms = meterd::clock::hour_start(now) + meterd::clock::HOUR_MS;
    let offset = hour_ms + meterd::clock::HOUR_MS - 20_000 - now;
    let run = |offset: i64| {
        let offset = offset.to_string();
        Agent::start_with_args(&config, &["--simulate", "--speed", "1", "--clock-offset-ms", &offset]).unwrap()
    };
    let mut a = run(offset);
    let emulator: std::net::SocketAddr =
        a.emulator.as_deref().unwrap().trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    for c in 0..2 {
        let body = serde_json::json!({"product_code": "fleetprod", "aws_account_id": ACCOUNT, "license_arn": arn(c)});
        let (status, out) =
            meterd_tests::stack::http_put_json(emulator, "/_emulator/customers", &body.to_string()).await;
        assert_eq!(status, 200, "{out}");
    }
    let client = a.client().await.unwrap();
    let events: Vec<v1::UsageEvent> = (0..4)
        .map(|i| event(&format!("old-{i}"), i / 2, DIMENSIONS[i % 2], 5 + i as u64, hour_ms / 1000 + 60))
        .collect();
    let r = client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events }).await.unwrap();
    for r in r.into_inner().results {
        let Some(v1::event_result::Outcome::Receipt(rc)) = r.outcome else { panic!("refused: {r:?}") };
        // Counted in its own hour, not late into the next (the start took less than the 20 s planned).
        assert_eq!(rc.usage_hour.map(|t| t.seconds * 1000), Some(hour_ms), "{rc:?}");
    }
    // Sealed once the hour ends and accepted: 4 records, 26 units.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let t = client.admin().report(v1::ReportRequest {}).await.unwrap().into_inner().totals.unwrap();
        if t.accepted == "26" {
            break;
        }
        assert!(Instant::now() < deadline, "the hour was never accepted: {t:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.terminate().unwrap(), Some(0));
    let db = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    let kept = || async {
        let n: i64 =
            db.query_one("SELECT count(*) FROM meterd_records WHERE hour_ms = $1", &[&hour_ms]).await.unwrap().get(0);
        n
    };
    assert_eq!(kept().await, 4, "the accepted hour is in the shared ledger");

    // Three days on, the same agent leads again: its first retention pass removes the hour.
    let mut a = run(offset + 3 * 24 * meterd::clock::HOUR_MS);
    let deadline = Instant::now() + Duration::from_secs(60);
    while kept().await > 0 {
        assert!(Instant::now() < deadline, "the lease holder never compacted records past retention");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let compacted: i64 =
        db.query_one("SELECT records FROM meterd_compacted WHERE product = 'app'", &[]).await.unwrap().get(0);
    assert_eq!(compacted, 4);
    // The report still counts them: in its totals, no longer in its rows.
    let report = a.client().await.unwrap().admin().report(v1::ReportRequest {}).await.unwrap().into_inner();
    let t = report.totals.unwrap();
    assert_eq!((t.accepted.as_str(), t.compacted_records), ("26", 4), "{t:?}");
    assert!(report.rows.iter().all(|r| r.hour.as_ref().map(|h| h.seconds * 1000) != Some(hour_ms)));
    assert_eq!(a.terminate().unwrap(), Some(0));
}
