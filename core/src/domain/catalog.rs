//! What the agent meters, as plain data: products, their dimensions and identity modes, and the limits every
//! event is held to. Built once from the configuration (`Config::catalog`), so the domain never reads config.

use std::collections::BTreeMap;

use crate::clock::UnixMillis;

/// How a product's customers are identified on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// Concurrent Agreements: `CustomerAWSAccountId` + `LicenseArn`.
    License,
    /// Legacy listings: `ProductCode` + `CustomerIdentifier`.
    Legacy,
    /// AMI and container products: no customer on the event; the buyer is whoever's host meterd runs on,
    /// known to AWS by the credentials `MeterUsage` is signed with.
    Deployment,
}

/// One metered product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub identity: IdentityMode,
    pub product_code: Option<String>,
    /// Dimension API keys exactly as listed in AWS Marketplace (case-sensitive).
    pub dimensions: Vec<String>,
}

/// What happens to usage that arrives for an hour that is already sealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatePolicy {
    /// Count it in the current open hour and report it as late.
    #[default]
    Carry,
    /// Refuse it.
    Reject,
}

/// The bounds an event is held to. Durations in milliseconds; the names of the settings they come from appear
/// in the messages, since that is what an operator can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How far ahead of the agent's clock a timestamp may be (`ingest.max_future_skew`).
    pub max_future_skew_ms: i64,
    /// How old a timestamp may be and still be deduplicated (`storage.dedupe_window`).
    pub dedupe_horizon_ms: i64,
    /// How old usage may be and still be billed (`pipeline.max_lateness`); `None` = only the dedupe horizon.
    pub max_lateness_ms: Option<i64>,
    /// `pipeline.late_usage`.
    pub late: LatePolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_future_skew_ms: 5 * 60_000,
            dedupe_horizon_ms: 48 * crate::clock::HOUR_MS,
            max_lateness_ms: None,
            late: LatePolicy::Carry,
        }
    }
}

impl Limits {
    /// The oldest event time still billed at `now_ms`, if there is a bound.
    pub fn oldest_billable(&self, now_ms: UnixMillis) -> Option<UnixMillis> {
        self.max_lateness_ms.map(|l| now_ms.saturating_sub(l))
    }
}

pub fn valid_product_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 255 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/=:_.@".contains(&b))
}

/// Everything an event is validated and decided against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub products: BTreeMap<String, Product>,
    /// Explicit default; with exactly one product that product is the default.
    pub default_product: Option<String>,
    pub limits: Limits,
}

impl Catalog {
    pub fn product(&self, name: &str) -> Option<&Product> {
        self.products.get(name)
    }

    /// The product an event without one is counted under.
    pub fn default_product(&self) -> Option<&str> {
        match &self.default_product {
            Some(p) => Some(p.as_str()),
            None if self.products.len() == 1 => self.products.keys().next().map(String::as_str),
            None => None,
        }
    }

    /// "a, b, c": for messages that list what is known.
    pub fn product_names(&self) -> String {
        self.products.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Product {
        Product { identity: IdentityMode::License, product_code: None, dimensions: vec!["d".into()] }
    }

    #[test]
    fn a_single_product_is_the_default_and_several_need_one_named() {
        let mut c = Catalog { products: [("a".to_string(), product())].into(), ..Catalog::default() };
        assert_eq!(c.default_product(), Some("a"));
        c.products.insert("b".into(), product());
        assert_eq!(c.default_product(), None);
        c.default_product = Some("b".into());
        assert_eq!(c.default_product(), Some("b"));
        assert_eq!(c.product_names(), "a, b");
    }

    #[test]
    fn the_lateness_bound_is_optional() {
        let l = Limits { max_lateness_ms: Some(10), ..Limits::default() };
        assert_eq!(l.oldest_billable(100), Some(90));
        assert_eq!(Limits::default().oldest_billable(100), None);
        assert_eq!(l.oldest_billable(i64::MIN), Some(i64::MIN), "saturates, never wraps");
    }
}
