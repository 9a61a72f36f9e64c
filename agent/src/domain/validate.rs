//! Turns a wire event into a [`UsageEvent`] or a precise error naming the field and the rule.
//!
//! The rules mirror what AWS would refuse later (reference §1), so nothing unbillable is ever stored.

use std::sync::LazyLock;

use meterd_proto::v1;
use regex::Regex;

use super::event::{Identity, TagSet, UsageEvent};
use super::quantity::Micros;
use crate::clock::UnixMillis;
use crate::config::{Config, IdentityMode};

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
pub const MAX_TAGS: usize = 5;
pub const MAX_TAG_KEY_LEN: usize = 100;
pub const MAX_TAG_VALUE_LEN: usize = 256;
pub const MAX_ID_LEN: usize = 255;

/// A refused field: `field` is relative to the event (`quantity`, `customer.aws_account.license_arn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// `event.quantity: must not be negative`, with the caller's prefix (`event`, `events[3]`).
    pub fn render(&self, prefix: &str) -> String {
        if self.field.is_empty() {
            format!("{prefix}: {}", self.message)
        } else {
            format!("{prefix}.{}: {}", self.field, self.message)
        }
    }
}

static LICENSE_ARN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^arn:aws[a-zA-Z-]*:[A-Za-z0-9][A-Za-z0-9_/.-]{0,62}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9][A-Za-z0-9:_/+=,@.-]{0,1023}$",
    )
    .expect("static regex")
});

/// AWS's tag pattern `^[a-zA-Z0-9+ -=._:\/@]+$`; note ` -=` is the range 0x20..=0x3D.
pub fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ('\u{20}'..='\u{3d}').contains(&c) || matches!(c, '+' | '.' | '_' | ':' | '/' | '@')
}

pub fn is_license_arn(s: &str) -> bool {
    LICENSE_ARN.is_match(s)
}

fn check_id(field: &str, value: &str, what: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, format!("is required ({what})")));
    }
    if value.chars().count() > MAX_ID_LEN {
        return Err(FieldError::new(field, format!("must be at most {MAX_ID_LEN} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// Validates one wire event against the config at time `now_ms`.
pub fn validate(ev: &v1::UsageEvent, config: &Config, now_ms: UnixMillis) -> Result<UsageEvent, FieldError> {
    // Key.
    let key = &ev.idempotency_key;
    if key.is_empty() {
        return Err(FieldError::new("idempotency_key", "is required; reuse the same key when retrying one event"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(FieldError::new(
            "idempotency_key",
            format!("must be at most {MAX_IDEMPOTENCY_KEY_LEN} characters"),
        ));
    }
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(FieldError::new("idempotency_key", "must be printable ASCII without spaces"));
    }

    // Product.
    let product_name = if ev.product.is_empty() {
        config.default_product().ok_or_else(|| {
            FieldError::new(
                "product",
                format!(
                    "is required: several products are configured ({}) and no default_product",
                    config.product_names()
                ),
            )
        })?
    } else {
        ev.product.as_str()
    };
    let product = config.products.get(product_name).ok_or_else(|| {
        FieldError::new(
            "product",
            format!("{product_name:?} is not a configured product (known: {})", config.product_names()),
        )
    })?;

    // Customer.
    use v1::customer::Identity as Wire;
    let wire = ev
        .customer
        .as_ref()
        .and_then(|c| c.identity.as_ref())
        .ok_or_else(|| FieldError::new("customer", "is required: set tenant_id, aws_account or legacy"))?;
    let identity = match wire {
        Wire::TenantId(t) => {
            check_id("customer.tenant_id", t, "your tenant id")?;
            Identity::Tenant(t.clone())
        }
        Wire::AwsAccount(a) => {
            if product.identity != IdentityMode::License {
                return Err(FieldError::new(
                    "customer.aws_account",
                    format!(
                        "product {product_name:?} uses legacy identity: send customer.legacy or customer.tenant_id"
                    ),
                ));
            }
            let f = "customer.aws_account.customer_aws_account_id";
            check_id(f, &a.customer_aws_account_id, "the buyer's AWS account id")?;
            if !a.customer_aws_account_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FieldError::new(f, "must be digits only (an AWS account id such as 123456789012)"));
            }
            let f = "customer.aws_account.license_arn";
            if a.license_arn.is_empty() {
                return Err(FieldError::new(f, "is required with customer_aws_account_id"));
            }
            if !is_license_arn(&a.license_arn) {
                let hint = if a.license_arn.starts_with("aws:") { " (it lacks the leading \"arn:\")" } else { "" };
                return Err(FieldError::new(f, format!("{:?} is not a valid license ARN{hint}", a.license_arn)));
            }
            Identity::Aws { account_id: a.customer_aws_account_id.clone(), license_arn: a.license_arn.clone() }
        }
        Wire::Legacy(l) => {
            if product.identity != IdentityMode::Legacy {
                return Err(FieldError::new(
                    "customer.legacy",
                    format!(
                        "product {product_name:?} uses license identity: send customer.aws_account or customer.tenant_id"
                    ),
                ));
            }
            check_id("customer.legacy.customer_identifier", &l.customer_identifier, "the CustomerIdentifier")?;
            if !l.product_code.is_empty() && Some(&l.product_code) != product.product_code.as_ref() {
                return Err(FieldError::new(
                    "customer.legacy.product_code",
                    format!("{:?} does not match product {product_name:?}'s product code", l.product_code),
                ));
            }
            Identity::Legacy { customer_identifier: l.customer_identifier.clone() }
        }
    };

    // Dimension.
    if ev.dimension.is_empty() {
        return Err(FieldError::new("dimension", "is required"));
    }
    if !product.dimensions.iter().any(|d| d == &ev.dimension) {
        return Err(FieldError::new(
            "dimension",
            format!(
                "{:?} is not a dimension of product {product_name:?} (known: {}; names are case-sensitive)",
                ev.dimension,
                product.dimensions.join(", ")
            ),
        ));
    }

    // Quantity.
    let quantity = Micros::parse_event(&ev.quantity).map_err(|e| FieldError::new("quantity", e.to_string()))?;

    // Timestamp.
    let timestamp_ms = match &ev.timestamp {
        None => None,
        Some(ts) => {
            if !(0..1_000_000_000).contains(&ts.nanos) {
                return Err(FieldError::new("timestamp", "nanos must be between 0 and 999999999"));
            }
            if ts.seconds < 0 {
                return Err(FieldError::new("timestamp", "must not be before 1970-01-01T00:00:00Z"));
            }
            let ms = ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos / 1_000_000));
            let skew = config.ingest.max_future_skew.as_millis() as i64;
            if ms > now_ms.saturating_add(skew) {
                return Err(FieldError::new(
                    "timestamp",
                    format!(
                        "{} is more than {} ahead of the agent's clock ({}): check the client's clock and time zone (timestamps are UTC)",
                        crate::clock::rfc3339(ms),
                        humantime::format_duration(config.ingest.max_future_skew),
                        crate::clock::rfc3339(now_ms)
                    ),
                ));
            }
            Some(ms)
        }
    };

    // Tags.
    if ev.tags.len() > MAX_TAGS {
        return Err(FieldError::new(
            "tags",
            format!("at most {MAX_TAGS} tags per event (AWS allows 5 per allocation)"),
        ));
    }
    let mut tags = TagSet::new();
    for (k, v) in &ev.tags {
        let field = format!("tags[{k:?}]");
        if k.is_empty() || k.chars().count() > MAX_TAG_KEY_LEN {
            return Err(FieldError::new(field, format!("tag keys are 1-{MAX_TAG_KEY_LEN} characters")));
        }
        if let Some(c) = k.chars().find(|c| !is_tag_char(*c)) {
            return Err(FieldError::new(field, format!("tag key contains {c:?}, which AWS does not allow")));
        }
        if v.is_empty() || v.chars().count() > MAX_TAG_VALUE_LEN {
            return Err(FieldError::new(field, format!("tag values are 1-{MAX_TAG_VALUE_LEN} characters")));
        }
        if let Some(c) = v.chars().find(|c| !is_tag_char(*c)) {
            return Err(FieldError::new(field, format!("tag value contains {c:?}, which AWS does not allow")));
        }
        tags.insert(k.clone(), v.clone());
    }

    Ok(UsageEvent {
        idempotency_key: key.clone(),
        product: product_name.to_string(),
        identity,
        dimension: ev.dimension.clone(),
        quantity,
        timestamp_ms,
        tags,
    })
}
