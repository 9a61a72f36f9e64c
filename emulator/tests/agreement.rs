//! DescribeAgreement through the real Marketplace Agreement SDK (Smithy RPC v2 CBOR): agreements named by
//! registration tokens start ACTIVE, the inspection API changes their status, unknown ones are not found.

mod common;

use aws_sdk_marketplaceagreement::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_marketplaceagreement::error::ProvideErrorMetadata;
use common::{inspect_get, inspect_send, start};

fn agreement_client(endpoint: &str) -> aws_sdk_marketplaceagreement::Client {
    let creds =
        Credentials::new("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None, None, "test");
    let conf = aws_sdk_marketplaceagreement::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_marketplaceagreement::Client::from_conf(conf)
}

#[tokio::test]
async fn describe_agreement_answers_from_the_emulator_state() {
    let env = start().await;
    let c = agreement_client(&env.handle.endpoint_url());
    let out = c.describe_agreement().agreement_id("agmt-0123456789").send().await.unwrap();
    assert_eq!(out.status().map(|s| s.as_str()), Some("ACTIVE"));
    assert_eq!(out.agreement_id(), Some("agmt-0123456789"));

    let r = inspect_send(
        env.addr(),
        "PUT",
        "/_emulator/agreements",
        serde_json::json!({"agreement_id": "agmt-0123456789", "status": "TERMINATED"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let out = c.describe_agreement().agreement_id("agmt-0123456789").send().await.unwrap();
    assert_eq!(out.status().map(|s| s.as_str()), Some("TERMINATED"));
    assert_eq!(inspect_get(env.addr(), "/_emulator/agreements").await["agmt-0123456789"], "TERMINATED");

    let err = c.describe_agreement().agreement_id("agmt-nope").send().await.unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"), "{err:?}");

    let bad = inspect_send(
        env.addr(),
        "PUT",
        "/_emulator/agreements",
        serde_json::json!({"agreement_id": "agmt-0123456789", "status": "GONE"}),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("status"));
}
