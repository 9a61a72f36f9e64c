//! The emulator's configuration: the seller's catalog (products, dimensions), who is subscribed, which
//! registration tokens resolve to whom, the service's limits and the faults to inject. Read from TOML.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::faults::RateLimitMode;
use crate::rules;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Seeds the fault RNG and MeteringRecordId generation, so a failing run can be replayed.
    pub seed: u64,
    /// BatchMeterUsage calls per second (MeterUsage has its own bucket at the same rate); excess calls get
    /// `ThrottlingException`. AWS's quota is 10. `0` turns the limit off.
    pub rate_limit_per_sec: f64,
    /// How the limit is enforced: `token_bucket` (burst of one second's worth) or `rolling_window` (at most
    /// `rate_limit_per_sec` calls in any rolling second). AWS does not document its shape.
    pub rate_limit_mode: RateLimitMode,
    /// How long after the start of a record's hour BatchMeterUsage still accepts it (AWS: 24 h). The month-end
    /// cap (06:00 UTC on the 1st of the next month) applies on top.
    pub submission_window_secs: u64,
    /// The same for MeterUsage (AWS: 6 h).
    pub meter_usage_window_secs: u64,
    /// Added to the clock's time; changeable at run time.
    pub clock_offset_secs: i64,
    /// Refuse (`ValidationException`) a BatchMeterUsage record that has `CustomerAWSAccountId` and any
    /// `CustomerIdentifier` member, even `""` (what the bare Rust SDK sends): holds a client to the shape the other
    /// AWS SDKs send. Off by default, where `""` counts as absent.
    pub strict_wire: bool,
    pub products: Vec<EmuProduct>,
    /// Customers subscribed at start.
    pub customers: Vec<EmuCustomer>,
    pub registration_tokens: Vec<EmuToken>,
    /// Whether this emulated host is a container platform (Amazon ECS/EKS): when false (the default),
    /// `RegisterUsage` answers `PlatformNotSupportedException`, as it does on an EC2 instance.
    pub container_platform: bool,
    /// Product codes whose buyer (the account the emulated host runs in) is not entitled: `MeterUsage` and
    /// `RegisterUsage` answer `CustomerNotEntitledException`, DryRun included.
    pub not_entitled: Vec<String>,
    pub faults: Faults,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            rate_limit_per_sec: 10.0,
            rate_limit_mode: RateLimitMode::TokenBucket,
            submission_window_secs: 86_400,
            meter_usage_window_secs: 21_600,
            clock_offset_secs: 0,
            strict_wire: false,
            products: Vec::new(),
            customers: Vec::new(),
            registration_tokens: Vec::new(),
            container_platform: false,
            not_entitled: Vec::new(),
            faults: Faults::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmuProduct {
    pub product_code: String,
    /// Dimension API keys; matched case-sensitively.
    pub dimensions: Vec<String>,
}

/// A subscribed customer. Concurrent Agreements customers have `aws_account_id` + `license_arn`; legacy ones
/// have `customer_identifier`; a 2025-style integration may have only `aws_account_id` (metered with ProductCode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmuCustomer {
    pub product_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_identifier: Option<String>,
}

impl EmuCustomer {
    pub fn licensed(product_code: &str, aws_account_id: &str, license_arn: &str) -> Self {
        Self {
            product_code: product_code.into(),
            aws_account_id: Some(aws_account_id.into()),
            license_arn: Some(license_arn.into()),
            customer_identifier: None,
        }
    }

    pub fn legacy(product_code: &str, customer_identifier: &str) -> Self {
        Self {
            product_code: product_code.into(),
            customer_identifier: Some(customer_identifier.into()),
            ..Self::default()
        }
    }

    /// True when every field set in `pattern` equals this customer's (used to remove customers by partial identity).
    pub(crate) fn matches(&self, pattern: &EmuCustomer) -> bool {
        let opt = |p: &Option<String>, v: &Option<String>| p.is_none() || p == v;
        (pattern.product_code.is_empty() || pattern.product_code == self.product_code)
            && opt(&pattern.aws_account_id, &self.aws_account_id)
            && opt(&pattern.license_arn, &self.license_arn)
            && opt(&pattern.customer_identifier, &self.customer_identifier)
    }
}

/// A registration token as ResolveCustomer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmuToken {
    pub token: String,
    pub product_code: String,
    pub aws_account_id: Option<String>,
    pub license_arn: Option<String>,
    pub customer_identifier: Option<String>,
    pub agreement_id: Option<String>,
    /// ResolveCustomer answers `ExpiredTokenException`.
    pub expired: bool,
    /// Whether the token's customer also starts subscribed (a buyer who got a token normally has an agreement).
    /// Defaults to true; set false to model a buyer whose agreement is not active yet.
    pub subscribed: bool,
}

impl Default for EmuToken {
    fn default() -> Self {
        Self {
            token: String::new(),
            product_code: String::new(),
            aws_account_id: None,
            license_arn: None,
            customer_identifier: None,
            agreement_id: None,
            expired: false,
            subscribed: true,
        }
    }
}

impl EmuToken {
    pub fn customer(&self) -> EmuCustomer {
        EmuCustomer {
            product_code: self.product_code.clone(),
            aws_account_id: self.aws_account_id.clone(),
            license_arn: self.license_arn.clone(),
            customer_identifier: self.customer_identifier.clone(),
        }
    }
}

/// Faults injected into the AWS API (never into the inspection API). Probabilities are per call, except
/// `unprocessed_probability`, which is per record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answer `ThrottlingException` (400) without processing.
    pub throttle_probability: f64,
    /// Answer `InternalServiceErrorException` (500) without processing.
    pub internal_error_probability: f64,
    /// Return a BatchMeterUsage record in `UnprocessedRecords` (not processed, not billed).
    pub unprocessed_probability: f64,
    /// Delay every AWS answer by this much, after the request was processed (as a slow return path would: a
    /// client that gives up early may still have been billed).
    pub latency_ms: u64,
    /// Close the connection without answering and without processing the request.
    pub drop_connection_probability: f64,
    /// Process the request, then close the connection without answering (the lost-acknowledgement case).
    pub drop_response_probability: f64,
}

impl Faults {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let probs = [
            ("throttle_probability", self.throttle_probability),
            ("internal_error_probability", self.internal_error_probability),
            ("unprocessed_probability", self.unprocessed_probability),
            ("drop_connection_probability", self.drop_connection_probability),
            ("drop_response_probability", self.drop_response_probability),
        ];
        for (key, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(format!("faults.{key}"), format!("{p} is not a probability; use 0.0 to 1.0")));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read emulator config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("emulator config is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("emulator config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

impl EmulatorConfig {
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let cfg: EmulatorConfig = toml::from_str(s)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(p: &Path) -> Result<Self, ConfigError> {
        let s = std::fs::read_to_string(p).map_err(|source| ConfigError::Io { path: p.to_path_buf(), source })?;
        Self::from_toml_str(&s)
    }

    /// A ready-to-use catalog: product `demo-product` with dimensions `requests` and `gb_stored`, one subscribed
    /// Concurrent Agreements customer, and a token resolving to it. Used when no config file is given.
    pub fn demo() -> Self {
        let product = "demo-product";
        let account = "111122223333";
        let license = "arn:aws:license-manager::111122223333:license:l-demo0000000000001";
        Self {
            products: vec![EmuProduct {
                product_code: product.into(),
                dimensions: vec!["requests".into(), "gb_stored".into()],
            }],
            customers: vec![EmuCustomer::licensed(product, account, license)],
            registration_tokens: vec![EmuToken {
                token: "demo-token".into(),
                product_code: product.into(),
                aws_account_id: Some(account.into()),
                license_arn: Some(license.into()),
                agreement_id: Some("agmt-demo0000000000000000001".into()),
                ..EmuToken::default()
            }],
            ..Self::default()
        }
    }

    /// Checks what the service itself would refuse to hold, naming the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.rate_limit_per_sec.is_finite() || self.rate_limit_per_sec < 0.0 {
            return Err(invalid("rate_limit_per_sec", "must be a number >= 0 (0 turns the limit off)"));
        }
        if self.submission_window_secs == 0 {
            return Err(invalid("submission_window_secs", "must be > 0 (AWS: 86400)"));
        }
        if self.meter_usage_window_secs == 0 {
            return Err(invalid("meter_usage_window_secs", "must be > 0 (AWS: 21600)"));
        }
        self.faults.validate()?;
        let mut codes = std::collections::BTreeSet::new();
        for (i, p) in self.products.iter().enumerate() {
            let key = format!("products[{i}].product_code");
            if p.product_code.is_empty() || !rules::is_product_code(&p.product_code) {
                return Err(invalid(key, "must be 1-255 characters of [-a-zA-Z0-9/=:_.@]"));
            }
            if !codes.insert(p.product_code.as_str()) {
                return Err(invalid(key, format!("product `{}` is listed twice", p.product_code)));
            }
            let mut dims = std::collections::BTreeSet::new();
            for d in &p.dimensions {
                if d.is_empty() || d.chars().count() > 255 {
                    return Err(invalid(
                        format!("products[{i}].dimensions"),
                        "each dimension must be 1-255 characters",
                    ));
                }
                if !dims.insert(d) {
                    return Err(invalid(format!("products[{i}].dimensions"), format!("`{d}` is listed twice")));
                }
            }
        }
        for (i, c) in self.customers.iter().enumerate() {
            check_customer(&format!("customers[{i}]"), c, &codes)?;
        }
        let mut tokens = std::collections::BTreeSet::new();
        for (i, t) in self.registration_tokens.iter().enumerate() {
            let key = format!("registration_tokens[{i}]");
            if t.token.is_empty() {
                return Err(invalid(format!("{key}.token"), "must not be empty"));
            }
            if !tokens.insert(t.token.as_str()) {
                return Err(invalid(format!("{key}.token"), format!("token `{}` is listed twice", t.token)));
            }
            check_customer(&key, &t.customer(), &codes)?;
        }
        Ok(())
    }
}

fn check_customer(key: &str, c: &EmuCustomer, codes: &std::collections::BTreeSet<&str>) -> Result<(), ConfigError> {
    customer_problem(c, codes.contains(c.product_code.as_str())).map_err(|(field, message)| {
        invalid(if field.is_empty() { key.to_string() } else { format!("{key}.{field}") }, message)
    })
}

/// What is wrong with a customer definition, as (field, message); shared by the config file and the inspection API.
pub(crate) fn customer_problem(c: &EmuCustomer, product_known: bool) -> Result<(), (&'static str, String)> {
    if !product_known {
        return Err((
            "product_code",
            format!("product `{}` is not in [[products]]; add it there first", c.product_code),
        ));
    }
    if let Some(a) = &c.aws_account_id
        && !rules::is_account_id(a)
    {
        return Err(("aws_account_id", "must be digits only, 1-255 characters".into()));
    }
    if let Some(l) = &c.license_arn {
        if !rules::is_license_arn(l) {
            return Err(("license_arn", "is not a valid LicenseArn (arn:aws:license-manager:...)".into()));
        }
        if c.aws_account_id.is_none() {
            return Err(("aws_account_id", "is required with license_arn".into()));
        }
    }
    if c.customer_identifier.as_deref().is_some_and(str::is_empty) {
        return Err(("customer_identifier", "must not be empty; leave it out instead".into()));
    }
    if c.aws_account_id.is_none() && c.customer_identifier.is_none() {
        return Err(("", "needs aws_account_id (+ license_arn) or customer_identifier".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_aws() {
        let c = EmulatorConfig::from_toml_str("").unwrap();
        assert_eq!(c.rate_limit_per_sec, 10.0);
        assert_eq!(c.rate_limit_mode, RateLimitMode::TokenBucket);
        let c = EmulatorConfig::from_toml_str("rate_limit_mode = \"rolling_window\"").unwrap();
        assert_eq!(c.rate_limit_mode, RateLimitMode::RollingWindow);
        let e = EmulatorConfig::from_toml_str("rate_limit_mode = \"leaky\"").unwrap_err().to_string();
        assert!(e.contains("rolling_window"), "{e}");
        assert_eq!(c.submission_window_secs, 86_400);
        assert_eq!(c.meter_usage_window_secs, 21_600);
        assert!(!c.strict_wire);
        assert!(EmulatorConfig::from_toml_str("strict_wire = true").unwrap().strict_wire);
    }

    #[test]
    fn errors_name_the_key() {
        let e = EmulatorConfig::from_toml_str("[[customers]]\nproduct_code = \"nope\"\ncustomer_identifier = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("customers[0].product_code"), "{e}");
        let e = EmulatorConfig::from_toml_str("bogus = 1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = EmulatorConfig::from_toml_str("[faults]\nthrottle_probability = 2.0").unwrap_err().to_string();
        assert!(e.contains("faults.throttle_probability"), "{e}");
    }

    #[test]
    fn demo_is_valid() {
        EmulatorConfig::demo().validate().unwrap();
    }
}
