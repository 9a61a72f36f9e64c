//! Issue #21: nobody can switch off a paying customer with a forged event. End to end over HTTP against the
//! agent and the emulator (real AWS SDKs): forged and altered events are refused and change nothing, authentic
//! ones apply, an end event AWS does not confirm is recorded but not applied, a wrongly ended customer can be
//! reinstated (audited), and a flood of fulfillment forms is rate limited before it reaches ResolveCustomer.
//!
//! SNS signing certificates come from a local TLS server whose CA the agent is told to trust
//! (`sns_extra_roots_file`, `sns_cert_host_pattern`): no network.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use meterd_emulator::{EmuToken, EmulatorConfig};
use meterd_proto::v1;
use meterd_tests::stack::{ACCOUNT, Stack, arn, http_get, http_post, http_post_with, parse_metrics};
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const TOPIC: &str = "arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-app";
const SECRET: &str = "s3cret-for-the-api-destination";
const EVENTS: &str = "/internal/marketplace/events";
const JSON: &str = "application/json";
const H: i64 = 1_795_600_800_000; // 2026-11-25T09:00:00Z

/// A local CA, an HTTPS server (certificate for `localhost`) serving the SNS signing certificate and answering
/// SubscribeURL visits, and the signing key.
struct SnsHost {
    port: u16,
    ca_pem: String,
    signer: rsa::RsaPrivateKey,
    /// Paths requested from the server.
    requests: Arc<Mutex<Vec<String>>>,
}

impl SnsHost {
    async fn start() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let tls_key = rcgen::KeyPair::generate().unwrap();
        let tls_cert =
            rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&tls_key, &issuer).unwrap();
        let sign_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let sign_cert = rcgen::CertificateParams::new(vec!["sns.amazonaws.com".into()])
            .unwrap()
            .signed_by(&sign_key, &issuer)
            .unwrap();
        let signer = rsa::RsaPrivateKey::from_pkcs8_der(&sign_key.serialize_der()).unwrap();

        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![tls_cert.der().clone()],
                    rustls::pki_types::PrivatePkcs8KeyDer::from(tls_key.serialize_der()).into(),
                )
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (reqs, cert_pem) = (requests.clone(), sign_cert.pem());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, reqs, cert_pem) = (acceptor.clone(), reqs.clone(), cert_pem.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    reqs.lock().unwrap().push(path.clone());
                    let (status, body) = if path == "/cert.pem" {
                        ("200 OK", cert_pem)
                    } else if path.starts_with("/confirm") {
                        ("200 OK", "<ConfirmSubscriptionResponse/>".to_string())
                    } else {
                        ("404 Not Found", String::new())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        SnsHost { port, ca_pem: ca.pem(), signer, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// An SNS envelope signed (SignatureVersion 1, SHA1withRSA) over the canonical string.
    fn signed(&self, kind: &str, id: &str, topic: &str, message: &str) -> serde_json::Value {
        let confirm = kind != "Notification";
        let mut v = serde_json::json!({
            "Type": kind, "MessageId": id, "TopicArn": topic, "Message": message,
            "Timestamp": "2026-11-25T09:30:00.000Z", "SignatureVersion": "1",
            "SigningCertURL": self.url("/cert.pem"),
        });
        let mut text = format!("Message\n{message}\nMessageId\n{id}\n");
        if confirm {
            v["SubscribeURL"] = self.url("/confirm?topic=x").into();
            v["Token"] = "tok-123".into();
            text.push_str(&format!("SubscribeURL\n{}\n", self.url("/confirm?topic=x")));
        }
        text.push_str("Timestamp\n2026-11-25T09:30:00.000Z\n");
        if confirm {
            text.push_str("Token\ntok-123\n");
        }
        text.push_str(&format!("TopicArn\n{topic}\nType\n{kind}\n"));
        let sig = rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(self.signer.clone()).sign(text.as_bytes()).to_vec();
        v["Signature"] = base64::engine::general_purpose::STANDARD.encode(sig).into();
        v
    }
}

fn eventbridge(detail_type: &str, agreement: &str, id: &str, account: &str) -> String {
    serde_json::json!({
        "version": "0", "id": id, "detail-type": detail_type, "source": "aws.agreement-marketplace",
        "account": account, "time": "2026-11-25T09:30:00Z", "region": "us-east-1", "resources": [],
        "detail": {
            "agreement": {"id": agreement},
            "license": {"arn": arn(0).trim_start_matches("arn:")},
            "product": {"id": "prod-x", "code": "prod-code-app"},
            "acceptor": {"accountId": ACCOUNT}
        }
    })
    .to_string()
}

async fn start(sns: &SnsHost, dir: &std::path::Path, rate: &str) -> Stack {
    std::fs::write(dir.join("events.secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(dir.join("ca.pem"), &sns.ca_pem).unwrap();
    let marketplace = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[marketplace]
listen = "127.0.0.1:0"
redirect_url = "https://app.example.com/welcome"
events_secret_file = "{}"
events_accounts = ["999988887777"]
sns_topics = ["{TOPIC}"]
sns_cert_host_pattern = "^localhost:[0-9]+$"
sns_extra_roots_file = "{}"
{rate}
"#,
        dir.join("events.secret").display(),
        dir.join("ca.pem").display()
    );
    let token = EmuToken {
        token: "tok-web".into(),
        product_code: "prod-code-app".into(),
        aws_account_id: Some(ACCOUNT.into()),
        license_arn: Some(arn(0)),
        agreement_id: Some("agmt-0000".into()),
        ..EmuToken::default()
    };
    let emu = EmulatorConfig { registration_tokens: vec![token], ..EmulatorConfig::default() };
    Stack::start(H + 60_000, emu, &["api_calls"], &["api_calls"], 1, &marketplace).await.unwrap()
}

async fn refused(s: &Stack) -> std::collections::BTreeMap<String, f64> {
    let (_, text) = http_get(s.admin.unwrap(), "/metrics").await;
    parse_metrics(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_eventbridge_events_are_refused_and_an_unconfirmed_end_is_not_applied() {
    let sns = SnsHost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(&sns, dir.path(), "").await;
    let http = s.http.unwrap();
    let mut cust = v1::customers_client::CustomersClient::new(s.client.channel());
    s.record("u1", 0, "api_calls", "1", H + 120_000).await.unwrap();

    // The issue's attack: an unauthenticated hand-written "License Deprovisioned" — on the old path and the new.
    let forged = eventbridge("License Deprovisioned - Manufacturer", "agmt-0000", "ev-forged", "999988887777");
    assert_eq!(http_post(http, "/marketplace/events", JSON, &forged).await.0, 404);
    let (code, _, body) = http_post(http, EVENTS, JSON, &forged).await;
    assert_eq!(code, 401, "{body}");
    let wrong = [("x-meterd-events-key", "s3cret-for-the-api-destinatioN")];
    assert_eq!(http_post_with(http, EVENTS, JSON, &wrong, &forged).await.0, 401);
    let key = [("x-meterd-events-key", SECRET)];
    let other_account = eventbridge("License Deprovisioned - Manufacturer", "agmt-0000", "ev-acct", "111111111111");
    assert_eq!(http_post_with(http, EVENTS, JSON, &key, &other_account).await.0, 403);
    let other_source = forged.replace("aws.agreement-marketplace", "my.app");
    assert_eq!(http_post_with(http, EVENTS, JSON, &key, &other_source).await.0, 403);
    // Nothing changed: still active, usage still accepted.
    s.record("u2", 0, "api_calls", "1", H + 130_000).await.unwrap();
    let m = refused(&s).await;
    assert_eq!(
        m.get("meterd_marketplace_requests_refused_total{endpoint=\"events\",reason=\"unauthenticated\"}"),
        Some(&2.0)
    );
    assert_eq!(m.get("meterd_marketplace_requests_refused_total{endpoint=\"events\",reason=\"account\"}"), Some(&1.0));
    assert_eq!(m.get("meterd_marketplace_requests_refused_total{endpoint=\"events\",reason=\"source\"}"), Some(&1.0));

    // Map the tenant through the form so the customer has a lifecycle and an agreement.
    let (code, head, _) = http_post(
        http,
        "/marketplace/fulfillment",
        "application/x-www-form-urlencoded",
        "x-amzn-marketplace-token=tok-web",
    )
    .await;
    assert_eq!(code, 303, "{head}");
    let tenant = head.lines().find_map(|l| l.split_once("tenant_id=")).map(|(_, t)| t.trim().to_string()).unwrap();

    // Authenticated, but AWS says the agreement is still ACTIVE: recorded, alerted, not applied.
    let end = eventbridge("License Deprovisioned - Manufacturer", "agmt-0000", "ev-1", "999988887777");
    let (code, _, body) = http_post_with(http, EVENTS, JSON, &key, &end).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["applied"].as_bool(), v["status"].as_str()), (Some(false), Some("active")), "{body}");
    assert!(v["unconfirmed"].as_str().unwrap().contains("ACTIVE"), "{body}");
    s.record("u3", 0, "api_calls", "1", H + 140_000).await.unwrap();
    let info = cust.get(v1::GetCustomerRequest { tenant_id: tenant.clone() }).await.unwrap().into_inner();
    let last = info.history.last().unwrap();
    assert!(!last.applied && last.source.contains("not confirmed by AWS"), "{last:?}");
    assert_eq!(
        refused(&s).await.get("meterd_lifecycle_events_unconfirmed_total{reason=\"agreement_active\"}"),
        Some(&1.0)
    );

    // AWS confirms it now: the same event (same id: the first try was not a duplicate) applies.
    s.emulator.set_agreement_status("agmt-0000", "TERMINATED").unwrap();
    let (_, _, body) = http_post_with(http, EVENTS, JSON, &key, &end).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["applied"].as_bool(), v["status"].as_str()), (Some(true), Some("deprovisioning")), "{body}");
    let err = s.record("u4", 0, "api_calls", "1", H + 150_000).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The way back: reinstated, audited, and the answer says refused usage is not in meterd.
    let r = cust
        .reinstate(v1::ReinstateCustomerRequest {
            customer: tenant.clone(),
            operator: "alice@ops".into(),
            reason: "deprovisioned by mistake, ticket 42".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.previous_status, "deprovisioning");
    assert!(r.refused_since.is_some());
    assert!(r.summary.contains("refused") && r.summary.contains("not in meterd"), "{}", r.summary);
    let info = cust.get(v1::GetCustomerRequest { tenant_id: tenant.clone() }).await.unwrap().into_inner();
    assert_eq!(info.status, "active");
    let last = info.history.last().unwrap();
    assert_eq!(last.source, "reinstated by alice@ops: deprovisioned by mistake, ticket 42");
    assert!(last.applied && last.at.is_some());
    s.record("u5", 0, "api_calls", "1", H + 160_000).await.unwrap();
    // Twice is refused; an unknown customer is not found; a reason is required.
    let again = |customer: &str, reason: &str| v1::ReinstateCustomerRequest {
        customer: customer.into(),
        operator: "alice".into(),
        reason: reason.into(),
    };
    assert_eq!(cust.reinstate(again(&tenant, "x")).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(cust.reinstate(again("nobody", "x")).await.unwrap_err().code(), Code::NotFound);
    let e = cust.reinstate(again(&tenant, " ")).await.unwrap_err();
    assert!(e.message().starts_with("reason:"), "{}", e.message());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_correctly_signed_sns_messages_from_configured_topics_are_applied() {
    let sns = SnsHost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(&sns, dir.path(), "").await;
    let http = s.http.unwrap();
    let statuses =
        || async { s.client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner().customers_by_status };
    let msg = r#"{"action":"unsubscribe-pending","customer-identifier":"cust-sns-1","product-code":"prod-code-app"}"#;
    let good = sns.signed("Notification", "m-1", TOPIC, msg);

    // Altered after signing: the message, or the topic.
    let mut altered = good.clone();
    altered["Message"] = msg.replace("cust-sns-1", "cust-sns-2").into();
    let (code, _, body) = http_post(http, EVENTS, JSON, &altered.to_string()).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("signature"), "{body}");
    // Signed by someone else (a key whose certificate SNS does not serve).
    let mut forged = good.clone();
    let other = rsa::RsaPrivateKey::from_pkcs8_der(
        &rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap().serialize_der(),
    )
    .unwrap();
    let sig = rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(other).sign(b"anything").to_vec();
    forged["Signature"] = base64::engine::general_purpose::STANDARD.encode(sig).into();
    assert_eq!(http_post(http, EVENTS, JSON, &forged.to_string()).await.0, 403);
    // Correctly signed, but for a topic this seller did not configure.
    let other_topic = sns.signed("Notification", "m-2", "arn:aws:sns:us-east-1:666666666666:other", msg);
    assert_eq!(http_post(http, EVENTS, JSON, &other_topic.to_string()).await.0, 403);
    // A certificate URL outside the allowed hosts is never fetched.
    let mut elsewhere = good.clone();
    elsewhere["SigningCertURL"] = format!("https://127.0.0.1:{}/cert.pem", sns.port).into();
    assert_eq!(http_post(http, EVENTS, JSON, &elsewhere.to_string()).await.0, 403);
    assert!(!statuses().await.contains_key("deprovisioning"), "nothing changed");
    let m = refused(&s).await;
    assert_eq!(
        m.get("meterd_marketplace_requests_refused_total{endpoint=\"events\",reason=\"signature\"}"),
        Some(&2.0)
    );
    assert_eq!(m.get("meterd_marketplace_requests_refused_total{endpoint=\"events\",reason=\"topic\"}"), Some(&1.0));
    assert_eq!(m.get("meterd_marketplace_requests_refused_total{endpoint=\"events\",reason=\"cert_url\"}"), Some(&1.0));

    // The authentic message applies (legacy SNS messages have no API to confirm them: the signature is the guard).
    let (code, _, body) = http_post(http, EVENTS, JSON, &good.to_string()).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["applied"].as_bool(), v["status"].as_str()), (Some(true), Some("deprovisioning")), "{body}");
    assert_eq!(statuses().await.get("deprovisioning"), Some(&1));

    // Subscription confirmation: visited for the configured topic only.
    let before = sns.requests.lock().unwrap().iter().filter(|p| p.starts_with("/confirm")).count();
    let stranger = sns.signed("SubscriptionConfirmation", "c-0", "arn:aws:sns:us-east-1:666666666666:other", "join");
    assert_eq!(http_post(http, EVENTS, JSON, &stranger.to_string()).await.0, 403);
    assert_eq!(sns.requests.lock().unwrap().iter().filter(|p| p.starts_with("/confirm")).count(), before);
    let confirm = sns.signed("SubscriptionConfirmation", "c-1", TOPIC, "You have chosen to subscribe");
    let (code, _, body) = http_post(http, EVENTS, JSON, &confirm.to_string()).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"confirmed\":true"), "{body}");
    assert_eq!(sns.requests.lock().unwrap().iter().filter(|p| p.starts_with("/confirm")).count(), before + 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fulfillment_forms_is_rate_limited_before_resolve_customer() {
    let sns = SnsHost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(&sns, dir.path(), "rate_limit = { per_minute = 1, burst = 3 }").await;
    let http = s.http.unwrap();
    let form = "application/x-www-form-urlencoded";
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(http_post(http, "/marketplace/fulfillment", form, "x-amzn-marketplace-token=tok-bogus").await.0);
    }
    let limited = codes.iter().filter(|c| **c == 429).count();
    // 3 at once, plus at most one refilled token should the machine stall for a minute.
    assert!(limited >= 8, "{codes:?}");
    let resolves = s.emulator.counters().calls.get("ResolveCustomer").copied().unwrap_or(0);
    assert_eq!(resolves as usize, 12 - limited, "only admitted forms reach AWS: {codes:?}");
    assert_eq!(
        refused(&s)
            .await
            .get("meterd_marketplace_requests_refused_total{endpoint=\"fulfillment\",reason=\"rate_limited\"}"),
        Some(&(limited as f64))
    );
    // Events have their own budget: the flood of forms does not block them.
    let key = [("x-meterd-events-key", SECRET)];
    let ev = eventbridge("License Updated - Manufacturer", "agmt-0000", "ev-upd", "999988887777");
    assert_eq!(http_post_with(http, EVENTS, JSON, &key, &ev).await.0, 200);
    s.stop().await;
}
