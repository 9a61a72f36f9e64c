//! A faithful AWS Marketplace Metering Service emulator. It speaks awsJson1.1 exactly as the service does, so
//! the unmodified AWS SDKs (Rust, boto3, ...) work against it with only `endpoint_url` changed, and it enforces
//! the service's rules (first-write-wins hourly dedup, the submission window and month-end cap, 25 records,
//! 1 MB, identity shapes, dimensions, tags, allocations, subscriptions) with seeded fault injection and an
//! inspection API. See `README.md` for what is and is not modelled.

mod agreement;
mod clock;
mod cloudtrail;
mod config;
mod counters;
mod decimal;
mod faults;
mod imds;
mod inspect;
mod ledger;
mod register;
mod requests;
mod rules;
mod server;
mod service;
mod standalone;
mod wire;

use std::sync::Arc;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ConfigError, EmuCustomer, EmuProduct, EmuToken, EmulatorConfig, Faults, RateLimitMode};
pub use counters::{Counters, InjectedFaults};
pub use decimal::Quantity;
pub use imds::ImdsState;
pub use ledger::{LedgerAllocation, LedgerEntry, LedgerTag, Total};
pub use requests::LoggedRequest;
pub use server::EmulatorHandle;
pub use standalone::{run_standalone, serve_standalone};

use service::Shared;

/// The emulated service. Cheap to clone; clones share one state.
#[derive(Clone)]
pub struct Emulator {
    pub(crate) shared: Arc<Shared>,
}

impl Emulator {
    /// `config` is used as given (call [`EmulatorConfig::validate`] first if it did not come from a file).
    pub fn new(config: EmulatorConfig, clock: Arc<dyn Clock>) -> Self {
        Self { shared: Arc::new(Shared::new(config, clock)) }
    }

    /// Serves the AWS API (`POST /`) and the inspection API (`/_emulator/...`) on `listener` in a background
    /// task until the returned handle is shut down or dropped.
    pub async fn start(&self, listener: tokio::net::TcpListener) -> std::io::Result<EmulatorHandle> {
        server::spawn(self.clone(), listener)
    }

    /// The AWS and inspection routes as an axum router, for embedding in another server. Connection-drop
    /// faults need [`Emulator::start`]; through a bare router they answer 502 instead.
    pub fn router(&self) -> axum::Router {
        server::router(self.clone())
    }

    /// Accepted (billed) records, in acceptance order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.shared.lock().ledger.entries()
    }

    /// Billed quantity per product, customer and dimension, as exact decimal strings.
    pub fn totals(&self) -> Vec<Total> {
        self.shared.lock().ledger.totals()
    }

    /// The last AWS API requests processed (up to 64), oldest first, bodies as sent. Calls refused before their
    /// body was read (injected faults, the rate limit) are not in it.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().requests.entries()
    }

    /// CloudTrail-shaped records of the metering calls processed (the last 10,000), as a CloudTrail log file:
    /// `{"Records": [...]}` (see `cloudtrail.rs` for the shape and its source).
    pub fn cloudtrail(&self) -> serde_json::Value {
        serde_json::from_str(&self.shared.lock().cloudtrail.log_file()).unwrap_or_default()
    }

    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    /// Replaces the fault settings from the next call on. The RNG stream continues (reset() restarts it).
    pub fn set_faults(&self, f: Faults) {
        self.shared.lock().faults = f;
    }

    pub fn rate_limit(&self) -> f64 {
        self.shared.lock().rate_limit_per_sec
    }

    /// Calls per second for BatchMeterUsage (and, separately, MeterUsage); `0` turns the limit off. The bucket
    /// starts full.
    pub fn set_rate_limit(&self, per_sec: f64) {
        let per_sec = if per_sec.is_finite() { per_sec.max(0.0) } else { 0.0 };
        self.shared.lock().set_rate_limit(per_sec);
    }

    /// Subscribed customers.
    pub fn customers(&self) -> Vec<EmuCustomer> {
        self.shared.lock().customers.iter().cloned().collect()
    }

    /// Subscribes a customer. A definition the catalog cannot honour (unknown product, bad ARN) is ignored;
    /// use [`Emulator::try_add_customer`] to see why.
    pub fn add_customer(&self, c: EmuCustomer) {
        let _ = self.try_add_customer(c);
    }

    pub fn try_add_customer(&self, c: EmuCustomer) -> Result<(), ConfigError> {
        let mut st = self.shared.lock();
        config::customer_problem(&c, st.has_product(&c.product_code)).map_err(|(field, message)| {
            let key = if field.is_empty() { "customer".to_string() } else { format!("customer.{field}") };
            ConfigError::Invalid { key, message }
        })?;
        st.add_customer(c);
        Ok(())
    }

    /// Unsubscribes every customer whose fields equal those set in `c` (an empty `product_code` matches any
    /// product); returns how many. Their later records get `CustomerNotSubscribed`.
    pub fn remove_customer(&self, c: &EmuCustomer) -> usize {
        self.shared.lock().remove_customers(c)
    }

    /// Back to the start state: empty ledger and counters, the configured customers, faults, rate limit and
    /// clock offset, and the RNG restarted from the seed.
    pub fn reset(&self) {
        self.shared.reset();
    }

    pub fn clock_offset_secs(&self) -> i64 {
        self.shared.lock().clock_offset_secs
    }

    /// Moves the service's clock relative to the injected [`Clock`].
    pub fn set_clock_offset(&self, secs: i64) {
        self.shared.lock().clock_offset_secs = secs;
    }

    /// The service's "now" (clock + offset), epoch milliseconds.
    pub fn now_millis(&self) -> i64 {
        let st = self.shared.lock();
        self.shared.now_ms(&st)
    }

    /// An agreement's status as DescribeAgreement answers it (tokens' agreements start ACTIVE).
    pub fn agreement_status(&self, agreement_id: &str) -> Option<String> {
        self.shared.lock().agreements.get(agreement_id).cloned()
    }

    /// Sets (or creates) an agreement with one of the statuses AWS documents (ACTIVE, TERMINATED, EXPIRED, ...).
    pub fn set_agreement_status(&self, agreement_id: &str, status: &str) -> Result<(), ConfigError> {
        if agreement_id.is_empty() {
            return Err(ConfigError::Invalid { key: "agreement_id".into(), message: "is required".into() });
        }
        if !agreement::STATUSES.contains(&status) {
            return Err(ConfigError::Invalid {
                key: "status".into(),
                message: format!("{status:?} is not one of {}", agreement::STATUSES.join(", ")),
            });
        }
        self.shared.lock().agreements.insert(agreement_id.to_string(), status.to_string());
        Ok(())
    }

    /// The RegisterUsage signing key's public half (`public_key`: base64url of the uncompressed P-256 point,
    /// and the same as a `jwk`), as served at `GET /_emulator/register_usage/public_key`.
    pub fn register_usage_public_key(&self) -> serde_json::Value {
        self.shared.signer.public_key()
    }

    /// Whether the emulated host is an ECS/EKS container platform (RegisterUsage answers there only).
    pub fn set_container_platform(&self, on: bool) {
        self.shared.lock().container_platform = on;
    }

    /// Whether the buyer running the product is entitled to `product_code` (MeterUsage and RegisterUsage answer
    /// `CustomerNotEntitledException` when not).
    pub fn set_entitled(&self, product_code: &str, entitled: bool) {
        let mut st = self.shared.lock();
        if entitled {
            st.not_entitled.remove(product_code);
        } else {
            st.not_entitled.insert(product_code.to_string());
        }
    }

    /// What the emulated instance metadata service was asked, and which access keys signed AWS calls.
    pub fn imds(&self) -> ImdsState {
        self.shared.imds.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn agreements(&self) -> std::collections::BTreeMap<String, String> {
        self.shared.lock().agreements.clone()
    }
}
