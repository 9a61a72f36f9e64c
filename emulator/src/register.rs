//! `RegisterUsage` (paid container products on Amazon ECS/EKS): the call a container makes at launch to learn
//! that its buyer is entitled. AWS answers with a JWT signed with its key (`Signature`), which the product can
//! verify with AWS's public key of `PublicKeyVersion`. The emulator signs with its own ES256 key, made at start
//! and served at `GET /_emulator/register_usage/public_key`, so a test can verify what meterd received.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value, json};

use crate::wire::{self, AwsError};

/// The only public key version the emulator has (AWS publishes version 1).
pub const PUBLIC_KEY_VERSION: i128 = 1;
const MAX_NONCE_CHARS: usize = 255;

/// The emulator's signing key. A fresh one per process: nothing signed by an earlier run verifies.
pub(crate) struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// When the key was made (epoch seconds), answered as `PublicKeyRotationTimestamp`.
    pub made_at_secs: i64,
}

impl Signer {
    pub fn new(now_secs: i64) -> Self {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key generation");
        Self { key, rng: SystemRandom::new(), made_at_secs: now_secs }
    }

    /// The public key: the uncompressed P-256 point (`04 || x || y`) and the same as a JWK.
    pub fn public_key(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({
            "public_key_version": PUBLIC_KEY_VERSION,
            "alg": "ES256",
            "public_key": B64.encode(point),
            "jwk": { "kty": "EC", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]) },
        })
    }

    fn sign_jwt(&self, claims: &Value) -> String {
        let header = B64.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = B64.encode(claims.to_string());
        let input = format!("{header}.{payload}");
        let sig = self.key.sign(&self.rng, input.as_bytes()).expect("ECDSA signing");
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

/// What the emulated account and host are, for one `RegisterUsage` call.
pub(crate) struct Host<'a> {
    pub container_platform: bool,
    pub product_known: bool,
    pub entitled: bool,
    pub signer: &'a Signer,
    pub now_secs: i64,
}

/// Validates the request (model constraints, then the host, product, entitlement and key version, in the
/// order AWS's modelled errors suggest) and answers `{Signature, PublicKeyRotationTimestamp}`.
pub(crate) fn register_usage(m: &Map<String, Value>, host: &Host<'_>) -> Result<Value, AwsError> {
    let input = wire::register_usage_input(m)?;
    let mut errors = Vec::new();
    match &input.product_code {
        None => errors.push("Value null at 'productCode' failed to satisfy constraint: Member must not be null".into()),
        Some(c) if c.is_empty() || !crate::rules::is_product_code(c) => errors.push(format!(
            "Value '{c}' at 'productCode' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[-a-zA-Z0-9/=:_.@]*$ of length 1-255"
        )),
        _ => {}
    }
    match input.public_key_version {
        None => errors
            .push("Value null at 'publicKeyVersion' failed to satisfy constraint: Member must not be null".into()),
        Some(v) if v < 1 => errors.push(format!(
            "Value '{v}' at 'publicKeyVersion' failed to satisfy constraint: Member must have value greater than or equal to 1"
        )),
        _ => {}
    }
    if let Some(n) = &input.nonce
        && n.chars().count() > MAX_NONCE_CHARS
    {
        errors.push(format!(
            "Value at 'nonce' failed to satisfy constraint: Member must have length less than or equal to {MAX_NONCE_CHARS}"
        ));
    }
    if !errors.is_empty() {
        return Err(AwsError::validation(errors));
    }
    let product = input.product_code.unwrap_or_default();
    if !host.container_platform {
        return Err(AwsError::client(
            "PlatformNotSupportedException",
            "RegisterUsage is for paid container products on Amazon ECS/EKS; this emulated host is not one",
        ));
    }
    if !host.product_known {
        return Err(AwsError::client(
            "InvalidProductCodeException",
            format!("The product code {product} does not match a product published by this seller"),
        ));
    }
    if !host.entitled {
        return Err(AwsError::client(
            "CustomerNotEntitledException",
            format!("The account running this task is not entitled to product {product}"),
        ));
    }
    if input.public_key_version != Some(PUBLIC_KEY_VERSION) {
        return Err(AwsError::client(
            "InvalidPublicKeyVersionException",
            format!(
                "Public key version {} does not exist (the current one is {PUBLIC_KEY_VERSION})",
                input.public_key_version.unwrap_or(0)
            ),
        ));
    }
    let mut claims = json!({
        "productCode": product,
        "publicKeyVersion": PUBLIC_KEY_VERSION,
        "iat": host.now_secs,
    });
    if let Some(n) = input.nonce {
        claims["nonce"] = Value::String(n);
    }
    Ok(json!({
        "Signature": host.signer.sign_jwt(&claims),
        "PublicKeyRotationTimestamp": host.signer.made_at_secs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    fn host(signer: &Signer) -> Host<'_> {
        Host { container_platform: true, product_known: true, entitled: true, signer, now_secs: 1_790_000_000 }
    }

    fn body(s: &str) -> Map<String, Value> {
        wire::parse_body(s.as_bytes()).unwrap()
    }

    #[test]
    fn signs_a_jwt_the_served_public_key_verifies() {
        let signer = Signer::new(1_780_000_000);
        let out = register_usage(&body(r#"{"ProductCode":"p1","PublicKeyVersion":1,"Nonce":"n-1"}"#), &host(&signer))
            .unwrap();
        assert_eq!(out["PublicKeyRotationTimestamp"], 1_780_000_000);
        let jwt = out["Signature"].as_str().unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let claims: Value = serde_json::from_slice(&B64.decode(input.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!((claims["productCode"].as_str(), claims["nonce"].as_str()), (Some("p1"), Some("n-1")));
        let point = B64.decode(signer.public_key()["public_key"].as_str().unwrap()).unwrap();
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point);
        key.verify(input.as_bytes(), &B64.decode(sig).unwrap()).unwrap();
        assert!(key.verify(b"tampered", &B64.decode(sig).unwrap()).is_err());
    }

    #[test]
    fn each_refusal_is_the_modelled_exception() {
        let signer = Signer::new(0);
        let ok = r#"{"ProductCode":"p1","PublicKeyVersion":1}"#;
        let code = |b: &str, h: Host<'_>| register_usage(&body(b), &h).unwrap_err().code;
        assert_eq!(code(ok, Host { container_platform: false, ..host(&signer) }), "PlatformNotSupportedException");
        assert_eq!(code(ok, Host { product_known: false, ..host(&signer) }), "InvalidProductCodeException");
        assert_eq!(code(ok, Host { entitled: false, ..host(&signer) }), "CustomerNotEntitledException");
        assert_eq!(
            code(r#"{"ProductCode":"p1","PublicKeyVersion":2}"#, host(&signer)),
            "InvalidPublicKeyVersionException"
        );
        assert_eq!(code(r#"{"ProductCode":"p1","PublicKeyVersion":0}"#, host(&signer)), "ValidationException");
        assert_eq!(code(r#"{"PublicKeyVersion":1}"#, host(&signer)), "ValidationException");
        let long = format!(r#"{{"ProductCode":"p1","PublicKeyVersion":1,"Nonce":"{}"}}"#, "n".repeat(256));
        assert_eq!(code(&long, host(&signer)), "ValidationException");
    }
}
