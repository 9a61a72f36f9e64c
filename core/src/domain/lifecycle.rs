//! Marketplace lifecycle events: EventBridge `aws.agreement-marketplace` events and legacy SNS subscription
//! messages, parsed liberally (SNS envelopes, license ARNs without `arn:`, detail-type suffixes) into one
//! strict shape, or refused with an error naming the field.

use serde_json::Value;

use super::echo::echo;
use super::validate::is_license_arn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleKind {
    /// License Updated / Purchase Agreement Created / Amended / subscribe-success: the customer may be metered.
    Active,
    /// License Deprovisioned / unsubscribe-pending: one final hour to report usage — seal and send at once.
    Deprovisioning,
    /// Purchase Agreement Ended / unsubscribe-success / subscribe-fail: no more usage.
    Ended,
}

/// Who the event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    License {
        license_arn: String,
        account_id: Option<String>,
    },
    Legacy {
        customer_identifier: String,
        product_code: String,
    },
    /// `Purchase Agreement *` events name only the agreement.
    Agreement {
        agreement_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub kind: LifecycleKind,
    pub subject: Subject,
    pub agreement_id: Option<String>,
    pub product_code: Option<String>,
    /// The event's own id (EventBridge `id`, SNS `MessageId`) when present, for de-duplication.
    pub event_id: Option<String>,
    /// What the source called it, for history and logs.
    pub source_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EventError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> EventError {
    EventError { field: field.to_string(), message: message.into() }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

/// AWS's own samples print license ARNs without the leading `arn:`.
pub fn normalize_license_arn(raw: &str) -> Option<String> {
    let s = raw.trim();
    let s = if s.starts_with("aws:") || s.starts_with("aws-") { format!("arn:{s}") } else { s.to_string() };
    is_license_arn(&s).then_some(s)
}

/// Parses one event document: an EventBridge event, an SNS notification envelope, or a bare SNS message.
pub fn parse(text: &str) -> Result<LifecycleEvent, EventError> {
    if text.len() > 256 * 1024 {
        return Err(err("event", "is larger than 256 KiB"));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| err("event", format!("is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(err("event", "must be a JSON object"));
    }
    if v.get("detail-type").is_some() || v.get("source").is_some() {
        return parse_eventbridge(&v);
    }
    if let Some(msg) = v.get("Message") {
        // An SNS envelope (as delivered to SQS or HTTP): the message is a JSON string.
        let inner = msg.as_str().ok_or_else(|| err("Message", "must be a string holding the SNS message JSON"))?;
        let mut e =
            parse(inner).map_err(|e| EventError { field: format!("Message.{}", e.field), message: e.message })?;
        if e.event_id.is_none() {
            e.event_id = str_at(&v, &["MessageId"]).map(str::to_string);
        }
        return Ok(e);
    }
    if v.get("action").is_some() {
        return parse_sns_message(&v);
    }
    Err(err("event", "is neither an EventBridge event (detail-type) nor an SNS subscription message (action)"))
}

fn parse_eventbridge(v: &Value) -> Result<LifecycleEvent, EventError> {
    let source = str_at(v, &["source"]).ok_or_else(|| err("source", "is required"))?;
    if source != "aws.agreement-marketplace" {
        return Err(err("source", format!("{} is not aws.agreement-marketplace", echo(source))));
    }
    let dt = str_at(v, &["detail-type"]).ok_or_else(|| err("detail-type", "is required"))?;
    // "License Deprovisioned - Manufacturer", "Purchase Agreement Ended - Proposer", ...
    let base = dt.split(" - ").next().unwrap_or(dt).trim();
    let kind = match base {
        "License Updated" | "Purchase Agreement Created" | "Purchase Agreement Amended" => LifecycleKind::Active,
        "License Deprovisioned" => LifecycleKind::Deprovisioning,
        "Purchase Agreement Ended" => LifecycleKind::Ended,
        other => return Err(err("detail-type", format!("{} is not a lifecycle event meterd acts on", echo(other)))),
    };
    let detail = v.get("detail").filter(|d| d.is_object()).ok_or_else(|| err("detail", "is required"))?;
    let agreement_id = str_at(detail, &["agreement", "id"]).map(str::to_string);
    let product_code = str_at(detail, &["product", "code"]).map(str::to_string);
    let subject = if base.starts_with("License") {
        let raw = str_at(detail, &["license", "arn"]).ok_or_else(|| err("detail.license.arn", "is required"))?;
        let license_arn = normalize_license_arn(raw)
            .ok_or_else(|| err("detail.license.arn", format!("{} is not a license ARN", echo(raw))))?;
        let account_id = str_at(detail, &["acceptor", "accountId"]).map(str::to_string);
        if let Some(a) = &account_id
            && !a.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err("detail.acceptor.accountId", format!("{} is not an AWS account id", echo(a))));
        }
        Subject::License { license_arn, account_id }
    } else {
        Subject::Agreement {
            agreement_id: agreement_id.clone().ok_or_else(|| err("detail.agreement.id", "is required"))?,
        }
    };
    Ok(LifecycleEvent {
        kind,
        subject,
        agreement_id,
        product_code,
        event_id: str_at(v, &["id"]).map(str::to_string),
        source_type: base.to_string(),
    })
}

fn parse_sns_message(v: &Value) -> Result<LifecycleEvent, EventError> {
    let action = str_at(v, &["action"]).ok_or_else(|| err("action", "is required"))?;
    let kind = match action {
        "subscribe-success" => LifecycleKind::Active,
        "unsubscribe-pending" => LifecycleKind::Deprovisioning,
        "unsubscribe-success" | "subscribe-fail" => LifecycleKind::Ended,
        "entitlement-updated" => return Err(err("action", "entitlement-updated concerns contracts; nothing to meter")),
        other => return Err(err("action", format!("{} is not a subscription action", echo(other)))),
    };
    let customer_identifier =
        str_at(v, &["customer-identifier"]).ok_or_else(|| err("customer-identifier", "is required"))?.to_string();
    let product_code = str_at(v, &["product-code"]).ok_or_else(|| err("product-code", "is required"))?.to_string();
    if customer_identifier.len() > 255 || customer_identifier.chars().any(char::is_control) {
        return Err(err("customer-identifier", "must be 1-255 characters without control characters"));
    }
    if !super::catalog::valid_product_code(&product_code) {
        return Err(err("product-code", format!("{} is not a product code", echo(&product_code))));
    }
    Ok(LifecycleEvent {
        kind,
        subject: Subject::Legacy { customer_identifier, product_code: product_code.clone() },
        agreement_id: None,
        product_code: Some(product_code),
        event_id: None,
        source_type: action.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ARN: &str = "arn:aws:license-manager::111122223333:license:l-0123456789abcdef";

    fn eventbridge(detail_type: &str, arn: &str) -> String {
        serde_json::json!({
            "version": "0",
            "id": "2e72b7e1-0000-4f77-9e57-5a8bd2f7e1e5",
            "detail-type": detail_type,
            "source": "aws.agreement-marketplace",
            "account": "999988887777",
            "time": "2026-11-27T12:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {
                "requestId": "e3b0c442",
                "agreement": {"id": "agmt-1111111111111111111111111"},
                "license": {"arn": arn},
                "product": {"id": "prod-abcdefgh12345", "code": "abc123xyz"},
                "acceptor": {"accountId": "111122223333"},
                "proposer": {"accountId": "999988887777"},
                "offer": {"id": "offer-1111111111111"}
            }
        })
        .to_string()
    }

    #[test]
    fn eventbridge_license_events() {
        let e = parse(&eventbridge("License Deprovisioned - Manufacturer", ARN)).unwrap();
        assert_eq!(e.kind, LifecycleKind::Deprovisioning);
        assert_eq!(e.subject, Subject::License { license_arn: ARN.into(), account_id: Some("111122223333".into()) });
        assert_eq!(e.agreement_id.as_deref(), Some("agmt-1111111111111111111111111"));
        assert_eq!(e.event_id.as_deref(), Some("2e72b7e1-0000-4f77-9e57-5a8bd2f7e1e5"));
        assert_eq!(parse(&eventbridge("License Updated - Manufacturer", ARN)).unwrap().kind, LifecycleKind::Active);
        // AWS's own sample prints the ARN without "arn:"; we store it normalized.
        let e = parse(&eventbridge("License Updated", &ARN[4..])).unwrap();
        assert!(matches!(e.subject, Subject::License { ref license_arn, .. } if license_arn == ARN));
    }

    #[test]
    fn eventbridge_agreement_events() {
        let e = parse(&eventbridge("Purchase Agreement Ended - Proposer", ARN)).unwrap();
        assert_eq!(e.kind, LifecycleKind::Ended);
        assert_eq!(e.subject, Subject::Agreement { agreement_id: "agmt-1111111111111111111111111".into() });
        for dt in ["Purchase Agreement Created - Manufacturer", "Purchase Agreement Amended - Proposer"] {
            assert_eq!(parse(&eventbridge(dt, ARN)).unwrap().kind, LifecycleKind::Active);
        }
    }

    #[test]
    fn sns_messages_bare_and_enveloped() {
        let msg = r#"{"action":"unsubscribe-pending","customer-identifier":"X01EXAMPLEX","product-code":"n0123EXAMPLEXXXXXXXXXXXX","offer-identifier":"offer-1","isFreeTrialTermPresent":"false"}"#;
        let e = parse(msg).unwrap();
        assert_eq!(e.kind, LifecycleKind::Deprovisioning);
        assert_eq!(
            e.subject,
            Subject::Legacy {
                customer_identifier: "X01EXAMPLEX".into(),
                product_code: "n0123EXAMPLEXXXXXXXXXXXX".into()
            }
        );
        let envelope = serde_json::json!({
            "Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-n0123",
            "Message": msg, "Timestamp": "2026-11-27T12:00:00.000Z"
        })
        .to_string();
        let e = parse(&envelope).unwrap();
        assert_eq!((e.kind, e.event_id.as_deref()), (LifecycleKind::Deprovisioning, Some("m-1")));
        for (action, kind) in [
            ("subscribe-success", LifecycleKind::Active),
            ("unsubscribe-success", LifecycleKind::Ended),
            ("subscribe-fail", LifecycleKind::Ended),
        ] {
            let m = msg.replace("unsubscribe-pending", action);
            assert_eq!(parse(&m).unwrap().kind, kind);
        }
    }

    #[test]
    fn malformed_events_name_the_field() {
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "event"),
            ("[1,2]".into(), "event"),
            ("{}".into(), "event"),
            (eventbridge("License Updated", ARN).replace("aws.agreement-marketplace", "aws.ec2"), "source"),
            (eventbridge("Something Else", ARN), "detail-type"),
            (eventbridge("License Updated", "not-an-arn"), "detail.license.arn"),
            (eventbridge("License Updated", ARN).replace("\"111122223333\"", "\"12ab\""), "detail.acceptor.accountId"),
            (
                eventbridge("Purchase Agreement Ended", ARN).replace("agmt-1111111111111111111111111", ""),
                "detail.agreement.id",
            ),
            (r#"{"action":"unsubscribe-pending","product-code":"p1"}"#.into(), "customer-identifier"),
            (r#"{"action":"unsubscribe-pending","customer-identifier":"c"}"#.into(), "product-code"),
            (r#"{"action":"dance","customer-identifier":"c","product-code":"p"}"#.into(), "action"),
            (r#"{"Type":"Notification","Message":{"action":"x"}}"#.into(), "Message"),
            (
                r#"{"Type":"Notification","Message":"{\"action\":\"subscribe-success\"}"}"#.into(),
                "Message.customer-identifier",
            ),
        ];
        for (text, field) in cases {
            let e = parse(&text).expect_err(&text);
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_mutated_events(cut in 0usize..600, junk in "[\\[\\]{}\":,a-z0-9 -]{0,8}") {
            let base = eventbridge("License Deprovisioned - Manufacturer", ARN);
            let cut = cut.min(base.len());
            let mut s = base[..cut].to_string();
            s.push_str(&junk);
            s.push_str(&base[cut..]);
            let _ = parse(&s);
        }
    }
}
