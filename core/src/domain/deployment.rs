//! `identity = "deployment"`: meterd on the buyer's own host (AMI and container products). AWS knows the buyer
//! from the credentials the call is signed with (the instance profile, the pod's role), so events name no
//! customer, and each sealed record — one per product × dimension × hour — is sent with `MeterUsage`.
//! Pure rules here: the product settings, the event shape, and the `ClientToken` of a frozen record.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::event::Identity;
use super::record::SealedRecord;
use super::validate::{FieldError, RawCustomer};

/// How long MeterUsage accepts a record after its hour starts (AWS: "at most 6 hours in the past").
pub const METER_USAGE_WINDOW: Duration = Duration::from_secs(6 * 3600);

/// The identity of an event for a deployment-mode product: always [`Identity::Deployment`]; an event that
/// names a customer is refused, naming the field it set.
pub fn event_identity(customer: Option<&RawCustomer>, product: &str) -> Result<Identity, FieldError> {
    let field = match customer {
        None => return Ok(Identity::Deployment),
        Some(RawCustomer::TenantId(_)) => "customer.tenant_id",
        Some(RawCustomer::AwsAccount { .. }) => "customer.aws_account",
        Some(RawCustomer::Legacy { .. }) => "customer.legacy",
    };
    Err(FieldError {
        field: field.into(),
        message: format!(
            "product {product:?} uses identity = \"deployment\" (metered with the credentials of the host it runs \
             on): leave customer unset"
        ),
    })
}

/// The `ClientToken` of a sealed record: a digest of exactly what `MeterUsage` sends (product code, hour,
/// dimension, quantity, allocations), so every resend — after a timeout, a lost answer or a crash — carries the
/// same token and body, and AWS answers it idempotently. 64 hex characters (AWS allows 1–64).
pub fn client_token(product_code: &str, r: &SealedRecord) -> String {
    let mut h = Sha256::new();
    // Length-prefixed fields: no two different records encode the same bytes.
    let mut put = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    put(b"meterd-meter-usage-v1");
    put(product_code.as_bytes());
    put(&r.key.hour_ms.div_euclid(1000).to_be_bytes());
    put(r.key.dimension.as_bytes());
    put(&r.quantity.to_be_bytes());
    for a in &r.allocations {
        put(&a.quantity.to_be_bytes());
        for (k, v) in &a.tags {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        put(b"/");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::quantity::Micros;
    use crate::domain::record::{Allocation, RecordKey, RecordState};

    fn record(quantity: u32, allocations: Vec<Allocation>) -> SealedRecord {
        SealedRecord {
            key: RecordKey {
                hour_ms: 1_790_000_000_000 / 3_600_000 * 3_600_000,
                product: "ami".into(),
                identity: Identity::Deployment,
                dimension: "vcpu_hours".into(),
            },
            quantity,
            allocations,
            deadline_ms: 0,
            sealed_at_ms: 0,
            recorded: Micros::ZERO,
            carried_in: Micros::ZERO,
            carried_out: Micros::ZERO,
            late: Micros::ZERO,
            sent_as: None,
            state: RecordState::Sealed,
        }
    }

    #[test]
    fn the_client_token_follows_the_frozen_content_only() {
        let a = record(7, vec![]);
        let t = client_token("pc", &a);
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        // The state, deadline and accounting are not sent: a resend in any state carries the same token.
        let resend = SealedRecord {
            state: RecordState::InFlight { attempts: 3, next_attempt_ms: 9 },
            deadline_ms: 5,
            ..a.clone()
        };
        assert_eq!(client_token("pc", &resend), t);
        // Anything sent changes it.
        assert_ne!(client_token("pc2", &a), t);
        assert_ne!(client_token("pc", &record(8, vec![])), t);
        let tagged =
            |v: &str| record(7, vec![Allocation { tags: [("team".to_string(), v.to_string())].into(), quantity: 7 }]);
        assert_ne!(client_token("pc", &tagged("a")), client_token("pc", &tagged("b")));
        let mut other_hour = a.clone();
        other_hour.key.hour_ms += 3_600_000;
        assert_ne!(client_token("pc", &other_hour), t);
    }

    #[test]
    fn events_naming_a_customer_are_refused_naming_the_field() {
        assert_eq!(event_identity(None, "ami").unwrap(), Identity::Deployment);
        let e = event_identity(Some(&RawCustomer::TenantId("t".into())), "ami").unwrap_err();
        assert_eq!(e.field, "customer.tenant_id");
        assert!(e.message.contains("identity = \"deployment\""), "{}", e.message);
        let e = event_identity(
            Some(&RawCustomer::Legacy { customer_identifier: "c".into(), product_code: String::new() }),
            "ami",
        )
        .unwrap_err();
        assert_eq!(e.field, "customer.legacy");
        let e = event_identity(
            Some(&RawCustomer::AwsAccount { customer_aws_account_id: String::new(), license_arn: String::new() }),
            "ami",
        )
        .unwrap_err();
        assert_eq!(e.field, "customer.aws_account");
    }
}
