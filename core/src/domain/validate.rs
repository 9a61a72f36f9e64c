//! Turns a wire event into a [`UsageEvent`] or a precise error naming the field and the rule.
//!
//! The rules mirror what AWS would refuse later (reference §1), so nothing unbillable is ever stored.

use std::collections::HashMap;

use super::catalog::{Catalog, IdentityMode};
use super::echo::echo;
use super::event::{Identity, TagSet, UsageEvent};
use super::quantity::Micros;
use crate::clock::UnixMillis;

/// An event as the caller sent it, before any rule is applied. The gRPC edge fills it from the wire message
/// (moving, not copying, its strings); every rule lives in [`validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawEvent {
    pub idempotency_key: String,
    /// Empty: the catalog's default product.
    pub product: String,
    pub customer: Option<RawCustomer>,
    pub dimension: String,
    pub quantity: String,
    pub timestamp: Option<RawTimestamp>,
    pub tags: HashMap<String, String>,
}

/// The customer in one of the three shapes the API accepts, unchecked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawCustomer {
    TenantId(String),
    AwsAccount { customer_aws_account_id: String, license_arn: String },
    Legacy { customer_identifier: String, product_code: String },
}

/// Seconds and nanoseconds since the Unix epoch, unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawTimestamp {
    pub seconds: i64,
    pub nanos: i32,
}

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
pub const MAX_TAGS: usize = 5;
pub const MAX_TAG_KEY_LEN: usize = 100;
pub const MAX_TAG_VALUE_LEN: usize = 256;
pub const MAX_ID_LEN: usize = 255;

/// A non-negative span of milliseconds as a `Duration`, for messages.
fn duration(ms: i64) -> std::time::Duration {
    std::time::Duration::from_millis(ms.max(0) as u64)
}

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

/// AWS's tag pattern `^[a-zA-Z0-9+ -=._:\/@]+$`; note ` -=` is the range 0x20..=0x3D.
pub fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ('\u{20}'..='\u{3d}').contains(&c) || matches!(c, '+' | '.' | '_' | ':' | '/' | '@')
}

/// AWS's pattern for a license ARN, `^arn:aws[a-zA-Z-]*:[A-Za-z0-9][A-Za-z0-9_/.-]{0,62}:[A-Za-z0-9_/.-]{0,63}:`
/// `[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9][A-Za-z0-9:_/+=,@.-]{0,1023}$`, checked by hand: it runs for every event of
/// every batch, where the regex took ~3% of a batch call's CPU. Only the last part may hold a `:`, so the first four
/// colons split the parts exactly as the regex does (a test holds the two equal on random strings).
pub fn is_license_arn(s: &str) -> bool {
    fn part(p: &str, min: usize, max: usize, first_alnum: bool, ok: impl Fn(u8) -> bool) -> bool {
        let b = p.as_bytes();
        (min..=max).contains(&b.len())
            && b.iter().enumerate().all(|(i, &c)| if i == 0 && first_alnum { c.is_ascii_alphanumeric() } else { ok(c) })
    }
    let path = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'/' | b'.' | b'-');
    let Some(rest) = s.strip_prefix("arn:aws") else { return false };
    let mut parts = rest.splitn(5, ':');
    let (Some(partition), Some(service), Some(region), Some(account), Some(resource)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    part(partition, 0, usize::MAX, false, |c| c.is_ascii_alphabetic() || c == b'-')
        && part(service, 1, 63, true, path)
        && part(region, 0, 63, false, path)
        && part(account, 0, 63, false, path)
        && part(resource, 1, 1024, true, |c| path(c) || matches!(c, b':' | b'+' | b'=' | b',' | b'@'))
}

/// 1-255 characters, no control characters: tenant ids and customer identifiers.
pub fn valid_id(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is required".into());
    }
    if value.chars().count() > MAX_ID_LEN {
        return Err(format!("must be at most {MAX_ID_LEN} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
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

/// Validates one event against the catalog at time `now_ms`.
pub fn validate(ev: RawEvent, catalog: &Catalog, now_ms: UnixMillis) -> Result<UsageEvent, FieldError> {
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
        catalog.default_product().ok_or_else(|| {
            FieldError::new(
                "product",
                format!(
                    "is required: several products are configured ({}) and no default_product",
                    catalog.product_names()
                ),
            )
        })?
    } else {
        ev.product.as_str()
    };
    let product = catalog.product(product_name).ok_or_else(|| {
        FieldError::new(
            "product",
            format!("{} is not a configured product (known: {})", echo(product_name), catalog.product_names()),
        )
    })?;

    // Customer.
    if product.identity == IdentityMode::Deployment {
        // Checked before the rest: such an event names no customer at all.
        super::deployment::event_identity(ev.customer.as_ref(), product_name)?;
    }
    let identity = match ev.customer {
        None if product.identity == IdentityMode::Deployment => Identity::Deployment,
        None => return Err(FieldError::new("customer", "is required: set tenant_id, aws_account or legacy")),
        Some(RawCustomer::TenantId(t)) => {
            check_id("customer.tenant_id", &t, "your tenant id")?;
            Identity::Tenant(t)
        }
        Some(RawCustomer::AwsAccount { customer_aws_account_id, license_arn }) => {
            if product.identity != IdentityMode::License {
                return Err(FieldError::new(
                    "customer.aws_account",
                    format!(
                        "product {product_name:?} uses legacy identity: send customer.legacy or customer.tenant_id"
                    ),
                ));
            }
            let f = "customer.aws_account.customer_aws_account_id";
            check_id(f, &customer_aws_account_id, "the buyer's AWS account id")?;
            if !customer_aws_account_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FieldError::new(f, "must be digits only (an AWS account id such as 123456789012)"));
            }
            let f = "customer.aws_account.license_arn";
            if license_arn.is_empty() {
                return Err(FieldError::new(f, "is required with customer_aws_account_id"));
            }
            if !is_license_arn(&license_arn) {
                let hint = if license_arn.starts_with("aws:") { " (it lacks the leading \"arn:\")" } else { "" };
                return Err(FieldError::new(f, format!("{} is not a valid license ARN{hint}", echo(&license_arn))));
            }
            Identity::Aws { account_id: customer_aws_account_id, license_arn }
        }
        Some(RawCustomer::Legacy { customer_identifier, product_code }) => {
            if product.identity != IdentityMode::Legacy {
                return Err(FieldError::new(
                    "customer.legacy",
                    format!(
                        "product {product_name:?} uses license identity: send customer.aws_account or customer.tenant_id"
                    ),
                ));
            }
            check_id("customer.legacy.customer_identifier", &customer_identifier, "the CustomerIdentifier")?;
            if !product_code.is_empty() && Some(&product_code) != product.product_code.as_ref() {
                return Err(FieldError::new(
                    "customer.legacy.product_code",
                    format!("{} does not match product {product_name:?}'s product code", echo(&product_code)),
                ));
            }
            Identity::Legacy { customer_identifier }
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
                "{} is not a dimension of product {product_name:?} (known: {}; names are case-sensitive)",
                echo(&ev.dimension),
                product.dimensions.join(", ")
            ),
        ));
    }

    // Quantity.
    let quantity = Micros::parse_event(&ev.quantity).map_err(|e| FieldError::new("quantity", e.to_string()))?;

    // Timestamp.
    let timestamp_ms = match ev.timestamp {
        None => None,
        Some(ts) => {
            if !(0..1_000_000_000).contains(&ts.nanos) {
                return Err(FieldError::new("timestamp", "nanos must be between 0 and 999999999"));
            }
            if ts.seconds < 0 {
                return Err(FieldError::new("timestamp", "must not be before 1970-01-01T00:00:00Z"));
            }
            let ms = ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos / 1_000_000));
            let skew = catalog.limits.max_future_skew_ms;
            if ms > now_ms.saturating_add(skew) {
                return Err(FieldError::new(
                    "timestamp",
                    format!(
                        "{} is more than {} ahead of the agent's clock ({}): check the client's clock and time zone (timestamps are UTC)",
                        crate::clock::rfc3339(ms),
                        humantime::format_duration(duration(skew)),
                        crate::clock::rfc3339(now_ms)
                    ),
                ));
            }
            // Idempotency keys are remembered for the window only: an event older than it could be a retry of one
            // already forgotten, and counting it again would bill it twice.
            let window = catalog.limits.dedupe_horizon_ms;
            if ms < now_ms.saturating_sub(window) {
                return Err(FieldError::new(
                    "timestamp",
                    format!(
                        "{} is older than storage.dedupe_window ({}): an event that old can no longer be deduplicated \
                         (a retry after the window is not recognised), so it is not counted",
                        crate::clock::rfc3339(ms),
                        humantime::format_duration(duration(window))
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
    for (k, v) in &ev.tags {
        // Formatted only for a refusal: this loop runs for every tag of every event.
        let field = || format!("tags[{}]", echo(k));
        if k.is_empty() || k.chars().count() > MAX_TAG_KEY_LEN {
            return Err(FieldError::new(field(), format!("tag keys are 1-{MAX_TAG_KEY_LEN} characters")));
        }
        if let Some(c) = k.chars().find(|c| !is_tag_char(*c)) {
            return Err(FieldError::new(field(), format!("tag key contains {c:?}, which AWS does not allow")));
        }
        if v.is_empty() || v.chars().count() > MAX_TAG_VALUE_LEN {
            return Err(FieldError::new(field(), format!("tag values are 1-{MAX_TAG_VALUE_LEN} characters")));
        }
        if let Some(c) = v.chars().find(|c| !is_tag_char(*c)) {
            return Err(FieldError::new(field(), format!("tag value contains {c:?}, which AWS does not allow")));
        }
    }
    let tags: TagSet = ev.tags.into_iter().collect();

    Ok(UsageEvent {
        idempotency_key: ev.idempotency_key,
        product: product_name.to_string(),
        identity,
        dimension: ev.dimension,
        quantity,
        timestamp_ms,
        tags,
    })
}

#[cfg(test)]
mod tests {
    use super::super::catalog::{Limits, Product};
    use super::*;

    const NOW: UnixMillis = 1_790_000_000_000;
    const ARN: &str = "arn:aws:license-manager::111122223333:license:l-0123456789abcdef";

    /// AWS's pattern, as a regex: the oracle the hand-written check is held to.
    fn license_arn_regex() -> regex::Regex {
        regex::Regex::new(
            r"^arn:aws[a-zA-Z-]*:[A-Za-z0-9][A-Za-z0-9_/.-]{0,62}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9][A-Za-z0-9:_/+=,@.-]{0,1023}$",
        )
        .unwrap()
    }

    #[test]
    fn license_arns_are_checked_as_aws_s_pattern_says() {
        let re = license_arn_regex();
        let long = |n: usize| "a".repeat(n);
        for s in [
            ARN,
            "arn:aws-us-gov:license-manager:us-gov-west-1:111122223333:license:l-1",
            "arn:aws:s:::r",
            "arn:aws:s:::",
            "arn:aws::::r",
            "arn:aws:s::r",
            "arn:aws:_s:::r",
            "arn:aws:s:::_r",
            "arn:aws:s:::r:x:y+=,@",
            "aws:license-manager::111122223333:license:l-1",
            "arn:aws:license-manager::111122223333:license:l-1\n",
            "arn:aws:license-manager::1111 2222:license:l-1",
            "arn:aws:licence-manager::111122223333:license:l-é",
            "",
            &format!("arn:aws:{}:::r", long(63)),
            &format!("arn:aws:{}:::r", long(64)),
            &format!("arn:aws:s:{}:{}:r", long(63), long(63)),
            &format!("arn:aws:s:{}::r", long(64)),
            &format!("arn:aws:s::{}:r", long(64)),
            &format!("arn:aws:s:::{}", long(1024)),
            &format!("arn:aws:s:::{}", long(1025)),
        ] {
            assert_eq!(is_license_arn(s), re.is_match(s), "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_license_arn_check_agrees_with_the_regex(
            s in "arn:aws[a-zA-Z:-]{0,3}[A-Za-z0-9_/.:+=,@ é-]{0,12}(:[A-Za-z0-9_/.:+=,@ é-]{0,8}){0,6}"
        ) {
            proptest::prop_assert_eq!(is_license_arn(&s), license_arn_regex().is_match(&s), "{:?}", s);
        }
    }

    fn config() -> Catalog {
        let product = |identity, code: Option<&str>, dimensions: &[&str]| Product {
            identity,
            product_code: code.map(str::to_string),
            dimensions: dimensions.iter().map(|d| d.to_string()).collect(),
        };
        Catalog {
            products: [
                ("lic".to_string(), product(IdentityMode::License, None, &["api_calls", "Storage"])),
                ("leg".to_string(), product(IdentityMode::Legacy, Some("pc123"), &["seats"])),
                ("ami".to_string(), product(IdentityMode::Deployment, Some("ami123"), &["vcpu_hours"])),
            ]
            .into(),
            default_product: Some("lic".into()),
            limits: Limits { max_future_skew_ms: 300_000, dedupe_horizon_ms: 45 * 24 * 3_600_000, ..Limits::default() },
        }
    }

    fn good() -> RawEvent {
        RawEvent {
            idempotency_key: "k-1".into(),
            customer: Some(RawCustomer::AwsAccount {
                customer_aws_account_id: "123456789012".into(),
                license_arn: ARN.into(),
            }),
            dimension: "api_calls".into(),
            quantity: "1.5".into(),
            timestamp: None,
            tags: Default::default(),
            product: String::new(),
        }
    }

    fn legacy(id: &str, code: &str) -> RawEvent {
        RawEvent {
            product: "leg".into(),
            dimension: "seats".into(),
            customer: Some(RawCustomer::Legacy { customer_identifier: id.into(), product_code: code.into() }),
            ..good()
        }
    }

    /// Asserts the event is refused on `field` with a message containing `needle`.
    fn refused(ev: RawEvent, field: &str, needle: &str) {
        let e = validate(ev, &config(), NOW).expect_err("must be refused");
        assert_eq!(e.field, field, "{e:?}");
        assert!(e.message.contains(needle), "{:?} lacks {needle:?}", e.message);
    }

    fn with_tags(tags: &[(&str, &str)]) -> RawEvent {
        RawEvent { tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..good() }
    }

    fn ts(seconds: i64, nanos: i32) -> Option<RawTimestamp> {
        Some(RawTimestamp { seconds, nanos })
    }

    #[test]
    fn accepts_each_identity_shape() {
        let c = config();
        let e = validate(good(), &c, NOW).unwrap();
        assert_eq!(e.product, "lic");
        assert_eq!(e.quantity, Micros(1_500_000));
        assert!(validate(legacy("cust-1", ""), &c, NOW).is_ok());
        assert!(validate(legacy("cust-1", "pc123"), &c, NOW).is_ok());
        let tenant = RawEvent { customer: Some(RawCustomer::TenantId("acme".into())), ..good() };
        assert_eq!(validate(tenant, &c, NOW).unwrap().identity, Identity::Tenant("acme".into()));
        let allowed = with_tags(&[("team", "a b"), ("cost-center", "x=1;y<2"), ("p", "a/b:c@d.e_f+g!\"#$%&'()*,")]);
        assert!(validate(allowed, &c, NOW).is_ok());
        assert!(validate(RawEvent { timestamp: ts(NOW / 1000 + 299, 0), ..good() }, &c, NOW).is_ok());
    }

    #[test]
    fn deployment_products_take_events_without_a_customer_only() {
        let c = config();
        let ev = RawEvent { product: "ami".into(), dimension: "vcpu_hours".into(), customer: None, ..good() };
        assert_eq!(validate(ev.clone(), &c, NOW).unwrap().identity, Identity::Deployment);
        // (An empty Customer message is no customer: server/convert.rs maps it to None.)
        refused(
            RawEvent { customer: good().customer, ..ev.clone() },
            "customer.aws_account",
            "identity = \"deployment\"",
        );
        refused(
            RawEvent { customer: Some(RawCustomer::TenantId("t".into())), ..ev.clone() },
            "customer.tenant_id",
            "leave customer unset",
        );
        // Other products still require a customer.
        refused(RawEvent { customer: None, ..good() }, "customer", "is required");
    }

    #[test]
    fn idempotency_key_rules() {
        refused(RawEvent { idempotency_key: String::new(), ..good() }, "idempotency_key", "is required");
        refused(RawEvent { idempotency_key: "k".repeat(129), ..good() }, "idempotency_key", "at most 128");
        refused(RawEvent { idempotency_key: "a b".into(), ..good() }, "idempotency_key", "printable ASCII");
        refused(RawEvent { idempotency_key: "é".into(), ..good() }, "idempotency_key", "printable ASCII");
    }

    #[test]
    fn product_rules() {
        refused(RawEvent { product: "nope".into(), ..good() }, "product", "not a configured product");
        let mut c = config();
        c.default_product = None;
        let e = validate(good(), &c, NOW).unwrap_err();
        assert_eq!(e.field, "product");
        assert!(e.message.contains("no default_product"));
    }

    #[test]
    fn customer_rules() {
        refused(RawEvent { customer: None, ..good() }, "customer", "is required");
        let aws = |acct: &str, arn: &str| RawEvent {
            customer: Some(RawCustomer::AwsAccount { customer_aws_account_id: acct.into(), license_arn: arn.into() }),
            ..good()
        };
        let acct = "customer.aws_account.customer_aws_account_id";
        refused(aws("", ARN), acct, "is required");
        refused(aws("12345678901a", ARN), acct, "digits only");
        refused(aws(&"1".repeat(256), ARN), acct, "at most 255");
        let arn = "customer.aws_account.license_arn";
        refused(aws("123456789012", ""), arn, "is required");
        refused(aws("123456789012", "not-an-arn"), arn, "not a valid license ARN");
        refused(aws("123456789012", &ARN[4..]), arn, "lacks the leading \"arn:\"");
        let tenant = |t: &str| RawEvent { customer: Some(RawCustomer::TenantId(t.into())), ..good() };
        refused(tenant(""), "customer.tenant_id", "is required");
        refused(tenant("a\nb"), "customer.tenant_id", "control characters");
        refused(tenant(&"t".repeat(256)), "customer.tenant_id", "at most 255");
        // Shapes must match the product's identity mode: never mix the two on one product.
        refused(
            RawEvent { product: "leg".into(), dimension: "seats".into(), ..good() },
            "customer.aws_account",
            "legacy identity",
        );
        refused(
            RawEvent { product: "lic".into(), dimension: "api_calls".into(), ..legacy("c", "") },
            "customer.legacy",
            "license identity",
        );
        refused(legacy("", ""), "customer.legacy.customer_identifier", "is required");
        refused(legacy("c", "other"), "customer.legacy.product_code", "does not match");
    }

    #[test]
    fn dimension_rules() {
        refused(RawEvent { dimension: String::new(), ..good() }, "dimension", "is required");
        refused(RawEvent { dimension: "storage".into(), ..good() }, "dimension", "case-sensitive");
        refused(RawEvent { dimension: "seats".into(), ..good() }, "dimension", "not a dimension of product \"lic\"");
    }

    #[test]
    fn quantity_rules() {
        refused(RawEvent { quantity: String::new(), ..good() }, "quantity", "is required");
        refused(RawEvent { quantity: "-1".into(), ..good() }, "quantity", "negative");
        refused(RawEvent { quantity: "1e3".into(), ..good() }, "quantity", "not a plain decimal");
        refused(RawEvent { quantity: "0.1234567".into(), ..good() }, "quantity", "more than 6 decimal places");
        refused(RawEvent { quantity: "2147483648".into(), ..good() }, "quantity", "maximum");
    }

    #[test]
    fn timestamp_rules() {
        refused(RawEvent { timestamp: ts(NOW / 1000 + 301, 0), ..good() }, "timestamp", "ahead of the agent's clock");
        refused(RawEvent { timestamp: ts(-1, 0), ..good() }, "timestamp", "before 1970");
        refused(RawEvent { timestamp: ts(0, -1), ..good() }, "timestamp", "nanos");
        refused(RawEvent { timestamp: ts(0, 1_000_000_000), ..good() }, "timestamp", "nanos");
        refused(RawEvent { timestamp: ts(i64::MAX, 0), ..good() }, "timestamp", "ahead");
        refused(
            RawEvent { timestamp: ts(NOW / 1000 - 46 * 24 * 3600, 0), ..good() },
            "timestamp",
            "older than storage.dedupe_window",
        );
        assert!(validate(RawEvent { timestamp: ts(NOW / 1000 - 44 * 24 * 3600, 0), ..good() }, &config(), NOW).is_ok());
    }

    #[test]
    fn tag_rules() {
        let six: Vec<(String, String)> = (0..6).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let six: Vec<(&str, &str)> = six.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        refused(with_tags(&six), "tags", "at most 5");
        refused(with_tags(&[("", "v")]), "tags[\"\"]", "1-100");
        let long_key = "k".repeat(101);
        refused(with_tags(&[(&long_key, "v")]), &format!("tags[{}]", echo(&long_key)), "1-100");
        refused(with_tags(&[("k", "")]), "tags[\"k\"]", "1-256");
        refused(with_tags(&[("k", &"v".repeat(257))]), "tags[\"k\"]", "1-256");
        refused(with_tags(&[("k>", "v")]), "tags[\"k>\"]", "key contains '>'");
        refused(with_tags(&[("k", "a|b")]), "tags[\"k\"]", "value contains '|'");
        refused(with_tags(&[("k", "ü")]), "tags[\"k\"]", "value contains 'ü'");
    }

    #[test]
    fn tag_charset_matches_the_aws_pattern() {
        for c in (0u8..128).map(char::from) {
            let expected = c.is_ascii_alphanumeric() || "+ !\"#$%&'()*,-./:;<=._/@".contains(c);
            assert_eq!(is_tag_char(c), expected, "{c:?}");
        }
    }
}
