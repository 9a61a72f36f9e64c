//! `meterd run --simulate`: the agent against the embedded AWS emulator, optionally on a fast clock, with
//! a demo product and a demo load, so a newcomer sees usage recorded → sealed → submitted → accepted.
//! It never talks to real AWS: every account is pointed at the emulator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meterd_emulator::{EmuCustomer, EmuProduct, Emulator, EmulatorConfig, EmulatorHandle};
use meterd_proto::v1;

use crate::clock::{OffsetClock, ScaledClock, SharedClock, SystemClock};
use crate::config::{AccountConfig, Config, IdentityMode};

/// Lets the embedded emulator read the agent's clock, so both agree on what hour it is. Kept here, not in
/// `clock.rs`: the clock is on the ground floor and knows nothing of the emulator.
pub struct EmulatorClock(pub SharedClock);

impl meterd_emulator::Clock for EmulatorClock {
    fn now(&self) -> std::time::SystemTime {
        use std::time::{Duration, UNIX_EPOCH};
        let ms = self.0.now_ms();
        if ms >= 0 {
            UNIX_EPOCH + Duration::from_millis(ms as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
        }
    }
}

pub const DEMO_ACCOUNT_ID: &str = "111122223333";
/// A tenant the demo records usage for but never maps: its usage is held, at risk.
pub const DEMO_UNMAPPED_TENANT: &str = "demo-unmapped-tenant";

pub struct Simulation {
    pub config: Config,
    pub clock: SharedClock,
    pub emulator: Emulator,
    pub handle: EmulatorHandle,
}

fn demo_license_arn(product: &str) -> String {
    format!("arn:aws:license-manager::{DEMO_ACCOUNT_ID}:license:l-demo-{product}")
}

/// Starts the emulator for `config`'s products (and one subscribed demo customer each) and points every
/// product at it.
pub async fn prepare(config: Config, speed: f64) -> anyhow::Result<Simulation> {
    prepare_with_offset(config, speed, 0).await
}

/// [`prepare`] with the clock `offset_ms` from the wall clock (speed 1 only: `run` refuses the combination).
pub async fn prepare_with_offset(mut config: Config, speed: f64, offset_ms: i64) -> anyhow::Result<Simulation> {
    let clock: SharedClock = if offset_ms != 0 {
        Arc::new(OffsetClock { offset_ms })
    } else if (speed - 1.0).abs() < f64::EPSILON {
        Arc::new(SystemClock)
    } else {
        ScaledClock::new(speed)
    };
    // strict_wire: the demo (and the SDK tests built on it) also checks meterd's wire shape.
    let mut emu = EmulatorConfig { rate_limit_per_sec: 10.0, seed: 1, strict_wire: true, ..EmulatorConfig::default() };
    for (name, p) in config.products.iter_mut() {
        let code = p.product_code.get_or_insert_with(|| format!("sim-{name}")).clone();
        emu.products.push(EmuProduct { product_code: code.clone(), dimensions: p.dimensions.clone() });
        match p.identity {
            IdentityMode::License => {
                emu.customers.push(EmuCustomer::licensed(&code, DEMO_ACCOUNT_ID, &demo_license_arn(name)))
            }
            IdentityMode::Legacy => emu.customers.push(EmuCustomer {
                product_code: code.clone(),
                customer_identifier: Some("demo-customer".into()),
                ..EmuCustomer::default()
            }),
            // The buyer is whoever's credentials sign the MeterUsage call: nobody to subscribe.
            IdentityMode::Deployment => {}
        }
        p.account = Some("simulated".into());
    }
    if emu.submission_window_secs == 0 {
        emu.submission_window_secs = 24 * 3600;
    }
    // Paid container products register at start; the simulated host is a container platform for them.
    emu.container_platform = config.products.values().any(|p| p.register_usage);
    let emulator = Emulator::new(emu, Arc::new(EmulatorClock(clock.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let handle = emulator.start(listener).await?;
    config.accounts = BTreeMap::from([(
        "simulated".to_string(),
        AccountConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some(handle.endpoint_url()),
            profile: None,
            role_arn: None,
            test_credentials: true,
            app_id: "meterd-simulate".into(),
            calls_per_second: 10.0,
            call_timeout: Duration::from_secs(10),
        },
    )]);
    config.validate()?;
    Ok(Simulation { config, clock, emulator, handle })
}

/// Records demo usage through the agent's own gRPC API, like a product would, until the process ends.
pub async fn feed(target: String, config: Arc<Config>) {
    let client = match meterd_proto::client::Client::connect(&target, Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "demo feeder cannot connect"),
    };
    let mut m = client.metering();
    let products: Vec<_> = config.products.iter().collect();
    for n in 0u64.. {
        let (name, p) = products[(n as usize) % products.len()];
        let customer = match p.identity {
            IdentityMode::License => Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                customer_aws_account_id: DEMO_ACCOUNT_ID.into(),
                license_arn: demo_license_arn(name),
            })),
            IdentityMode::Legacy => Some(v1::customer::Identity::Legacy(v1::LegacyCustomer {
                customer_identifier: "demo-customer".into(),
                product_code: String::new(),
            })),
            // An AMI or container product's events name no customer.
            IdentityMode::Deployment => None,
        };
        let event = v1::UsageEvent {
            idempotency_key: format!("demo-{}-{n}", std::process::id()),
            customer: customer.map(|identity| v1::Customer { identity: Some(identity) }),
            dimension: p.dimensions[(n as usize / products.len()) % p.dimensions.len()].clone(),
            quantity: format!("{}.{}", n % 3, n % 10),
            timestamp: None,
            tags: if n % 2 == 0 {
                [("team".to_string(), format!("team-{}", n % 4))].into()
            } else {
                Default::default()
            },
            product: name.clone(),
        };
        if let Err(e) = m.record_usage(v1::RecordUsageRequest { event: Some(event) }).await {
            tracing::warn!(error = %e.message(), "demo feeder: record_usage failed");
        }
        // Every 10th round, usage of a tenant no one has mapped to a marketplace identity: the demo shows it
        // held, at risk (dashboard, `meterd status`) until `meterd customers put demo-unmapped-tenant …`.
        if n % 10 == 0 {
            let held = v1::UsageEvent {
                idempotency_key: format!("demo-{}-{n}-held", std::process::id()),
                customer: Some(v1::Customer {
                    identity: Some(v1::customer::Identity::TenantId(DEMO_UNMAPPED_TENANT.into())),
                }),
                dimension: p.dimensions[0].clone(),
                quantity: "1".into(),
                timestamp: None,
                tags: Default::default(),
                product: name.clone(),
            };
            if let Err(e) = m.record_usage(v1::RecordUsageRequest { event: Some(held) }).await {
                tracing::warn!(error = %e.message(), "demo feeder: record_usage failed");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints where the demo's usage stands, every few seconds.
pub async fn narrate(target: String, emulator: Emulator) {
    let Ok(client) = meterd_proto::client::Client::connect(&target, Duration::from_secs(5)).await else { return };
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Ok(r) = client.admin().report(v1::ReportRequest {}).await else { continue };
        let t = r.into_inner().totals.unwrap_or_default();
        let billed = emulator.totals().iter().map(|t| t.quantity.clone()).collect::<Vec<_>>().join("+");
        println!(
            "simulate: recorded {} = accepted {} + pending {} + carried {} + open {} (rejected {}, expired {}); emulator billed [{}]{}",
            t.recorded,
            t.accepted,
            t.pending,
            t.carried,
            t.open,
            t.rejected,
            t.expired,
            billed,
            if t.reconciled { "" } else { "  RECONCILIATION FAILED" }
        );
    }
}
