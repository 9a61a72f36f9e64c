//! The awsJson1.1 wire: decoding PascalCase request members with JSON type checks (`SerializationException`)
//! and encoding answers and `__type` errors the way the service does.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
pub const TARGET_PREFIX: &str = "AWSMPMeteringService.";

/// An error answer: HTTP status, `__type` and `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AwsError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// A modelled client error (400).
    pub fn client(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The front end's constraint check, worded as AWS words it.
    pub fn validation(errors: Vec<String>) -> Self {
        let n = errors.len();
        let noun = if n == 1 { "error" } else { "errors" };
        Self::client("ValidationException", format!("{n} validation {noun} detected: {}", errors.join("; ")))
    }

    pub fn serialization(message: impl Into<String>) -> Self {
        Self::client("SerializationException", message)
    }

    pub fn throttling() -> Self {
        Self::client("ThrottlingException", "Rate exceeded")
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServiceErrorException",
            "An internal error has occurred. Retry your request.",
        )
    }
}

pub fn json_response(status: StatusCode, body: &Value, request_id: &str) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-RequestId", v);
    }
    resp
}

pub fn error_response(err: &AwsError, request_id: &str) -> Response {
    let body = serde_json::json!({ "__type": err.code, "message": err.message });
    json_response(err.status, &body, request_id)
}

/// An integer as sent; wide enough that out-of-range values can be reported rather than mangled.
pub type WireInt = i128;

#[derive(Clone, Debug, Default)]
pub struct RawTag {
    pub key: Option<String>,
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct RawAllocation {
    pub quantity: Option<WireInt>,
    pub quantity_as_decimal: Option<String>,
    pub tags: Option<Vec<RawTag>>,
}

#[derive(Clone, Debug, Default)]
pub struct RawRecord {
    /// The record's known members exactly as sent, returned in `Results[].UsageRecord` / `UnprocessedRecords`.
    pub echo: Map<String, Value>,
    pub timestamp: Option<f64>,
    pub customer_identifier: Option<String>,
    pub customer_aws_account_id: Option<String>,
    pub license_arn: Option<String>,
    pub dimension: Option<String>,
    pub quantity: Option<WireInt>,
    pub quantity_as_decimal: Option<String>,
    pub allocations: Option<Vec<RawAllocation>>,
}

#[derive(Clone, Debug, Default)]
pub struct BatchMeterUsageInput {
    pub product_code: Option<String>,
    pub usage_records: Option<Vec<RawRecord>>,
}

#[derive(Clone, Debug, Default)]
pub struct MeterUsageInput {
    pub product_code: Option<String>,
    pub timestamp: Option<f64>,
    pub usage_dimension: Option<String>,
    pub usage_quantity: Option<WireInt>,
    pub usage_quantity_as_decimal: Option<String>,
    pub dry_run: Option<bool>,
    pub allocations: Option<Vec<RawAllocation>>,
    pub client_token: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct RegisterUsageInput {
    pub product_code: Option<String>,
    pub public_key_version: Option<WireInt>,
    pub nonce: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ResolveCustomerInput {
    pub registration_token: Option<String>,
}

const RECORD_MEMBERS: &[&str] = &[
    "Timestamp",
    "CustomerIdentifier",
    "CustomerAWSAccountId",
    "LicenseArn",
    "Dimension",
    "Quantity",
    "QuantityAsDecimal",
    "UsageAllocations",
];

/// The body as a JSON object; an empty body counts as `{}` (what the SDK sends for an input with nothing set).
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, AwsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(AwsError::serialization("Request body must be a JSON object")),
        Err(e) => Err(AwsError::serialization(format!("Malformed JSON request body: {e}"))),
    }
}

struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    fn new(map: &'a Map<String, Value>, path: impl Into<String>) -> Self {
        Self { map, path: path.into() }
    }

    fn at(&self, name: &str) -> String {
        if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) }
    }

    /// Present and not null.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<String>, AwsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(AwsError::serialization(format!("Expected a string at '{}'", self.at(name)))),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, AwsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(AwsError::serialization(format!("Expected a boolean at '{}'", self.at(name)))),
        }
    }

    fn integer(&self, name: &str) -> Result<Option<WireInt>, AwsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    return Ok(Some(i128::from(i)));
                }
                if let Some(u) = n.as_u64() {
                    return Ok(Some(i128::from(u)));
                }
                match n.as_f64() {
                    // An integral value written with a fraction or exponent (3.0, 1e3) still names an integer.
                    Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 => Ok(Some(f as i128)),
                    _ => Err(AwsError::serialization(format!(
                        "Expected a whole number at '{}', got {n}; use the *AsDecimal member for fractions",
                        self.at(name)
                    ))),
                }
            }
            Some(_) => Err(AwsError::serialization(format!("Expected a number at '{}'", self.at(name)))),
        }
    }

    fn timestamp(&self, name: &str) -> Result<Option<f64>, AwsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Some(f)),
                _ => Err(AwsError::serialization(format!("Invalid timestamp at '{}'", self.at(name)))),
            },
            Some(_) => {
                Err(AwsError::serialization(format!("Expected epoch seconds (a JSON number) at '{}'", self.at(name))))
            }
        }
    }

    fn array(&self, name: &str) -> Result<Option<&'a Vec<Value>>, AwsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(AwsError::serialization(format!("Expected a list at '{}'", self.at(name)))),
        }
    }
}

fn object<'a>(v: &'a Value, path: String) -> Result<Obj<'a>, AwsError> {
    match v {
        Value::Object(m) => Ok(Obj::new(m, path)),
        _ => Err(AwsError::serialization(format!("Expected an object at '{path}'"))),
    }
}

fn allocations(obj: &Obj<'_>, name: &str) -> Result<Option<Vec<RawAllocation>>, AwsError> {
    let Some(list) = obj.array(name)? else { return Ok(None) };
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let a = object(v, format!("{}[{i}]", obj.at(name)))?;
        let tags = match a.array("Tags")? {
            None => None,
            Some(tags) => {
                let mut t = Vec::with_capacity(tags.len());
                for (j, tv) in tags.iter().enumerate() {
                    let to = object(tv, format!("{}[{j}]", a.at("Tags")))?;
                    t.push(RawTag { key: to.string("Key")?, value: to.string("Value")? });
                }
                Some(t)
            }
        };
        out.push(RawAllocation {
            quantity: a.integer("AllocatedUsageQuantity")?,
            quantity_as_decimal: a.string("AllocatedUsageQuantityAsDecimal")?,
            tags,
        });
    }
    Ok(Some(out))
}

pub fn batch_meter_usage_input(m: &Map<String, Value>) -> Result<BatchMeterUsageInput, AwsError> {
    let top = Obj::new(m, "");
    let product_code = top.string("ProductCode")?;
    let usage_records = match top.array("UsageRecords")? {
        None => None,
        Some(list) => {
            let mut recs = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                let r = object(v, format!("UsageRecords[{i}]"))?;
                let echo = r
                    .map
                    .iter()
                    .filter(|(k, v)| RECORD_MEMBERS.contains(&k.as_str()) && !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                recs.push(RawRecord {
                    echo,
                    timestamp: r.timestamp("Timestamp")?,
                    customer_identifier: r.string("CustomerIdentifier")?,
                    customer_aws_account_id: r.string("CustomerAWSAccountId")?,
                    license_arn: r.string("LicenseArn")?,
                    dimension: r.string("Dimension")?,
                    quantity: r.integer("Quantity")?,
                    quantity_as_decimal: r.string("QuantityAsDecimal")?,
                    allocations: allocations(&r, "UsageAllocations")?,
                });
            }
            Some(recs)
        }
    };
    Ok(BatchMeterUsageInput { product_code, usage_records })
}

pub fn meter_usage_input(m: &Map<String, Value>) -> Result<MeterUsageInput, AwsError> {
    let top = Obj::new(m, "");
    Ok(MeterUsageInput {
        product_code: top.string("ProductCode")?,
        timestamp: top.timestamp("Timestamp")?,
        usage_dimension: top.string("UsageDimension")?,
        usage_quantity: top.integer("UsageQuantity")?,
        usage_quantity_as_decimal: top.string("UsageQuantityAsDecimal")?,
        dry_run: top.boolean("DryRun")?,
        allocations: allocations(&top, "UsageAllocations")?,
        client_token: top.string("ClientToken")?,
    })
}

pub fn register_usage_input(m: &Map<String, Value>) -> Result<RegisterUsageInput, AwsError> {
    let top = Obj::new(m, "");
    Ok(RegisterUsageInput {
        product_code: top.string("ProductCode")?,
        public_key_version: top.integer("PublicKeyVersion")?,
        nonce: top.string("Nonce")?,
    })
}

pub fn resolve_customer_input(m: &Map<String, Value>) -> Result<ResolveCustomerInput, AwsError> {
    Ok(ResolveCustomerInput { registration_token: Obj::new(m, "").string("RegistrationToken")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_the_rust_sdk_sends() {
        let body = br#"{"UsageRecords":[{"Timestamp":1790000123.456,"CustomerIdentifier":"","Dimension":"api_calls","Quantity":42,
 "UsageAllocations":[{"AllocatedUsageQuantity":40,"Tags":[{"Key":"team","Value":"a"}]},{"AllocatedUsageQuantity":2}],
 "CustomerAWSAccountId":"123456789012","LicenseArn":"arn:aws:license-manager::111122223333:license:l-0123456789abcdef"}]}"#;
        let m = parse_body(body).unwrap();
        let input = batch_meter_usage_input(&m).unwrap();
        let recs = input.usage_records.unwrap();
        assert_eq!(recs[0].timestamp, Some(1790000123.456));
        assert_eq!(recs[0].customer_identifier.as_deref(), Some(""));
        assert_eq!(recs[0].quantity, Some(42));
        let allocs = recs[0].allocations.as_ref().unwrap();
        assert_eq!(allocs.len(), 2);
        assert!(allocs[1].tags.is_none());
        assert_eq!(serde_json::to_string(&recs[0].echo["Timestamp"]).unwrap(), "1790000123.456");
    }

    #[test]
    fn type_errors_are_serialization_exceptions() {
        for body in [&b"{"[..], b"[]", br#"{"UsageRecords":{}}"#, br#"{"UsageRecords":[{"Quantity":"3"}]}"#] {
            let r = parse_body(body).and_then(|m| batch_meter_usage_input(&m));
            assert_eq!(r.unwrap_err().code, "SerializationException");
        }
        let m = parse_body(br#"{"UsageRecords":[{"Quantity":1.5}]}"#).unwrap();
        assert_eq!(batch_meter_usage_input(&m).unwrap_err().code, "SerializationException");
        assert!(parse_body(b"").unwrap().is_empty());
    }
}
