//! Reading CloudTrail: log files as CloudTrail delivers them to S3 (`{"Records": [...]}`, gzipped or plain)
//! and the JSON printed by `aws cloudtrail lookup-events` (`{"Events": [{"CloudTrailEvent": "<JSON text>"}]}`),
//! down to one [`TrailRecord`] per usage record of each `BatchMeterUsage` / `MeterUsage` call.
//!
//! Field mapping (docs/operations.md, "Verifying against CloudTrail"): CloudTrail writes the API's members
//! camelCased (`requestParameters.usageRecords[].customerAWSAccountId`, `responseElements.results[]`
//! `.usageRecord`, `.meteringRecordId`, `.status`); member names are matched without regard to case, so the
//! API's PascalCase spelling reads the same. `timestamp` is read as epoch seconds, RFC 3339, or the
//! `Apr 19, 2018 4:32:50 PM` form of AWS's published example.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The event sources a metering call is logged under: AWS's Seller Guide example and EventBridge's
/// documentation use the first; other AWS material names the others.
pub const EVENT_SOURCES: &[&str] =
    &["metering-marketplace.amazonaws.com", "marketplacemetering.amazonaws.com", "metering.marketplace.amazonaws.com"];

/// One usage record as CloudTrail shows AWS answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailRecord {
    pub event_id: String,
    pub event_time: String,
    /// BatchMeterUsage | MeterUsage
    pub operation: String,
    pub product_code: String,
    /// In meterd's report spelling: `aws:ACCOUNT/LICENSE_ARN`, `legacy:CUSTOMER_IDENTIFIER`; for MeterUsage (no
    /// customer member: the caller's account is billed) `account:ACCOUNT`.
    pub customer: String,
    pub dimension: String,
    /// Start of the record's UTC hour; None when its timestamp cannot be read.
    pub hour_ms: Option<i64>,
    pub quantity: Option<u64>,
    /// Success | CustomerNotSubscribed | DuplicateRecord | Unprocessed | NoResponse
    pub status: String,
    pub metering_record_id: String,
    pub file: PathBuf,
}

#[derive(Debug, Default)]
pub struct Trail {
    pub records: Vec<TrailRecord>,
    pub files: usize,
    /// Every event in the files, metering or not.
    pub events: u64,
    pub batch_calls: u64,
    pub meter_usage_calls: u64,
    /// Metering calls AWS answered with an error (errorCode): nothing billed.
    pub failed_calls: u64,
    pub first_event: Option<String>,
    pub last_event: Option<String>,
}

/// The largest file read (a CloudTrail object is a few MB; lookup-events pages are smaller).
const MAX_FILE_BYTES: u64 = 1 << 30;

impl Trail {
    /// Reads every path: files, or directories walked for `*.json` / `*.json.gz` (an `aws s3 sync` of a trail).
    pub fn read(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let mut trail = Trail::default();
        for p in paths {
            for file in files_under(p)? {
                trail.read_file(&file)?;
            }
        }
        Ok(trail)
    }

    fn read_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let bytes = read_maybe_gzip(path)?;
        let doc: Value =
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?;
        self.files += 1;
        let events: Vec<Value> = match &doc {
            Value::Object(o) if member(o, "Records").is_some_and(Value::is_array) => {
                member(o, "Records").and_then(Value::as_array).cloned().unwrap_or_default()
            }
            Value::Object(o) if member(o, "Events").is_some_and(Value::is_array) => {
                lookup_events(path, member(o, "Events").and_then(Value::as_array).map_or(&[][..], Vec::as_slice))?
            }
            Value::Array(a) => lookup_events(path, a)?,
            _ => anyhow::bail!(
                "{}: neither a CloudTrail log file (an object with \"Records\") nor `aws cloudtrail lookup-events` \
                 output (an object with \"Events\")",
                path.display()
            ),
        };
        for (i, e) in events.iter().enumerate() {
            let Value::Object(e) = e else {
                anyhow::bail!("{}: event {i} is not a JSON object", path.display());
            };
            self.events += 1;
            self.add_event(path, e);
        }
        Ok(())
    }

    fn add_event(&mut self, path: &Path, e: &Map<String, Value>) {
        let source = text(e, "eventSource");
        let name = text(e, "eventName");
        if !EVENT_SOURCES.contains(&source.as_str()) || !(name == "BatchMeterUsage" || name == "MeterUsage") {
            return;
        }
        let time = text(e, "eventTime");
        if self.first_event.as_ref().is_none_or(|f| time < *f) {
            self.first_event = Some(time.clone());
        }
        if self.last_event.as_ref().is_none_or(|l| time > *l) {
            self.last_event = Some(time.clone());
        }
        if name == "BatchMeterUsage" {
            self.batch_calls += 1;
        } else {
            self.meter_usage_calls += 1;
        }
        if !text(e, "errorCode").is_empty() {
            self.failed_calls += 1;
            return;
        }
        let base = TrailRecord {
            event_id: text(e, "eventID"),
            event_time: time,
            operation: name.clone(),
            product_code: String::new(),
            customer: String::new(),
            dimension: String::new(),
            hour_ms: None,
            quantity: None,
            status: String::new(),
            metering_record_id: String::new(),
            file: path.to_path_buf(),
        };
        let request = member(e, "requestParameters").and_then(Value::as_object);
        let response = member(e, "responseElements").and_then(Value::as_object);
        let product_code = request.map(|r| text(r, "productCode")).unwrap_or_default();
        if name == "MeterUsage" {
            let account = match member(e, "userIdentity").and_then(Value::as_object).map(|u| text(u, "accountId")) {
                Some(a) if !a.is_empty() => a,
                _ => text(e, "recipientAccountId"),
            };
            let id = response.map(|r| text(r, "meteringRecordId")).unwrap_or_default();
            self.records.push(TrailRecord {
                product_code,
                customer: format!("account:{account}"),
                dimension: request.map(|r| text(r, "usageDimension")).unwrap_or_default(),
                hour_ms: request.and_then(|r| member(r, "timestamp")).and_then(hour_of),
                quantity: request.map_or(Some(0), |r| member(r, "usageQuantity").map_or(Some(0), quantity_of)),
                status: if id.is_empty() { "NoResponse".into() } else { "Success".into() },
                metering_record_id: id,
                ..base
            });
            return;
        }
        let results = response.and_then(|r| member(r, "results")).and_then(Value::as_array);
        match results {
            Some(results) => {
                for r in results.iter().filter_map(Value::as_object) {
                    let usage = member(r, "usageRecord").and_then(Value::as_object);
                    self.records.push(TrailRecord {
                        status: text(r, "status"),
                        metering_record_id: text(r, "meteringRecordId"),
                        ..usage_record(&base, &product_code, usage)
                    });
                }
                let unprocessed = response.and_then(|r| member(r, "unprocessedRecords")).and_then(Value::as_array);
                for u in unprocessed.into_iter().flatten().filter_map(Value::as_object) {
                    self.records.push(TrailRecord {
                        status: "Unprocessed".into(),
                        ..usage_record(&base, &product_code, Some(u))
                    });
                }
            }
            // No response logged: what was asked, with no outcome.
            None => {
                let asked = request.and_then(|r| member(r, "usageRecords")).and_then(Value::as_array);
                for u in asked.into_iter().flatten().filter_map(Value::as_object) {
                    self.records.push(TrailRecord {
                        status: "NoResponse".into(),
                        ..usage_record(&base, &product_code, Some(u))
                    });
                }
            }
        }
    }
}

fn usage_record(base: &TrailRecord, product_code: &str, u: Option<&Map<String, Value>>) -> TrailRecord {
    let Some(u) = u else {
        return TrailRecord { product_code: product_code.to_string(), ..base.clone() };
    };
    let account = text(u, "customerAWSAccountId");
    let customer = if !account.is_empty() {
        format!("aws:{account}/{}", text(u, "licenseArn"))
    } else {
        format!("legacy:{}", text(u, "customerIdentifier"))
    };
    TrailRecord {
        product_code: product_code.to_string(),
        customer,
        dimension: text(u, "dimension"),
        hour_ms: member(u, "timestamp").and_then(hour_of),
        // An absent Quantity is 0 (the API's default).
        quantity: member(u, "quantity").map_or(Some(0), quantity_of),
        ..base.clone()
    }
}

/// `lookup-events` entries: each event's `CloudTrailEvent` is the event as a JSON string.
fn lookup_events(path: &Path, entries: &[Value]) -> anyhow::Result<Vec<Value>> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let o =
                entry.as_object().ok_or_else(|| anyhow::anyhow!("{}: Events[{i}] is not an object", path.display()))?;
            match member(o, "CloudTrailEvent") {
                Some(Value::String(s)) => serde_json::from_str(s)
                    .map_err(|e| anyhow::anyhow!("{}: Events[{i}].CloudTrailEvent is not JSON: {e}", path.display())),
                Some(Value::Object(ev)) => Ok(Value::Object(ev.clone())),
                // A bare array of events (e.g. `jq '.Records'`).
                _ if member(o, "eventSource").is_some() => Ok(entry.clone()),
                _ => anyhow::bail!("{}: Events[{i}] has no CloudTrailEvent", path.display()),
            }
        })
        .collect()
}

/// A member by name, ignoring case: CloudTrail camelCases the API's PascalCase members.
pub fn member<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).or_else(|| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

fn text(o: &Map<String, Value>, name: &str) -> String {
    match member(o, name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn quantity_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Null => Some(0),
        _ => None,
    }
}

/// The start of the UTC hour of a CloudTrail timestamp value.
pub fn hour_of(v: &Value) -> Option<i64> {
    let ms = match v {
        Value::Number(n) => (n.as_f64()? * 1000.0) as i64,
        Value::String(s) => parse_time(s)?,
        _ => return None,
    };
    Some(crate::clock::hour_start(ms))
}

fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Some((secs * 1000.0) as i64);
    }
    // AWS's published example: "Apr 19, 2018 4:32:50 PM" (UTC).
    chrono::NaiveDateTime::parse_from_str(s, "%b %d, %Y %I:%M:%S %p").ok().map(|t| t.and_utc().timestamp_millis())
}

fn read_maybe_gzip(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut raw = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut raw).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!((raw.len() as u64) <= MAX_FILE_BYTES, "{}: larger than 1 GiB", path.display());
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&raw[..])
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| anyhow::anyhow!("{}: gzip: {e}", path.display()))?;
    anyhow::ensure!((out.len() as u64) <= MAX_FILE_BYTES, "{}: more than 1 GiB uncompressed", path.display());
    Ok(out)
}

fn files_under(p: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    if !meta.is_dir() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".json") || path.to_string_lossy().ends_with(".json.gz") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the BatchMeterUsage example in AWS's Seller Guide (CloudTrail logging page).
    const SELLER_GUIDE_SHAPE: &str = r#"{"Records": [{
        "eventVersion": "1.05",
        "userIdentity": {"type": "IAMUser", "accountId": "123456789012", "userName": "Alice"},
        "eventTime": "2018-04-19T16:32:51Z",
        "eventSource": "metering-marketplace.amazonaws.com",
        "eventName": "BatchMeterUsage",
        "awsRegion": "us-east-1",
        "requestParameters": {
            "usageRecords": [{"dimension": "Dimension1", "timestamp": "Apr 19, 2018 4:32:50 PM",
                              "customerIdentifier": "customer1", "quantity": 1}],
            "productCode": "EXAMPLE_proCode"
        },
        "responseElements": {
            "results": [{
                "usageRecord": {"dimension": "Dimension1", "timestamp": "Apr 19, 2018 4:32:50 PM",
                                "customerIdentifier": "customer1", "quantity": 1},
                "meteringRecordId": "b52e6ed6-98f0-4e90-8bd2-bf01b024961e",
                "status": "Success"
            }],
            "unprocessedRecords": []
        },
        "requestID": "d45f8acd-251d-11e7-8d11-1f3d1d72808b",
        "eventID": "cace04c7-e6c2-465d-b47f-1506ee1ed497",
        "eventType": "AwsApiCall",
        "recipientAccountId": "123456789012"
    }, {"eventSource": "s3.amazonaws.com", "eventName": "GetObject", "eventTime": "2018-04-19T16:33:00Z"}]}"#;

    fn read_text(name: &str, text: &[u8]) -> anyhow::Result<Trail> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        Trail::read(&[dir.path().to_path_buf()])
    }

    #[test]
    fn reads_the_seller_guide_example() {
        let t = read_text("a.json", SELLER_GUIDE_SHAPE.as_bytes()).unwrap();
        assert_eq!((t.files, t.events, t.batch_calls), (1, 2, 1));
        assert_eq!(t.records.len(), 1);
        let r = &t.records[0];
        assert_eq!(r.customer, "legacy:customer1");
        assert_eq!(r.dimension, "Dimension1");
        assert_eq!(r.product_code, "EXAMPLE_proCode");
        assert_eq!(r.quantity, Some(1));
        assert_eq!(r.status, "Success");
        assert_eq!(r.metering_record_id, "b52e6ed6-98f0-4e90-8bd2-bf01b024961e");
        let hour = chrono::DateTime::parse_from_rfc3339("2018-04-19T16:00:00Z").unwrap().timestamp_millis();
        assert_eq!(r.hour_ms, Some(hour));
    }

    #[test]
    fn reads_gzip_and_lookup_events_output_alike() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(SELLER_GUIDE_SHAPE.as_bytes()).unwrap();
        let from_gzip = read_text("x.json.gz", &gz.finish().unwrap()).unwrap();
        let doc: Value = serde_json::from_str(SELLER_GUIDE_SHAPE).unwrap();
        let events: Vec<Value> = doc["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| serde_json::json!({"EventId": e["eventID"], "EventName": e["eventName"], "CloudTrailEvent": e.to_string()}))
            .collect();
        let lookup = serde_json::json!({"Events": events}).to_string();
        let from_lookup = read_text("l.json", lookup.as_bytes()).unwrap();
        assert_eq!(from_gzip.records.len(), 1);
        assert_eq!(
            from_gzip.records.iter().map(|r| (&r.metering_record_id, r.quantity)).collect::<Vec<_>>(),
            from_lookup.records.iter().map(|r| (&r.metering_record_id, r.quantity)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn failed_calls_meter_usage_and_unprocessed_records() {
        let doc = serde_json::json!({"Records": [
            {"eventSource": "metering-marketplace.amazonaws.com", "eventName": "BatchMeterUsage",
             "eventTime": "2026-11-29T10:00:00Z", "errorCode": "ThrottlingException"},
            {"eventSource": "metering-marketplace.amazonaws.com", "eventName": "MeterUsage",
             "eventTime": "2026-11-29T10:05:00Z", "recipientAccountId": "999988887777",
             "requestParameters": {"productCode": "p", "usageDimension": "d", "usageQuantity": 4,
                                   "timestamp": "2026-11-29T10:04:00Z"},
             "responseElements": {"meteringRecordId": "m-1"}},
            {"eventSource": "metering-marketplace.amazonaws.com", "eventName": "BatchMeterUsage",
             "eventTime": "2026-11-29T10:06:00Z",
             "requestParameters": {"usageRecords": []},
             "responseElements": {"results": [], "unprocessedRecords": [
                {"customerAWSAccountId": "111122223333", "licenseArn": "arn:l", "dimension": "d",
                 "timestamp": 1796032800, "quantity": 2}]}}
        ]});
        let t = read_text("a.json", doc.to_string().as_bytes()).unwrap();
        assert_eq!((t.failed_calls, t.meter_usage_calls, t.batch_calls), (1, 1, 2));
        assert_eq!(t.records[0].customer, "account:999988887777");
        assert_eq!((t.records[0].quantity, t.records[0].status.as_str()), (Some(4), "Success"));
        assert_eq!(t.records[1].customer, "aws:111122223333/arn:l");
        assert_eq!(t.records[1].status, "Unprocessed");
        assert_eq!(t.records[1].hour_ms, Some(1_796_032_800_000));
        assert_eq!(t.first_event.as_deref(), Some("2026-11-29T10:00:00Z"));
    }

    #[test]
    fn other_documents_are_refused_naming_the_file() {
        let e = read_text("a.json", br#"{"items": []}"#).unwrap_err().to_string();
        assert!(e.contains("a.json") && e.contains("Records"), "{e}");
        let e = read_text("b.json", b"{not json").unwrap_err().to_string();
        assert!(e.contains("b.json") && e.contains("not JSON"), "{e}");
    }
}
