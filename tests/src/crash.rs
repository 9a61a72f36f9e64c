//! The load and the checks shared by the crash tests (kill -9 and power loss): many concurrent callers,
//! single events and batches, a record of what was acknowledged and what was attempted, and the check that
//! every acknowledged event is still stored with its original receipt.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meterd_proto::v1;
use rand::{Rng, SeedableRng};

pub type Acked = Arc<Mutex<Vec<(v1::UsageEvent, v1::Receipt)>>>;
pub type Attempted = Arc<Mutex<Vec<v1::UsageEvent>>>;

/// A valid event for product `app` (see [`crate::basic_config`]): tenants and AWS identities, two dimensions,
/// sometimes tags; `at_ms` stamps it (an earlier hour makes it sealable by `Admin.Flush`).
pub fn random_event(rng: &mut impl Rng, key: String, at_ms: Option<i64>) -> v1::UsageEvent {
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
        timestamp: at_ms.map(|ms| prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: 0 }),
        tags,
        product: String::new(),
    }
}

/// Bucket identity as a comparable string: hour | customer | dimension | tags.
pub fn bucket_label(ev: &v1::UsageEvent, hour_secs: i64) -> String {
    let who = match ev.customer.as_ref().unwrap().identity.as_ref().unwrap() {
        v1::customer::Identity::TenantId(t) => format!("tenant:{t}"),
        v1::customer::Identity::AwsAccount(a) => format!("aws:{}/{}", a.customer_aws_account_id, a.license_arn),
        v1::customer::Identity::Legacy(l) => format!("legacy:{}", l.customer_identifier),
    };
    let tags: BTreeMap<_, _> = ev.tags.iter().collect();
    format!("{}|{who}|{}|{tags:?}", hour_secs * 1000, ev.dimension)
}

pub fn micros(q: &str) -> u128 {
    meterd::domain::quantity::Micros::parse_event(q).unwrap().0
}

/// What one round of load sends.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub callers: usize,
    /// Every `batch_every`-th caller sends batches of `batch_size`; the others single events.
    pub batch_every: usize,
    pub batch_size: usize,
    /// Stamp a share of the events an hour or two in the past (sealable by `Admin.Flush`).
    pub past_share: f64,
}

impl Default for Load {
    fn default() -> Self {
        Load { callers: 16, batch_every: 4, batch_size: 20, past_share: 0.0 }
    }
}

/// Sends events until the agent stops answering (it was killed); records what was attempted and acknowledged.
pub async fn load(target: String, acked: Acked, attempted: Attempted, iteration: usize, seed: u64, shape: Load) {
    let client = meterd_proto::client::Client::connect(&target, Duration::from_secs(5)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..shape.callers {
        let mut m = client.metering();
        let (acked, attempted) = (acked.clone(), attempted.clone());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (w as u64) << 32 ^ iteration as u64);
        tasks.spawn(async move {
            let now_ms = meterd::clock::system_now_ms();
            let stamp = |rng: &mut rand_chacha::ChaCha8Rng| {
                rng.random_bool(shape.past_share).then(|| now_ms - rng.random_range(1..3) * 3_600_000)
            };
            for n in 0.. {
                if w % shape.batch_every == 0 {
                    // All of a batch is acknowledged together.
                    let evs: Vec<_> = (0..shape.batch_size)
                        .map(|i| {
                            let at = stamp(&mut rng);
                            random_event(&mut rng, format!("i{iteration}-w{w}-b{n}-{i}"), at)
                        })
                        .collect();
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
                    let at = stamp(&mut rng);
                    let ev = random_event(&mut rng, format!("i{iteration}-w{w}-{n}"), at);
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

/// Calls `op` back to back until the agent dies; returns how many calls finished.
pub async fn until_killed<F, Fut>(target: String, op: F) -> u64
where
    F: Fn(meterd_proto::client::Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Ok(client) = meterd_proto::client::Client::connect(&target, Duration::from_secs(5)).await else {
        return 0;
    };
    let mut done = 0;
    while op(client.clone()).await {
        done += 1;
    }
    done
}

/// Every acknowledged event must still be stored, with its original receipt: resent, it is a replay.
pub async fn assert_all_acknowledged_present(client: &meterd_proto::client::Client, acked: &Acked, context: &str) {
    let snapshot = acked.lock().unwrap().clone();
    let mut lost = Vec::new();
    for chunk in snapshot.chunks(500) {
        let events = chunk.iter().map(|(e, _)| e.clone()).collect();
        let r = client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events }).await.unwrap();
        for ((ev, original), res) in chunk.iter().zip(r.into_inner().results) {
            let Some(v1::event_result::Outcome::Receipt(rc)) = res.outcome else {
                panic!("{context}: acknowledged event {} refused after restart: {res:?}", ev.idempotency_key)
            };
            if !rc.replayed {
                lost.push(ev.idempotency_key.clone());
                continue;
            }
            assert_eq!((&rc.usage_hour, &rc.recorded_at), (&original.usage_hour, &original.recorded_at));
        }
    }
    assert!(
        lost.is_empty(),
        "{context}: {} of {} acknowledged events were lost, e.g. {:?}",
        lost.len(),
        snapshot.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Resends every attempted event (what clients do with what was never acknowledged) and returns the expected
/// total per bucket and overall, in micro-units.
pub async fn retry_all(
    client: &meterd_proto::client::Client,
    attempted: &Attempted,
) -> (BTreeMap<String, u128>, u128, usize) {
    let all = attempted.lock().unwrap().clone();
    let mut expected: BTreeMap<String, u128> = BTreeMap::new();
    let mut total = 0u128;
    for chunk in all.chunks(500) {
        let r =
            client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events: chunk.to_vec() }).await.unwrap();
        for (ev, res) in chunk.iter().zip(r.into_inner().results) {
            let Some(v1::event_result::Outcome::Receipt(rc)) = res.outcome else { panic!("{res:?}") };
            *expected.entry(bucket_label(ev, rc.usage_hour.as_ref().unwrap().seconds)).or_default() +=
                micros(&ev.quantity);
            total += micros(&ev.quantity);
        }
    }
    (expected, total, all.len())
}

/// Each event's key and quantity (micro-units), as [`assert_in_shared_ledger`] wants them.
pub fn keys_and_quantities<'a>(events: impl Iterator<Item = &'a v1::UsageEvent>) -> BTreeMap<String, u128> {
    events.map(|e| (e.idempotency_key.clone(), micros(&e.quantity))).collect()
}

/// Every key in `want` is in the shared ledger's event keys with its quantity (waits up to 120 s for the forwarders).
pub async fn assert_in_shared_ledger(
    db: &meterd_fleet::Client,
    want: &std::collections::BTreeMap<String, u128>,
    what: &str,
) {
    let keys: Vec<String> = want.keys().cloned().collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let found = loop {
        let rows = db
            .query(
                "SELECT idempotency_key, quantity::text FROM meterd_event_keys WHERE idempotency_key = ANY($1)",
                &[&keys],
            )
            .await
            .unwrap();
        let found: std::collections::BTreeMap<String, u128> =
            rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1).parse().unwrap())).collect();
        if found.len() == want.len() || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let missing: Vec<&String> = want.keys().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} never reached the shared ledger, e.g. {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(&found, want, "{what}: a key reached the shared ledger with another quantity");
}
