//! CloudTrail-shaped records of the metering calls the emulator processed, served at `/_emulator/cloudtrail`
//! as a CloudTrail log file (`{"Records": [...]}`) or, with `?format=lookup-events`, as `aws cloudtrail
//! lookup-events` prints them — so `meterd verify` can be tested end to end.
//!
//! Modelled on the BatchMeterUsage example in the AWS Marketplace Seller Guide ("Logging AWS Marketplace
//! Metering API calls with AWS CloudTrail"): `eventSource` `metering-marketplace.amazonaws.com`; the request
//! body as `requestParameters` and the answer as `responseElements`, members camelCased
//! (`usageRecords`, `customerAWSAccountId`, `results[].usageRecord`, `meteringRecordId`, `status`,
//! `unprocessedRecords`); timestamps written like `Apr 19, 2018 4:32:50 PM`; a call answered with an error has
//! `errorCode` / `errorMessage` and no `responseElements`. Calls refused before their body is read (rate limit,
//! injected throttles and 500s, dropped connections) are not logged. Identity fields (`userIdentity`,
//! `recipientAccountId`, the source address) are fixed placeholders: the emulator has no seller account.

use std::collections::VecDeque;

use serde_json::{Map, Value, json};

/// Events kept; older ones are dropped first (the count of dropped ones is in the response header
/// `x-emulator-cloudtrail-dropped`).
pub const KEEP: usize = 10_000;
pub const EVENT_SOURCE: &str = "metering-marketplace.amazonaws.com";
/// The placeholder seller account the events are logged in.
pub const ACCOUNT: &str = "123456789012";

#[derive(Debug, Default)]
pub(crate) struct CloudTrailLog {
    /// Events as JSON text: smaller than a `Value` tree, and served as-is.
    events: VecDeque<String>,
    pub dropped: u64,
}

impl CloudTrailLog {
    pub fn push(
        &mut self,
        operation: &str,
        request_id: &str,
        now_ms: i64,
        body: &[u8],
        answer: Result<&Value, (&str, &str)>,
    ) {
        let request = serde_json::from_slice::<Value>(body).map(|v| camel(&v)).unwrap_or(Value::Null);
        let mut event = json!({
            "eventVersion": "1.08",
            "userIdentity": {
                "type": "IAMUser",
                "principalId": "AIDAEMULATOR",
                "arn": format!("arn:aws:iam::{ACCOUNT}:user/meterd-emulator"),
                "accountId": ACCOUNT,
                "userName": "meterd-emulator",
            },
            "eventTime": crate::clock::rfc3339(now_ms),
            "eventSource": EVENT_SOURCE,
            "eventName": operation,
            "awsRegion": "us-east-1",
            "sourceIPAddress": "127.0.0.1",
            "userAgent": "meterd-emulator",
            "requestParameters": request,
            "requestID": request_id,
            "eventID": uuid::Uuid::new_v4().to_string(),
            "readOnly": false,
            "eventType": "AwsApiCall",
            "managementEvent": true,
            "recipientAccountId": ACCOUNT,
            "eventCategory": "Management",
        });
        if let Value::Object(o) = &mut event {
            match answer {
                Ok(v) => {
                    o.insert("responseElements".into(), camel(v));
                }
                Err((code, message)) => {
                    o.insert("errorCode".into(), Value::String(code.to_string()));
                    o.insert("errorMessage".into(), Value::String(message.to_string()));
                    o.insert("responseElements".into(), Value::Null);
                }
            }
        }
        if self.events.len() == KEEP {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(event.to_string());
    }

    /// A CloudTrail log file: `{"Records": [...]}`.
    pub fn log_file(&self) -> String {
        let mut out = String::from("{\"Records\":[");
        for (i, e) in self.events.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(e);
        }
        out.push_str("]}");
        out
    }

    /// `aws cloudtrail lookup-events` output: newest first, each event as a JSON string in `CloudTrailEvent`.
    pub fn lookup_events(&self) -> Value {
        let events: Vec<Value> = self
            .events
            .iter()
            .rev()
            .filter_map(|text| {
                let e: Value = serde_json::from_str(text).ok()?;
                Some(json!({
                    "EventId": e["eventID"],
                    "EventName": e["eventName"],
                    "ReadOnly": "false",
                    "EventTime": e["eventTime"],
                    "EventSource": e["eventSource"],
                    "Username": e["userIdentity"]["userName"],
                    "Resources": [],
                    "CloudTrailEvent": text,
                }))
            })
            .collect();
        json!({ "Events": events })
    }
}

/// The API's PascalCase members camelCased, as CloudTrail writes them, with `Timestamp` values (epoch seconds on
/// the wire) in the form of AWS's published example.
fn camel(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o {
                let mut name: String = k.chars().take(1).flat_map(char::to_lowercase).collect();
                name.push_str(k.get(1..).unwrap_or(""));
                let value = match (k.as_str(), v) {
                    ("Timestamp", Value::Number(n)) => n.as_f64().map_or(v.clone(), |s| Value::String(example_time(s))),
                    _ => camel(v),
                };
                out.insert(name, value);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(camel).collect()),
        other => other.clone(),
    }
}

/// `Apr 19, 2018 4:32:50 PM` (UTC).
fn example_time(secs: f64) -> String {
    chrono::DateTime::from_timestamp_millis((secs * 1000.0) as i64)
        .map(|d| d.format("%b %-d, %Y %-I:%M:%S %p").to_string())
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_camel_cased_and_timestamps_read_like_aws_example() {
        let v = camel(&json!({"UsageRecords": [{"CustomerAWSAccountId": "1", "Timestamp": 1524155570,
            "Quantity": 1}], "ProductCode": "p"}));
        assert_eq!(
            v,
            json!({"usageRecords": [{"customerAWSAccountId": "1", "timestamp": "Apr 19, 2018 4:32:50 PM",
                "quantity": 1}], "productCode": "p"})
        );
    }

    #[test]
    fn keeps_the_last_events_and_counts_the_dropped() {
        let mut log = CloudTrailLog::default();
        for i in 0..KEEP + 2 {
            log.push("BatchMeterUsage", &i.to_string(), 0, b"{}", Ok(&json!({"Results": []})));
        }
        assert_eq!(log.dropped, 2);
        let file: Value = serde_json::from_str(&log.log_file()).unwrap();
        assert_eq!(file["Records"].as_array().unwrap().len(), KEEP);
        assert_eq!(file["Records"][0]["requestID"], "2");
        assert_eq!(file["Records"][0]["responseElements"], json!({"results": []}));
        let lookup = log.lookup_events();
        assert_eq!(lookup["Events"][0]["EventName"], "BatchMeterUsage");
        let inner: Value = serde_json::from_str(lookup["Events"][0]["CloudTrailEvent"].as_str().unwrap()).unwrap();
        assert_eq!(inner["requestID"], (KEEP + 1).to_string());
    }

    #[test]
    fn an_error_answer_is_logged_with_its_code_and_no_response() {
        let mut log = CloudTrailLog::default();
        log.push("MeterUsage", "r", 0, b"not json", Err(("InvalidProductCodeException", "no such product")));
        let file: Value = serde_json::from_str(&log.log_file()).unwrap();
        let e = &file["Records"][0];
        assert_eq!(e["errorCode"], "InvalidProductCodeException");
        assert_eq!(e["responseElements"], Value::Null);
        assert_eq!(e["requestParameters"], Value::Null);
    }
}
