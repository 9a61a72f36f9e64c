//! SNS HTTPS deliveries: the envelope, the string AWS signs, and its verification with the certificate named by
//! `SigningCertURL` — fetched over TLS only from an SNS host, then cached — plus subscription confirmation.
//!
//! The certificate is trusted because it came over a verified TLS connection from an SNS endpoint (AWS's own
//! guidance); the signature then proves the message came from SNS, and the topic check that it came from a
//! topic this seller configured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm, alg_id};
use serde_json::Value;

/// What SNS sends over HTTP(S).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnsType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: SnsType,
    pub message_id: String,
    pub topic_arn: String,
    pub message: String,
    pub subject: Option<String>,
    pub timestamp: String,
    pub signature_version: String,
    pub signature: String,
    pub signing_cert_url: String,
    pub subscribe_url: Option<String>,
    pub token: Option<String>,
}

/// Why a delivery was not accepted. `reason` is a fixed word used as a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnsError {
    /// Not a well-formed SNS envelope (400).
    #[error("{field}: {message}")]
    Malformed { field: String, message: String },
    /// Well-formed but not authentic, or not from a configured topic (403).
    #[error("{detail}")]
    Refused { reason: &'static str, detail: String },
    /// The certificate or confirmation URL could not be fetched: SNS retries (503).
    #[error("{0}")]
    Unavailable(String),
}

fn malformed(field: &str, message: impl Into<String>) -> SnsError {
    SnsError::Malformed { field: field.to_string(), message: message.into() }
}

fn refused(reason: &'static str, detail: impl Into<String>) -> SnsError {
    SnsError::Refused { reason, detail: detail.into() }
}

/// Whether a JSON document looks like an SNS envelope (rather than an EventBridge event).
pub fn is_envelope(v: &Value) -> bool {
    v.get("Type").is_some() && v.get("TopicArn").is_some()
}

pub fn parse(v: &Value) -> Result<Envelope, SnsError> {
    let field = |name: &str| -> Result<String, SnsError> {
        match v.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) | None => Err(malformed(name, "is required")),
            Some(_) => Err(malformed(name, "must be a string")),
        }
    };
    let optional = |name: &str| -> Result<Option<String>, SnsError> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed(name, "must be a string")),
        }
    };
    let kind = match field("Type")?.as_str() {
        "Notification" => SnsType::Notification,
        "SubscriptionConfirmation" => SnsType::SubscriptionConfirmation,
        "UnsubscribeConfirmation" => SnsType::UnsubscribeConfirmation,
        other => return Err(malformed("Type", format!("{other:?} is not an SNS message type"))),
    };
    let e = Envelope {
        kind,
        message_id: field("MessageId")?,
        topic_arn: field("TopicArn")?,
        message: field("Message")?,
        subject: optional("Subject")?,
        timestamp: field("Timestamp")?,
        signature_version: field("SignatureVersion")?,
        signature: field("Signature")?,
        signing_cert_url: field("SigningCertURL")?,
        subscribe_url: if kind == SnsType::Notification { None } else { Some(field("SubscribeURL")?) },
        token: if kind == SnsType::Notification { None } else { Some(field("Token")?) },
    };
    Ok(e)
}

/// The canonical string SNS signs: selected fields as `Name\nvalue\n`, in byte order of their names.
/// A Notification's `Subject` is included only when present.
pub fn string_to_sign(e: &Envelope) -> String {
    let mut fields: Vec<(&str, &str)> = vec![("Message", &e.message), ("MessageId", &e.message_id)];
    match e.kind {
        SnsType::Notification => {
            if let Some(s) = &e.subject {
                fields.push(("Subject", s));
            }
        }
        SnsType::SubscriptionConfirmation | SnsType::UnsubscribeConfirmation => {
            fields.push(("SubscribeURL", e.subscribe_url.as_deref().unwrap_or("")));
        }
    }
    fields.push(("Timestamp", &e.timestamp));
    if e.kind != SnsType::Notification {
        fields.push(("Token", e.token.as_deref().unwrap_or("")));
    }
    fields.push(("TopicArn", &e.topic_arn));
    let kind = match e.kind {
        SnsType::Notification => "Notification",
        SnsType::SubscriptionConfirmation => "SubscriptionConfirmation",
        SnsType::UnsubscribeConfirmation => "UnsubscribeConfirmation",
    };
    fields.push(("Type", kind));
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(k);
        out.push('\n');
        out.push_str(v);
        out.push('\n');
    }
    out
}

/// RSA PKCS#1 v1.5 over the certificate's public key (SignatureVersion 1: SHA1, 2: SHA256). rustls-webpki
/// parses the certificate and hands us its key; SHA1 is not among its own algorithms, so aws-lc-rs verifies.
#[derive(Debug)]
struct RsaPkcs1 {
    params: &'static aws_lc_rs::signature::RsaParameters,
    sig_alg: AlgorithmIdentifier,
}

impl SignatureVerificationAlgorithm for RsaPkcs1 {
    fn verify_signature(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), InvalidSignature> {
        aws_lc_rs::signature::UnparsedPublicKey::new(self.params, public_key)
            .verify(message, signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.sig_alg
    }
}

/// sha1WithRSAEncryption (1.2.840.113549.1.1.5) with NULL parameters, as an AlgorithmIdentifier body.
const RSA_PKCS1_SHA1: AlgorithmIdentifier =
    AlgorithmIdentifier::from_slice(&[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00]);

static SHA1: RsaPkcs1 =
    RsaPkcs1 { params: &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, sig_alg: RSA_PKCS1_SHA1 };
static SHA256: RsaPkcs1 =
    RsaPkcs1 { params: &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, sig_alg: alg_id::RSA_PKCS1_SHA256 };

/// Checks `e`'s signature against a DER certificate.
pub fn verify_with_cert(e: &Envelope, cert_der: &[u8]) -> Result<(), SnsError> {
    let alg: &RsaPkcs1 = match e.signature_version.as_str() {
        "1" => &SHA1,
        "2" => &SHA256,
        v => return Err(malformed("SignatureVersion", format!("{v:?} is not 1 or 2"))),
    };
    let sig = base64::engine::general_purpose::STANDARD
        .decode(e.signature.as_bytes())
        .map_err(|_| malformed("Signature", "is not base64"))?;
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|err| refused("certificate", format!("SigningCertURL: not an X.509 certificate: {err}")))?;
    cert.verify_signature(alg, string_to_sign(e).as_bytes(), &sig)
        .map_err(|_| refused("signature", "Signature: does not verify with the SNS certificate"))
}

const CACHE_MAX: usize = 32;
const FETCH_LIMIT: usize = 64 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Verifies deliveries of the configured topics; one per marketplace listener.
pub struct SnsVerifier {
    topics: Vec<String>,
    host: regex::Regex,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    certs: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl SnsVerifier {
    /// `extra_roots_pem` adds trust roots (tests, private CAs) to the public web roots.
    pub fn new(topics: Vec<String>, host_pattern: &str, extra_roots_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_roots_pem {
            let mut n = 0;
            for c in CertificateDer::pem_slice_iter(pem) {
                roots.add(c.map_err(|e| anyhow::anyhow!("marketplace.sns_extra_roots_file: {e}"))?)?;
                n += 1;
            }
            anyhow::ensure!(n > 0, "marketplace.sns_extra_roots_file: no PEM certificate in it");
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        Ok(Self {
            topics,
            host: regex::Regex::new(host_pattern)?,
            client: Client::builder(TokioExecutor::new()).build(https),
            certs: Mutex::default(),
        })
    }

    /// Only `https://` URLs on an allowed SNS host.
    fn check_url(&self, field: &str, url: &str) -> Result<http::Uri, SnsError> {
        let uri: http::Uri = url.parse().map_err(|_| refused("cert_url", format!("{field}: not a URL")))?;
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
        if uri.scheme_str() != Some("https") || !self.host.is_match(authority) {
            return Err(refused("cert_url", format!("{field}: {authority:?} is not an SNS host reached over https")));
        }
        Ok(uri)
    }

    async fn get(&self, uri: http::Uri) -> Result<Vec<u8>, SnsError> {
        let call = async {
            let resp = self.client.get(uri.clone()).await.map_err(|e| {
                SnsError::Unavailable(format!("GET {}: {e}", uri.authority().map_or("", |a| a.as_str())))
            })?;
            if !resp.status().is_success() {
                return Err(SnsError::Unavailable(format!("GET {}: HTTP {}", uri.path(), resp.status())));
            }
            let body = Limited::new(resp.into_body(), FETCH_LIMIT)
                .collect()
                .await
                .map_err(|e| SnsError::Unavailable(format!("GET {}: {e}", uri.path())))?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(FETCH_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err(SnsError::Unavailable(format!("GET {}: timed out", uri.path()))))
    }

    async fn certificate(&self, url: &str) -> Result<Arc<Vec<u8>>, SnsError> {
        if let Some(c) = self.certs.lock().expect("cert cache").get(url) {
            return Ok(c.clone());
        }
        let uri = self.check_url("SigningCertURL", url)?;
        let pem = self.get(uri).await?;
        let der = CertificateDer::from_pem_slice(&pem)
            .map_err(|_| refused("certificate", "SigningCertURL: did not serve a PEM certificate"))?;
        let der = Arc::new(der.to_vec());
        let mut cache = self.certs.lock().expect("cert cache");
        // SNS rotates its certificate rarely; a bound keeps a stream of distinct URLs from growing the cache.
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(url.to_string(), der.clone());
        Ok(der)
    }

    /// Topic allowed, certificate from SNS, signature valid.
    pub async fn verify(&self, e: &Envelope) -> Result<(), SnsError> {
        if !self.topics.iter().any(|t| t == &e.topic_arn) {
            return Err(refused("topic", format!("TopicArn: {:?} is not in marketplace.sns_topics", e.topic_arn)));
        }
        let cert = self.certificate(&e.signing_cert_url).await?;
        verify_with_cert(e, &cert)
    }

    /// Confirms a verified SubscriptionConfirmation by visiting its SubscribeURL (an SNS host only).
    pub async fn confirm(&self, e: &Envelope) -> Result<(), SnsError> {
        let url = e.subscribe_url.as_deref().unwrap_or("");
        let uri = self.check_url("SubscribeURL", url)?;
        self.get(uri).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: SnsType) -> Envelope {
        Envelope {
            kind,
            message_id: "m-1".into(),
            topic_arn: "arn:aws:sns:us-east-1:123456789012:t".into(),
            message: "hello\nworld".into(),
            subject: None,
            timestamp: "2026-11-27T12:00:00.000Z".into(),
            signature_version: "1".into(),
            signature: String::new(),
            signing_cert_url: "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem".into(),
            subscribe_url: (kind != SnsType::Notification).then(|| "https://sns.us-east-1.amazonaws.com/?a=b".into()),
            token: (kind != SnsType::Notification).then(|| "tok".into()),
        }
    }

    #[test]
    fn notification_string_to_sign() {
        let mut e = envelope(SnsType::Notification);
        assert_eq!(
            string_to_sign(&e),
            "Message\nhello\nworld\nMessageId\nm-1\nTimestamp\n2026-11-27T12:00:00.000Z\nTopicArn\narn:aws:sns:us-east-1:123456789012:t\nType\nNotification\n"
        );
        e.subject = Some("S".into());
        assert!(string_to_sign(&e).contains("MessageId\nm-1\nSubject\nS\nTimestamp\n"), "{}", string_to_sign(&e));
    }

    #[test]
    fn confirmation_string_to_sign() {
        for (kind, name) in [
            (SnsType::SubscriptionConfirmation, "SubscriptionConfirmation"),
            (SnsType::UnsubscribeConfirmation, "UnsubscribeConfirmation"),
        ] {
            let mut e = envelope(kind);
            // A Subject is never part of a confirmation's signed string.
            e.subject = Some("ignored".into());
            assert_eq!(
                string_to_sign(&e),
                format!(
                    "Message\nhello\nworld\nMessageId\nm-1\nSubscribeURL\nhttps://sns.us-east-1.amazonaws.com/?a=b\nTimestamp\n2026-11-27T12:00:00.000Z\nToken\ntok\nTopicArn\narn:aws:sns:us-east-1:123456789012:t\nType\n{name}\n"
                )
            );
        }
    }

    #[test]
    fn parse_names_the_field() {
        let good = serde_json::json!({
            "Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": "{}",
            "Timestamp": "t", "SignatureVersion": "1", "Signature": "AA==", "SigningCertURL": "https://x/"
        });
        assert!(is_envelope(&good));
        assert_eq!(parse(&good).unwrap().kind, SnsType::Notification);
        for (k, v, field) in [
            ("Type", serde_json::json!("Other"), "Type"),
            ("Signature", serde_json::json!(""), "Signature"),
            ("Message", serde_json::json!({"a": 1}), "Message"),
            ("Type", serde_json::json!("SubscriptionConfirmation"), "SubscribeURL"),
        ] {
            let mut bad = good.clone();
            bad[k] = v;
            assert!(matches!(parse(&bad), Err(SnsError::Malformed { field: f, .. }) if f == field), "{k}");
        }
    }

    #[test]
    fn cert_urls_outside_sns_are_refused_before_any_fetch() {
        let v = SnsVerifier::new(vec![], crate::config::SNS_CERT_HOST_PATTERN, None).unwrap();
        for bad in [
            "http://sns.us-east-1.amazonaws.com/c.pem",
            "https://sns.us-east-1.amazonaws.com.evil.example/c.pem",
            "https://evil.example/sns.us-east-1.amazonaws.com/c.pem",
            "https://sns.us-east-1.amazonaws.com:8443/c.pem",
            "not a url",
        ] {
            assert!(
                matches!(v.check_url("SigningCertURL", bad), Err(SnsError::Refused { reason: "cert_url", .. })),
                "{bad}"
            );
        }
        for ok in ["https://sns.eu-west-1.amazonaws.com/c.pem", "https://sns.cn-north-1.amazonaws.com.cn/c.pem"] {
            assert!(v.check_url("SigningCertURL", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn signatures_v1_and_v2_verify_and_alterations_do_not() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sns.us-east-1.amazonaws.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pkcs8 = key.serialize_der();
        // Neither aws-lc-rs nor ring signs PKCS#1 v1.5 with SHA1 any more; the RustCrypto rsa crate (tests only) does.
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::{SignatureEncoding, Signer};
        let private = rsa::RsaPrivateKey::from_pkcs8_der(&pkcs8).unwrap();
        for version in ["1", "2"] {
            let mut e = envelope(SnsType::Notification);
            e.signature_version = version.into();
            let text = string_to_sign(&e);
            let sig = if version == "1" {
                rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(private.clone()).sign(text.as_bytes()).to_vec()
            } else {
                rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private.clone()).sign(text.as_bytes()).to_vec()
            };
            e.signature = base64::engine::general_purpose::STANDARD.encode(&sig);
            verify_with_cert(&e, cert.der()).unwrap();
            let mut altered = e.clone();
            altered.message.push(' ');
            assert!(matches!(
                verify_with_cert(&altered, cert.der()),
                Err(SnsError::Refused { reason: "signature", .. })
            ));
            let mut other_version = e.clone();
            other_version.signature_version = if version == "1" { "2" } else { "1" }.into();
            assert!(verify_with_cert(&other_version, cert.der()).is_err());
        }
    }
}
