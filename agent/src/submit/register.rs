//! Start-up steps of `identity = "deployment"` products, run once per start beside the submitters:
//!
//! - **DryRun checks**: `MeterUsage` with `DryRun = true` for every dimension, so a missing entitlement, a wrong
//!   product code or dimension, a missing IAM permission or no credentials are found at start, not when the
//!   first hour's record is refused. Results are kept for `status` and `/metrics`.
//! - **RegisterUsage** for paid container products (`register_usage = true`): called with a fresh `Nonce`,
//!   retried with backoff while the answer is transient (throttling, 5xx, no answer). A final refusal
//!   (`CustomerNotEntitledException`, `PlatformNotSupportedException`, ...) is logged at ERROR and shown in
//!   `status`; meterd keeps recording and metering either way — what the product does about it is the seller's
//!   decision. The signed token (`Signature`) is shown in `status` for the product to verify.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_marketplacemetering::Client;
use aws_sdk_marketplacemetering::error::{ProvideErrorMetadata, SdkError};

use crate::clock::{SharedClock, UnixMillis, hour_start};
use crate::config::{Config, IdentityMode, ProductConfig};

/// Outcome of one start-up check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// "ok", "failed", "retrying" or "pending".
    pub state: &'static str,
    /// The AWS exception (empty when ok).
    pub error_code: String,
    pub message: String,
    pub at_ms: UnixMillis,
    pub attempts: u32,
    /// RegisterUsage only: the signed token AWS returned.
    pub signature: String,
}

/// Every product's checks: (product, check) → result, where check is `dry_run:<dimension>` or `register_usage`.
#[derive(Debug, Default)]
pub struct DeploymentChecks {
    results: Mutex<BTreeMap<(String, String), Check>>,
}

impl DeploymentChecks {
    pub fn set(&self, product: &str, check: &str, result: Check) {
        self.results.lock().expect("checks lock").insert((product.to_string(), check.to_string()), result);
    }

    pub fn snapshot(&self) -> Vec<(String, String, Check)> {
        self.results.lock().expect("checks lock").iter().map(|((p, c), r)| (p.clone(), c.clone(), r.clone())).collect()
    }

    /// One gauge per check (1 = ok) and the RegisterUsage attempts; nothing while no product needs checks.
    pub fn collect(&self, out: &mut crate::metrics::Encoder) -> Result<(), String> {
        let snap = self.snapshot();
        if snap.is_empty() {
            return Ok(());
        }
        out.family(
            "meterd_deployment_check_ok",
            "gauge",
            "Start-up checks of deployment-mode products (MeterUsage DryRun per dimension, RegisterUsage): 1 ok, 0 not (yet).",
        );
        for (p, c, r) in &snap {
            let labels = [("product", p.as_str()), ("check", c), ("state", r.state), ("error", &r.error_code)];
            out.sample("meterd_deployment_check_ok", &labels, u8::from(r.state == "ok"));
        }
        out.family("meterd_register_usage_attempts", "gauge", "RegisterUsage calls made since start.");
        for (p, _, r) in snap.iter().filter(|(_, c, _)| c == "register_usage") {
            out.sample("meterd_register_usage_attempts", &[("product", p)], r.attempts);
        }
        Ok(())
    }
}

/// What to check for one account: its deployment-mode products.
pub fn deployment_products(config: &Config, account: &str) -> Vec<String> {
    config
        .products
        .iter()
        .filter(|(name, p)| p.identity == IdentityMode::Deployment && config.account_of(name) == Some(account))
        .map(|(name, _)| name.clone())
        .collect()
}

/// DryRun every dimension of `products`, stamped at the current hour's start; records each result.
pub async fn dry_run_all(
    client: &Client,
    config: &Config,
    products: &[String],
    clock: &SharedClock,
    checks: &DeploymentChecks,
) -> bool {
    let mut all_ok = true;
    for name in products {
        let Some(p) = config.products.get(name) else { continue };
        let code = p.product_code.clone().unwrap_or_default();
        for d in &p.dimensions {
            let check = format!("dry_run:{d}");
            // A throttled or unanswered DryRun says nothing about the setup: try again a few times before
            // reporting it (the agent's own submitter may share the quota at start).
            let mut attempts = 0;
            let (now, result) = loop {
                attempts += 1;
                let now = clock.now_ms();
                let result = super::meter_usage::dry_run(client, &code, d, hour_start(now).div_euclid(1000)).await;
                match &result {
                    Err((code, _)) if attempts < DRY_RUN_ATTEMPTS && transient(code, code == "NoAnswer") => {
                        tokio::time::sleep(super::backoff::full_jitter(attempts)).await;
                    }
                    _ => break (now, result),
                }
            };
            let c = match result {
                Ok(()) => {
                    tracing::info!(product = %name, dimension = %d, "MeterUsage DryRun passed");
                    Check {
                        state: "ok",
                        error_code: String::new(),
                        message: String::new(),
                        at_ms: now,
                        attempts,
                        signature: String::new(),
                    }
                }
                Err((error_code, message)) => {
                    all_ok = false;
                    tracing::error!(product = %name, dimension = %d, %error_code, %message,
                        "MeterUsage DryRun failed: records of this dimension will be refused (check the entitlement, \
                         product_code, dimension key, the IAM permission aws-marketplace:MeterUsage and the Region)");
                    Check { state: "failed", error_code, message, at_ms: now, attempts, signature: String::new() }
                }
            };
            checks.set(name, &check, c);
        }
    }
    all_ok
}

/// How many times a DryRun is tried when the answer is transient (throttling, 5xx, no answer).
const DRY_RUN_ATTEMPTS: u32 = 3;

/// Whether a RegisterUsage or DryRun failure may go away by itself (then it is retried).
fn transient(code: &str, server_error: bool) -> bool {
    code == "ThrottlingException" || code == "InternalServiceErrorException" || server_error
}

/// RegisterUsage for `product` until AWS answers for good: a token, or a final refusal. `max_delay` caps the
/// backoff between attempts.
pub async fn register(
    client: &Client,
    product: &str,
    config: &ProductConfig,
    clock: &SharedClock,
    checks: &DeploymentChecks,
    max_delay: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let product_code = config.product_code.as_deref().unwrap_or_default();
    let public_key_version = config.public_key_version;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        // A fresh nonce per attempt: it is echoed in the signed token, proving the token answers this call.
        let nonce = uuid_like();
        let out = client
            .register_usage()
            .product_code(product_code)
            .public_key_version(public_key_version)
            .nonce(&nonce)
            .send()
            .await;
        let now = clock.now_ms();
        let (code, message, server_error) = match out {
            Ok(o) => {
                tracing::info!(%product, attempts, "RegisterUsage succeeded: the buyer is entitled");
                let at = o.public_key_rotation_timestamp().map(|t| t.secs()).unwrap_or_default();
                checks.set(
                    product,
                    "register_usage",
                    Check {
                        state: "ok",
                        error_code: String::new(),
                        message: format!("nonce {nonce}; public key rotated at {at}"),
                        at_ms: now,
                        attempts,
                        signature: o.signature().unwrap_or_default().to_string(),
                    },
                );
                return;
            }
            Err(SdkError::ServiceError(se)) => (
                se.err().code().unwrap_or("Unknown").to_string(),
                se.err().message().unwrap_or("").to_string(),
                se.raw().status().is_server_error(),
            ),
            Err(e) => {
                ("NoAnswer".to_string(), aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(), true)
            }
        };
        if !transient(&code, server_error) {
            tracing::error!(%product, error_code = %code, %message, attempts,
                "RegisterUsage refused: this container is not registered for metering (meterd keeps recording and \
                 metering; the product decides what to do)");
            checks.set(
                product,
                "register_usage",
                Check { state: "failed", error_code: code, message, at_ms: now, attempts, signature: String::new() },
            );
            return;
        }
        let delay = super::backoff::full_jitter(attempts).min(max_delay);
        tracing::warn!(%product, error_code = %code, %message, attempts, ?delay, "RegisterUsage failed; retrying");
        checks.set(
            product,
            "register_usage",
            Check { state: "retrying", error_code: code, message, at_ms: now, attempts, signature: String::new() },
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// 32 random hex characters.
fn uuid_like() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

/// Runs the start-up steps of one account's deployment-mode products.
pub async fn run(
    client: Client,
    config: Arc<Config>,
    account: String,
    clock: SharedClock,
    checks: Arc<DeploymentChecks>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let products = deployment_products(&config, &account);
    for name in &products {
        let Some(p) = config.products.get(name) else { continue };
        for d in &p.dimensions {
            let pending = Check {
                state: "pending",
                error_code: String::new(),
                message: String::new(),
                at_ms: clock.now_ms(),
                attempts: 0,
                signature: String::new(),
            };
            checks.set(name, &format!("dry_run:{d}"), pending.clone());
            if p.register_usage {
                checks.set(name, "register_usage", pending.clone());
            }
        }
    }
    let registrations = products.iter().filter_map(|name| {
        let p = config.products.get(name)?;
        p.register_usage.then(|| register(&client, name, p, &clock, &checks, Duration::from_secs(300), stop.clone()))
    });
    let registrations: Vec<_> = registrations.collect();
    // RegisterUsage first: AWS asks for it at launch; the DryRun checks run beside it.
    tokio::join!(
        async {
            for r in registrations {
                r.await;
            }
        },
        dry_run_all(&client, &config, &products, &clock, &checks)
    );
}
