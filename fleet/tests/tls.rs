//! TLS to a real PostgreSQL server with libpq's sslmode semantics: what each mode accepts and refuses.

use meterd_fleet::connect::Database;
use meterd_fleet::test_postgres::TestPostgres;

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a server certificate it signs, for the name `localhost` only (not the IP address).
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

async fn encrypted(db: &Database) -> Result<bool, String> {
    let c = db.connect().await.map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let row = c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    Ok(row.get(0))
}

#[tokio::test]
async fn sslmodes_verify_what_libpq_verifies() {
    let pki = make_pki();
    let pg = TestPostgres::start_tls(&pki.cert_pem, &pki.key_pem).expect("postgres with TLS");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, make_pki().ca_pem).unwrap();
    let port = pg.port();
    let db = |host: &str, query: String| {
        Database::parse(&format!("postgres://meterd@{host}:{port}/meterd?{query}"), None).unwrap()
    };

    // verify-full: chain and name.
    assert_eq!(
        encrypted(&db("localhost", format!("sslmode=verify-full&sslrootcert={}", ca.display()))).await,
        Ok(true)
    );
    let wrong_name = encrypted(&db("127.0.0.1", format!("sslmode=verify-full&sslrootcert={}", ca.display()))).await;
    assert!(wrong_name.is_err(), "verify-full accepted a certificate for another name: {wrong_name:?}");
    let wrong_ca = encrypted(&db("localhost", format!("sslmode=verify-full&sslrootcert={}", other_ca.display()))).await;
    assert!(wrong_ca.is_err(), "verify-full accepted an unknown CA: {wrong_ca:?}");
    // Without sslrootcert the public web roots are used, which do not include a private CA.
    assert!(encrypted(&db("localhost", "sslmode=verify-full".into())).await.is_err());

    // verify-ca: chain only.
    assert_eq!(encrypted(&db("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={}", ca.display()))).await, Ok(true));
    assert!(
        encrypted(&db("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={}", other_ca.display()))).await.is_err()
    );

    // require: encrypted, unchecked — unless a root file is given (then verify-ca, as libpq).
    assert_eq!(encrypted(&db("127.0.0.1", "sslmode=require".into())).await, Ok(true));
    assert!(encrypted(&db("127.0.0.1", format!("sslmode=require&sslrootcert={}", other_ca.display()))).await.is_err());

    // prefer (the default) encrypts when the server can; disable never does.
    assert_eq!(encrypted(&db("127.0.0.1", String::new())).await, Ok(true));
    assert_eq!(encrypted(&db("127.0.0.1", "sslmode=disable".into())).await, Ok(false));
}

#[tokio::test]
async fn require_refuses_a_server_without_tls_and_prefer_falls_back() {
    let pg = TestPostgres::start().expect("postgres");
    let port = pg.port();
    let db =
        |query: &str| Database::parse(&format!("postgres://meterd@127.0.0.1:{port}/meterd?{query}"), None).unwrap();
    assert!(encrypted(&db("sslmode=require")).await.is_err(), "require must not fall back to plain text");
    assert_eq!(encrypted(&db("sslmode=prefer")).await, Ok(false));
}
