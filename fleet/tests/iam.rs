//! IAM database authentication (`[fleet] iam_auth = true`): the token is the SigV4 presign AWS documents for RDS
//! (recomputed here, step by step, from the documented algorithm with a fixed clock), the URL must allow it, and a
//! connection presents a fresh token as its password — to a real PostgreSQL over TLS whose role demands a
//! password, set to the token made for a pinned clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_lc_rs::{digest, hmac};
use meterd_fleet::connect::Database;
use meterd_fleet::iam::{self, IamAuth};
use meterd_fleet::test_postgres::TestPostgres;

/// 2026-11-30T10:00:00Z
const T0: u64 = 1_796_032_800;
const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn credentials(session_token: Option<&str>) -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY, session_token.map(str::to_string), None, "test")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

/// URI-encodes as SigV4 does: every byte but A-Z a-z 0-9 - _ . ~ as %XX.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The token by AWS's documented steps for an RDS IAM token (a presigned `GET /?Action=connect&DBUser=…` for the
/// service `rds-db`, valid 900 s, signing only the `host` header, payload = the empty string): canonical request,
/// string to sign, the derived signing key, the signature. Returns the token's query parameters, sorted.
fn documented_token_params(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    session_token: Option<&str>,
    amz_date: &str,
) -> Vec<(String, String)> {
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/rds-db/aws4_request");
    let mut params: Vec<(String, String)> = vec![
        ("Action".into(), "connect".into()),
        ("DBUser".into(), user.into()),
        ("X-Amz-Algorithm".into(), "AWS4-HMAC-SHA256".into()),
        ("X-Amz-Credential".into(), format!("{ACCESS_KEY}/{scope}")),
        ("X-Amz-Date".into(), amz_date.into()),
        ("X-Amz-Expires".into(), "900".into()),
        ("X-Amz-SignedHeaders".into(), "host".into()),
    ];
    if let Some(t) = session_token {
        params.push(("X-Amz-Security-Token".into(), t.into()));
    }
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    let canonical_request = format!("GET\n/\n{}\nhost:{host}:{port}\n\nhost\n{}", query.join("&"), sha256_hex(b""));
    let string_to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()));
    let mut key = hmac_sha256(format!("AWS4{SECRET_KEY}").as_bytes(), date.as_bytes());
    for part in [region, "rds-db", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    params.push(("X-Amz-Signature".into(), hex(&hmac_sha256(&key, string_to_sign.as_bytes()))));
    params.sort();
    params
}

/// Splits a token into its `host:port` and its decoded query parameters, sorted.
fn parse_token(token: &str) -> (String, Vec<(String, String)>) {
    let (authority, query) = token.split_once("/?").expect("host:port/?query");
    let decode = |s: &str| {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    let mut params: Vec<(String, String)> = query
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (decode(k), decode(v))
        })
        .collect();
    params.sort();
    (authority.to_string(), params)
}

#[test]
fn the_token_is_the_documented_rds_presign_for_fixed_credentials_and_time() {
    let host = "mydb.cluster-c0ffee.us-east-1.rds.amazonaws.com";
    let at = UNIX_EPOCH + Duration::from_secs(T0);
    for (user, session) in [("meterd", None), ("meterd_app+1", Some("FQoGZXIvYXdzEJr//////////session+token="))] {
        let token = iam::auth_token(host, 5432, user, "us-east-1", &credentials(session), at).unwrap();
        let (authority, params) = parse_token(&token);
        assert_eq!(authority, format!("{host}:5432"), "{token}");
        let expected = documented_token_params(host, 5432, user, "us-east-1", session, "20261130T100000Z");
        assert_eq!(params, expected, "{token}");
    }
    // Another second, Region, port or user: another signature.
    let base = iam::auth_token(host, 5432, "meterd", "us-east-1", &credentials(None), at).unwrap();
    for other in [
        iam::auth_token(host, 5432, "meterd", "us-east-1", &credentials(None), at + Duration::from_secs(1)),
        iam::auth_token(host, 5432, "meterd", "eu-west-1", &credentials(None), at),
        iam::auth_token(host, 5433, "meterd", "us-east-1", &credentials(None), at),
        iam::auth_token(host, 5432, "meterd2", "us-east-1", &credentials(None), at),
    ] {
        let signature = |t: &str| parse_token(t).1.into_iter().find(|(k, _)| k == "X-Amz-Signature").unwrap().1;
        assert_ne!(signature(&other.unwrap()), signature(&base));
    }
}

#[test]
fn iam_authentication_needs_tls_a_user_and_no_password_in_the_url() {
    for (url, needle) in [
        ("postgres://u@db:5432/m", "sslmode must be require, verify-ca or verify-full"),
        ("postgres://u@db:5432/m?sslmode=prefer", "sslmode must be require"),
        ("postgres://u@db:5432/m?sslmode=disable", "sslmode must be require"),
        ("postgres://db:5432/m?sslmode=verify-full", "must name the database user"),
        ("postgres://u:pw@db:5432/m?sslmode=verify-full", "must not hold a password"),
    ] {
        let e = Database::parse(url, None).unwrap().check_iam().unwrap_err().to_string();
        assert!(e.starts_with("fleet.database_url: ") && e.contains(needle), "{url}: {e}");
    }
    for mode in ["require", "verify-ca", "verify-full"] {
        Database::parse(&format!("postgres://u@db:5432/m?sslmode={mode}"), None).unwrap().check_iam().unwrap();
    }
}

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "meterd test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    Pki { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

fn is_auth_failure(e: &meterd_fleet::connect::ConnectError) -> bool {
    matches!(e, meterd_fleet::connect::ConnectError::Db(d) if d.code().is_some_and(|c| c.code().starts_with("28")))
}

#[tokio::test]
async fn each_connection_presents_a_fresh_token_as_its_password() {
    let pki = make_pki();
    let pg = TestPostgres::start_tls(&pki.cert_pem, &pki.key_pem).expect("postgres with TLS");
    let admin = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    admin.batch_execute("CREATE ROLE iam_user LOGIN").await.unwrap();
    pg.require_password_over_tls("iam_user").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (host, port) = ("localhost", pg.port());
    let url = format!("postgres://iam_user@{host}:{port}/meterd?sslmode=verify-full&sslrootcert={}", ca.display());

    // The role now needs a password: without IAM (no password) the server asks for one (once it has reloaded),
    // and the driver has none to give.
    let plain = Database::parse(&url, None).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match plain.connect().await {
            Err(e) if format!("{e:?}").contains("password missing") => break,
            other => {
                assert!(std::time::Instant::now() < deadline, "the role never needed a password: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // A clock pinned to T0, moved by the test: each token is the one made for the clock's second.
    let second = Arc::new(AtomicU64::new(T0));
    let clock = {
        let second = second.clone();
        Arc::new(move || UNIX_EPOCH + Duration::from_secs(second.load(Ordering::SeqCst)))
    };
    let creds = credentials(None);
    let token_at = |s: u64| {
        iam::auth_token(host, port, "iam_user", "us-east-1", &creds, UNIX_EPOCH + Duration::from_secs(s)).unwrap()
    };
    let set_password = |token: String| {
        let admin = &admin;
        async move {
            // A literal (ALTER ROLE takes no parameters); a token holds no quote.
            assert!(!token.contains('\''));
            admin.batch_execute(&format!("ALTER ROLE iam_user PASSWORD '{token}'")).await.unwrap();
        }
    };
    let db = Database::parse(&url, None)
        .unwrap()
        .with_iam(IamAuth::new("us-east-1", SharedCredentialsProvider::new(creds.clone())).with_clock(clock))
        .unwrap();

    set_password(token_at(T0)).await;
    let c = db.connect().await.expect("the token made at T0 is the password");
    let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, "iam_user");

    // 14 minutes later: a new connection presents a new token (the one made now), not the first one again.
    second.store(T0 + 14 * 60, Ordering::SeqCst);
    let stale = db.connect().await.map(|_| ()).expect_err("the password is still T0's token");
    assert!(is_auth_failure(&stale), "{stale}");
    set_password(token_at(T0 + 14 * 60)).await;
    db.connect().await.expect("the fresh token is presented");
    // The first session is not affected: a token is checked when a session starts.
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}
