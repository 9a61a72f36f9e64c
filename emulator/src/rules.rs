//! The service's rules, as pure functions over decoded requests. Each rule is answered with the exception the
//! real service uses for it; the first failing rule (in the order the stages run) decides the answer, and any
//! request-level failure refuses the whole request.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::clock::{month_grace_end_ms, rfc3339, same_month};
use crate::decimal::Quantity;
use crate::wire::{AwsError, BatchMeterUsageInput, MeterUsageInput, RawAllocation, WireInt};

pub const MAX_RECORDS: usize = 25;
/// "each request must be less than 1 MB in size"; read strictly as 10^6 bytes, so an agent that stays under
/// it here stays under it whichever megabyte AWS means.
pub const MAX_BODY_BYTES: usize = 1_000_000;
pub const MAX_ALLOCATIONS: usize = 2500;
pub const MAX_TAGS: usize = 5;
const INT32_MAX: WireInt = 2_147_483_647;

const PRODUCT_CODE_PATTERN: &str = "^[-a-zA-Z0-9/=:_.@]*$";
const ACCOUNT_PATTERN: &str = "^[0-9]+$";
const DECIMAL_PATTERN: &str = r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,6})?$";
const LICENSE_PATTERN: &str = r"^arn:aws[a-zA-Z-]*:[A-Za-z0-9][A-Za-z0-9_/.-]{0,62}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9][A-Za-z0-9:_/+=,@.-]{0,1023}$";

static LICENSE_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(LICENSE_PATTERN).ok());

pub fn is_product_code(s: &str) -> bool {
    s.chars().count() <= 255 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/=:_.@".contains(&b))
}

pub fn is_account_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_digit())
}

pub fn is_license_arn(s: &str) -> bool {
    LICENSE_RE.as_ref().is_some_and(|re| re.is_match(s))
}

/// The tag pattern `^[a-zA-Z0-9+ -=._:\/@]+$`. Note ` -=` is the range 0x20..=0x3D, so `!"#$%&'()*,-;<=` and
/// digits pass too, exactly as the model's regex lets them.
pub fn is_tag_text(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || (0x20..=0x3D).contains(&b) || b"+._:/@".contains(&b))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QtyKind {
    Whole,
    Decimal,
}

/// Who a record bills, which is also the customer part of the dedup key. ProductCode-keyed and LicenseArn-keyed
/// records are different keys, which is why AWS warns that mixing them for one customer double-bills.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// Concurrent Agreements: `CustomerAWSAccountId` + `LicenseArn`, no request ProductCode.
    License { license_arn: String, account: String },
    /// Legacy: request `ProductCode` + `CustomerIdentifier`.
    ProductCustomer { product: String, customer_identifier: String },
    /// 2025-style: request `ProductCode` + `CustomerAWSAccountId`.
    ProductAccount { product: String, account: String },
    /// MeterUsage: the calling instance/task (one per emulator).
    Instance { product: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Allocation {
    pub quantity: Quantity,
    /// Sorted, so two allocations with the same tag set compare equal whatever order the tags were sent in.
    pub tags: Vec<(String, String)>,
}

/// A record that passed the shape checks.
#[derive(Clone, Debug)]
pub struct Record {
    pub echo: Map<String, Value>,
    pub timestamp_secs: f64,
    /// `None` when the value is beyond any representable instant (answered as out of bounds).
    pub timestamp_ms: Option<i64>,
    pub customer_identifier: Option<String>,
    pub account: Option<String>,
    pub license: Option<String>,
    pub dimension: String,
    pub quantity: Quantity,
    pub kind: QtyKind,
    pub raw_allocations: Option<Vec<RawAllocation>>,
}

/// Records keyed to a product (or to no known product: every record's license is unknown).
pub struct BatchIdentity {
    pub product: Option<String>,
    pub identities: Vec<Identity>,
}

pub struct LicenseInfo {
    pub product: String,
    pub account: String,
}

fn not_null(errors: &mut Vec<String>, path: &str) {
    errors.push(format!("Value null at '{path}' failed to satisfy constraint: Member must not be null"));
}

fn length(errors: &mut Vec<String>, path: &str, value: &str, min: usize, max: usize) {
    let n = value.chars().count();
    if n < min {
        errors.push(format!(
            "Value '{value}' at '{path}' failed to satisfy constraint: Member must have length greater than or equal to {min}"
        ));
    } else if n > max {
        errors.push(format!(
            "Value at '{path}' failed to satisfy constraint: Member must have length less than or equal to {max}"
        ));
    }
}

fn pattern(errors: &mut Vec<String>, path: &str, value: &str, ok: bool, pat: &str) {
    if !ok {
        errors.push(format!(
            "Value '{value}' at '{path}' failed to satisfy constraint: Member must satisfy regular expression pattern: {pat}"
        ));
    }
}

fn int_range(errors: &mut Vec<String>, path: &str, v: WireInt) {
    if v < 0 {
        errors.push(format!(
            "Value '{v}' at '{path}' failed to satisfy constraint: Member must have value greater than or equal to 0"
        ));
    } else if v > INT32_MAX {
        errors.push(format!(
            "Value '{v}' at '{path}' failed to satisfy constraint: Member must have value less than or equal to {INT32_MAX}"
        ));
    }
}

/// Whole or decimal quantity, exactly one of them (absent both = 0 whole).
fn quantity(
    errors: &mut Vec<String>,
    path: &str,
    whole: Option<WireInt>,
    decimal: Option<&str>,
    names: (&str, &str),
) -> (Quantity, QtyKind) {
    match (whole, decimal) {
        (Some(_), Some(_)) => {
            errors.push(format!("You can't specify both {} and {} at '{path}'", names.0, names.1));
            (Quantity::ZERO, QtyKind::Whole)
        }
        (Some(q), None) => {
            int_range(errors, &join(path, names.0), q);
            (u64::try_from(q).map(Quantity::from_units).unwrap_or_default(), QtyKind::Whole)
        }
        (None, Some(d)) => {
            let p = join(path, names.1);
            let parsed = Quantity::parse_model_decimal(d);
            pattern(errors, &p, d, parsed.is_some(), DECIMAL_PATTERN);
            (parsed.unwrap_or_default(), QtyKind::Decimal)
        }
        (None, None) => (Quantity::ZERO, QtyKind::Whole),
    }
}

/// AWS names members in camelCase in validation messages: `usageRecords.1.member.quantity`.
fn join(path: &str, member: &str) -> String {
    let mut c = member.chars();
    let camel: String = match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    };
    if path.is_empty() { camel } else { format!("{path}.{camel}") }
}

fn timestamp_ms(secs: f64) -> Option<i64> {
    // About ±3 million years; anything beyond is nonsense the window check will refuse anyway.
    if secs.is_finite() && secs.abs() < 1e14 { Some((secs * 1000.0).round() as i64) } else { None }
}

/// Shape checks of `BatchMeterUsage` (the model's constraints) → `ValidationException`.
/// `strict_wire`: a `CustomerIdentifier` member beside `CustomerAWSAccountId` is an error even when empty.
pub fn batch_shape(input: BatchMeterUsageInput, strict_wire: bool) -> Result<(Option<String>, Vec<Record>), AwsError> {
    let mut errors = Vec::new();
    let product_code = input.product_code.filter(|p| !p.is_empty());
    if let Some(pc) = &product_code {
        length(&mut errors, "productCode", pc, 0, 255);
        pattern(&mut errors, "productCode", pc, is_product_code(pc), PRODUCT_CODE_PATTERN);
    }
    let Some(raw) = input.usage_records else {
        not_null(&mut errors, "usageRecords");
        return Err(AwsError::validation(errors));
    };
    if raw.len() > MAX_RECORDS {
        errors.push(format!(
            "Value with {} elements at 'usageRecords' failed to satisfy constraint: Member must have length less than or equal to {MAX_RECORDS}",
            raw.len()
        ));
        return Err(AwsError::validation(errors));
    }
    let mut records = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let path = format!("usageRecords.{}.member", i + 1);
        let ts = match r.timestamp {
            Some(t) => t,
            None => {
                not_null(&mut errors, &format!("{path}.timestamp"));
                0.0
            }
        };
        let dimension = match r.dimension {
            Some(d) => {
                length(&mut errors, &format!("{path}.dimension"), &d, 1, 255);
                d
            }
            None => {
                not_null(&mut errors, &format!("{path}.dimension"));
                String::new()
            }
        };
        let (q, kind) = quantity(
            &mut errors,
            &path,
            r.quantity,
            r.quantity_as_decimal.as_deref(),
            ("Quantity", "QuantityAsDecimal"),
        );
        if strict_wire
            && r.customer_aws_account_id.is_some()
            && let Some(c) = &r.customer_identifier
        {
            errors.push(format!(
                "Value '{c}' at '{path}.customerIdentifier' failed to satisfy constraint: Member must be absent \
                 when customerAWSAccountId is set (UsageRecords[{i}] has both CustomerIdentifier and \
                 CustomerAWSAccountId; strict_wire)"
            ));
        }
        // The bare Rust SDK always sends "CustomerIdentifier":"" (a Smithy @default), so empty means absent.
        let customer_identifier = r.customer_identifier.filter(|c| !c.is_empty());
        if let Some(c) = &customer_identifier {
            length(&mut errors, &format!("{path}.customerIdentifier"), c, 0, 255);
        }
        if let Some(a) = &r.customer_aws_account_id {
            let p = format!("{path}.customerAWSAccountId");
            length(&mut errors, &p, a, 1, 255);
            pattern(&mut errors, &p, a, a.is_empty() || a.bytes().all(|b| b.is_ascii_digit()), ACCOUNT_PATTERN);
        }
        allocation_shapes(&mut errors, &format!("{path}.usageAllocations"), r.allocations.as_deref());
        records.push(Record {
            echo: r.echo,
            timestamp_secs: ts,
            timestamp_ms: timestamp_ms(ts),
            customer_identifier,
            account: r.customer_aws_account_id,
            license: r.license_arn.filter(|l| !l.is_empty()),
            dimension,
            quantity: q,
            kind,
            raw_allocations: r.allocations,
        });
    }
    if errors.is_empty() { Ok((product_code, records)) } else { Err(AwsError::validation(errors)) }
}

fn allocation_shapes(errors: &mut Vec<String>, path: &str, allocs: Option<&[RawAllocation]>) {
    for (j, a) in allocs.unwrap_or_default().iter().enumerate() {
        let p = format!("{path}.{}.member", j + 1);
        if let Some(q) = a.quantity {
            int_range(errors, &format!("{p}.allocatedUsageQuantity"), q);
        }
        if let Some(d) = &a.quantity_as_decimal {
            let ok = Quantity::parse_model_decimal(d).is_some();
            pattern(errors, &format!("{p}.allocatedUsageQuantityAsDecimal"), d, ok, DECIMAL_PATTERN);
        }
    }
}

/// Identity shapes, product, license and customer-identifier checks → `InvalidProductCodeException`,
/// `InvalidLicenseException`, `InvalidCustomerIdentifierException` (the modelled errors a seller's handler and
/// a bisecting agent see; each names the record). Unknown licenses and accounts are not errors here: they
/// become `CustomerNotSubscribed` per record. `legacy_customers` holds every (product, CustomerIdentifier)
/// ever known, subscribed or not.
pub fn batch_identity(
    product_code: Option<&str>,
    records: &[Record],
    products: &BTreeMap<String, BTreeSet<String>>,
    licenses: &HashMap<String, LicenseInfo>,
    legacy_customers: &HashSet<(String, String)>,
) -> Result<BatchIdentity, AwsError> {
    let customer_err = |m: String| AwsError::client("InvalidCustomerIdentifierException", m);
    let license_err = |m: String| AwsError::client("InvalidLicenseException", m);
    let product_err = |m: String| AwsError::client("InvalidProductCodeException", m);
    let mut identities = Vec::with_capacity(records.len());
    if let Some(pc) = product_code {
        if !products.contains_key(pc) {
            return Err(product_err(format!(
                "The product code {pc} does not match a product published by this seller"
            )));
        }
        for (i, r) in records.iter().enumerate() {
            let n = i + 1;
            if r.license.is_some() {
                // The fix is on the request (drop ProductCode), so the error names the product code.
                return Err(product_err(format!(
                    "usageRecords.{n}: LicenseArn records (Concurrent Agreements) must not be sent with a request \
                     ProductCode; remove ProductCode from the request"
                )));
            }
            identities.push(match (&r.customer_identifier, &r.account) {
                (Some(_), Some(_)) => {
                    return Err(customer_err(format!(
                        "usageRecords.{n}: CustomerIdentifier and CustomerAWSAccountId are mutually exclusive"
                    )));
                }
                (Some(c), None) => {
                    if !legacy_customers.contains(&(pc.to_string(), c.clone())) {
                        return Err(customer_err(format!(
                            "usageRecords.{n}: CustomerIdentifier '{c}' does not exist for product {pc}"
                        )));
                    }
                    Identity::ProductCustomer { product: pc.to_string(), customer_identifier: c.clone() }
                }
                (None, Some(a)) => {
                    // The same buyer keyed by ProductCode and by LicenseArn is two dedup keys: AWS warns that
                    // metering both bills twice, and new (Concurrent Agreements) products must not use ProductCode.
                    if let Some((license, _)) =
                        licenses.iter().find(|(_, info)| info.product == pc && &info.account == a)
                    {
                        return Err(product_err(format!(
                            "usageRecords.{n}: product {pc} is metered by license for CustomerAWSAccountId {a} \
                             ({license}); send CustomerAWSAccountId + LicenseArn without a request ProductCode \
                             (metering both ways bills twice)"
                        )));
                    }
                    Identity::ProductAccount { product: pc.to_string(), account: a.clone() }
                }
                (None, None) => {
                    return Err(customer_err(format!(
                        "usageRecords.{n}: a record needs CustomerIdentifier or CustomerAWSAccountId"
                    )));
                }
            });
        }
        return Ok(BatchIdentity { product: Some(pc.to_string()), identities });
    }
    let mut batch_products = BTreeSet::new();
    for (i, r) in records.iter().enumerate() {
        let n = i + 1;
        if r.customer_identifier.is_some() {
            let why = if r.account.is_some() {
                "CustomerIdentifier and CustomerAWSAccountId are mutually exclusive"
            } else {
                "CustomerIdentifier records (legacy integrations) need the request ProductCode"
            };
            return Err(customer_err(format!("usageRecords.{n}: {why}")));
        }
        let Some(license) = &r.license else {
            return Err(license_err(format!(
                "usageRecords.{n}: without a request ProductCode every record needs CustomerAWSAccountId and LicenseArn"
            )));
        };
        let Some(account) = &r.account else {
            return Err(customer_err(format!(
                "usageRecords.{n}: LicenseArn {license} needs the CustomerAWSAccountId it was granted to"
            )));
        };
        if !is_license_arn(license) {
            return Err(license_err(format!("usageRecords.{n}: LicenseArn '{license}' is not a valid license ARN")));
        }
        if let Some(info) = licenses.get(license) {
            if &info.account != account {
                return Err(license_err(format!(
                    "usageRecords.{n}: LicenseArn {license} does not belong to CustomerAWSAccountId {account}"
                )));
            }
            batch_products.insert(info.product.clone());
        }
        identities.push(Identity::License { license_arn: license.clone(), account: account.clone() });
    }
    if batch_products.len() > 1 {
        let list: Vec<_> = batch_products.into_iter().collect();
        return Err(license_err(format!(
            "LicenseArns of more than one product in one request ({}); make one call per product",
            list.join(", ")
        )));
    }
    Ok(BatchIdentity { product: batch_products.into_iter().next(), identities })
}

fn tag_checks(path: &str, allocs: &[RawAllocation]) -> Result<(), AwsError> {
    let bad = |m: String| AwsError::client("InvalidTagException", format!("{path}: {m}"));
    for (j, a) in allocs.iter().enumerate() {
        let Some(tags) = &a.tags else { continue };
        let n = j + 1;
        if tags.is_empty() || tags.len() > MAX_TAGS {
            return Err(bad(format!(
                "allocation {n} has {} tags; an allocation has 1 to {MAX_TAGS} tags (leave Tags out for the untagged bucket)",
                tags.len()
            )));
        }
        let mut keys = BTreeSet::new();
        for t in tags {
            let (Some(k), Some(v)) = (&t.key, &t.value) else {
                return Err(bad(format!("allocation {n}: every tag needs both Key and Value")));
            };
            if k.chars().count() > 100 || !is_tag_text(k) {
                return Err(bad(format!(
                    "allocation {n}: tag key '{k}' must be 1-100 characters of [a-zA-Z0-9+ -=._:/@]"
                )));
            }
            if v.chars().count() > 256 || !is_tag_text(v) {
                return Err(bad(format!(
                    "allocation {n}: tag value '{v}' must be 1-256 characters of [a-zA-Z0-9+ -=._:/@]"
                )));
            }
            if !keys.insert(k.as_str()) {
                return Err(bad(format!("allocation {n}: tag key '{k}' appears twice")));
            }
        }
    }
    Ok(())
}

/// Allocations: 1–2500, each with exactly one quantity of the record's kind, summing exactly to the record's
/// quantity; for MeterUsage each tag set at most once → `InvalidUsageAllocationsException`.
fn allocation_checks(
    path: &str,
    allocs: &[RawAllocation],
    total: Quantity,
    kind: QtyKind,
    unique_tag_sets: bool,
) -> Result<Vec<Allocation>, AwsError> {
    let bad = |m: String| AwsError::client("InvalidUsageAllocationsException", format!("{path}: {m}"));
    if allocs.is_empty() || allocs.len() > MAX_ALLOCATIONS {
        return Err(bad(format!("{} allocations; UsageAllocations has 1 to {MAX_ALLOCATIONS}", allocs.len())));
    }
    let mut out = Vec::with_capacity(allocs.len());
    let mut sum = Quantity::ZERO;
    let mut seen = BTreeSet::new();
    for (j, a) in allocs.iter().enumerate() {
        let n = j + 1;
        let (q, k) = match (a.quantity, &a.quantity_as_decimal) {
            (Some(q), None) => (u64::try_from(q).map(Quantity::from_units).unwrap_or_default(), QtyKind::Whole),
            (None, Some(d)) => (Quantity::parse_model_decimal(d).unwrap_or_default(), QtyKind::Decimal),
            _ => {
                return Err(bad(format!(
                    "allocation {n} must set exactly one of AllocatedUsageQuantity or AllocatedUsageQuantityAsDecimal"
                )));
            }
        };
        if k != kind {
            let want =
                if kind == QtyKind::Whole { "AllocatedUsageQuantity" } else { "AllocatedUsageQuantityAsDecimal" };
            return Err(bad(format!("allocation {n} must use {want}, the same kind of quantity as the record")));
        }
        sum = sum.checked_add(q).ok_or_else(|| bad("allocation sum overflows".into()))?;
        let mut tags: Vec<(String, String)> = a
            .tags
            .iter()
            .flatten()
            .map(|t| (t.key.clone().unwrap_or_default(), t.value.clone().unwrap_or_default()))
            .collect();
        tags.sort();
        if unique_tag_sets && !seen.insert(tags.clone()) {
            return Err(bad(format!("allocation {n} repeats a tag set; each allocation needs a unique set of tags")));
        }
        out.push(Allocation { quantity: q, tags });
    }
    if sum != total {
        return Err(bad(format!("allocations sum to {sum}, not to the usage quantity {total}")));
    }
    out.sort();
    Ok(out)
}

/// Tags (all records) first, then allocations.
pub fn batch_allocations(records: &[Record]) -> Result<Vec<Vec<Allocation>>, AwsError> {
    for (i, r) in records.iter().enumerate() {
        if let Some(a) = &r.raw_allocations {
            tag_checks(&format!("usageRecords.{}.usageAllocations", i + 1), a)?;
        }
    }
    records
        .iter()
        .enumerate()
        .map(|(i, r)| match &r.raw_allocations {
            None => Ok(Vec::new()),
            Some(a) => {
                allocation_checks(&format!("usageRecords.{}.usageAllocations", i + 1), a, r.quantity, r.kind, false)
            }
        })
        .collect()
}

pub fn dimension_check(product: &str, dims: &BTreeSet<String>, dimension: &str) -> Result<(), AwsError> {
    if dims.contains(dimension) {
        Ok(())
    } else {
        Err(AwsError::client(
            "InvalidUsageDimensionException",
            format!("The usage dimension '{dimension}' does not match one of the UsageDimensions of product {product}"),
        ))
    }
}

/// `TimestampOutOfBoundsException` unless the record's time is not in the future and `now` is before its
/// deadline: min(timestamp + window, 06:00 UTC on the 1st of the next month when the record is from an earlier
/// month). AWS counts the window from the record's time ("up to 24 hours in the past"), not from its hour.
pub fn timestamp_check(
    ts_ms: Option<i64>,
    secs: f64,
    now_ms: i64,
    window_ms: i64,
    month_cap: bool,
) -> Result<(), AwsError> {
    let oob = |m: String| AwsError::client("TimestampOutOfBoundsException", m);
    let Some(ts) = ts_ms else {
        return Err(oob(format!("Timestamp {secs} is out of the allowed range")));
    };
    if ts > now_ms {
        return Err(oob(format!("Timestamp {} is in the future (service time {})", rfc3339(ts), rfc3339(now_ms))));
    }
    let mut deadline = ts.saturating_add(window_ms);
    if month_cap
        && !same_month(ts, now_ms)
        && let Some(cap) = month_grace_end_ms(ts)
    {
        deadline = deadline.min(cap);
    }
    if now_ms >= deadline {
        return Err(oob(format!(
            "Timestamp {} is out of the allowed range: it was accepted until {} (service time {})",
            rfc3339(ts),
            rfc3339(deadline),
            rfc3339(now_ms)
        )));
    }
    Ok(())
}

/// A MeterUsage request that passed every request-level rule.
#[derive(Clone, Debug)]
pub struct MeterUsageRequest {
    pub product: String,
    pub timestamp_secs: f64,
    pub timestamp_ms: Option<i64>,
    pub dimension: String,
    pub quantity: Quantity,
    pub kind: QtyKind,
    pub raw_allocations: Option<Vec<RawAllocation>>,
    pub dry_run: bool,
    pub client_token: Option<String>,
}

pub fn meter_usage_shape(input: MeterUsageInput) -> Result<MeterUsageRequest, AwsError> {
    let mut errors = Vec::new();
    let product = match input.product_code {
        Some(pc) => {
            length(&mut errors, "productCode", &pc, 0, 255);
            pattern(&mut errors, "productCode", &pc, is_product_code(&pc), PRODUCT_CODE_PATTERN);
            pc
        }
        None => {
            not_null(&mut errors, "productCode");
            String::new()
        }
    };
    if input.timestamp.is_none() {
        not_null(&mut errors, "timestamp");
    }
    let dimension = match input.usage_dimension {
        Some(d) => {
            length(&mut errors, "usageDimension", &d, 1, 255);
            d
        }
        None => {
            not_null(&mut errors, "usageDimension");
            String::new()
        }
    };
    let (q, kind) = quantity(
        &mut errors,
        "",
        input.usage_quantity,
        input.usage_quantity_as_decimal.as_deref(),
        ("UsageQuantity", "UsageQuantityAsDecimal"),
    );
    if let Some(t) = &input.client_token {
        length(&mut errors, "clientToken", t, 1, 64);
    }
    allocation_shapes(&mut errors, "usageAllocations", input.allocations.as_deref());
    if !errors.is_empty() {
        return Err(AwsError::validation(errors));
    }
    let ts = input.timestamp.unwrap_or_default();
    Ok(MeterUsageRequest {
        product,
        timestamp_secs: ts,
        timestamp_ms: timestamp_ms(ts),
        dimension,
        quantity: q,
        kind,
        raw_allocations: input.allocations,
        dry_run: input.dry_run.unwrap_or(false),
        client_token: input.client_token,
    })
}

pub fn meter_usage_allocations(req: &MeterUsageRequest) -> Result<Vec<Allocation>, AwsError> {
    match &req.raw_allocations {
        None => Ok(Vec::new()),
        Some(a) => {
            tag_checks("usageAllocations", a)?;
            allocation_checks("usageAllocations", a, req.quantity, req.kind, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn hours(n: i64) -> i64 {
        n * crate::clock::HOUR_MS
    }

    #[test]
    fn tag_charset_follows_the_model_regex_literally() {
        for ok in ["team", "a b", "x=1", "k:v/w@z", "$ok!", "a,b", "<=", "0"] {
            assert!(is_tag_text(ok), "{ok}");
        }
        for bad in ["", "é", "a>b", "a?b", "a[b]", "a~b", "a\tb", "a|b"] {
            assert!(!is_tag_text(bad), "{bad}");
        }
    }

    #[test]
    fn license_arn_pattern() {
        assert!(is_license_arn("arn:aws:license-manager::111122223333:license:l-0123456789abcdef"));
        assert!(!is_license_arn("aws:license-manager::111122223333:license:l-0123"));
        assert!(!is_license_arn(""));
    }

    #[test]
    fn month_end_caps_the_window() {
        let h = 3_600_000;
        // Record 2026-03-31T23:00Z; service at 2026-04-01T05:00Z → inside grace.
        let rec = 1_774_998_000_000;
        let now = 1_775_019_600_000;
        assert!(timestamp_check(Some(rec), 0.0, now, hours(24), true).is_ok());
        // 06:00Z on the 1st → refused even though < 24 h have passed.
        assert!(timestamp_check(Some(rec), 0.0, now + h, hours(24), true).is_err());
        // A March 31 00:00 record at 05:00 on April 1 is past its 24 h window already.
        assert!(timestamp_check(Some(rec - 23 * h), 0.0, now, hours(24), true).is_err());
        // The window counts from the record's timestamp: a record from 12:59 is still accepted 23 h 59 m
        // later (13 min before the 24 h are up), and refused at exactly 24 h.
        let ts = 1_795_780_800_000 + 59 * 60_000; // 2026-11-27T12:59:00Z
        assert!(timestamp_check(Some(ts), 0.0, ts + hours(24) - 60_000, hours(24), true).is_ok());
        assert!(timestamp_check(Some(ts), 0.0, ts + hours(24), hours(24), true).is_err());
        // Future by one millisecond.
        assert!(timestamp_check(Some(now + 1), 0.0, now, hours(24), true).is_err());
    }
}
