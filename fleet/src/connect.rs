//! Connecting to the fleet database: a libpq-style URL, a password file, and TLS through rustls with libpq's
//! `sslmode` semantics (RDS and Aurora require TLS; their CA bundle is given as `sslrootcert`).
//!
//! | sslmode       | encrypted            | server certificate checked                                     |
//! |---------------|----------------------|----------------------------------------------------------------|
//! | `disable`     | no                   | —                                                              |
//! | `prefer`      | if the server can    | no (as libpq: chain only when `sslrootcert` is given)          |
//! | `require`     | yes                  | no, unless `sslrootcert` is given: then as `verify-ca` (libpq) |
//! | `verify-ca`   | yes                  | chain to a trusted root; the host name is not compared         |
//! | `verify-full` | yes                  | chain and host name                                            |
//!
//! Trusted roots: the `sslrootcert` file (PEM) when given, otherwise the public web roots. libpq's default is
//! `prefer`; so is ours, but an operator on a network they do not control should say `verify-full`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::Client;

/// How long the server lets one of our sessions sit idle inside a transaction before ending it (see `parse`).
/// Longer than any pause between two statements of a running agent, shorter than waiting for a takeover should be.
pub const IDLE_IN_TRANSACTION: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    Iam(#[from] crate::iam::IamError),
    #[error("fleet database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

fn config_error(field: &'static str, reason: impl Into<String>) -> ConnectError {
    ConnectError::Config { field, reason: reason.into() }
}

/// How to reach the fleet database, parsed once from the configuration.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub root_cert: Option<PathBuf>,
    roots: Option<Vec<CertificateDer<'static>>>,
    /// IAM database authentication: each new connection's password is a fresh token ([`crate::iam`]).
    iam: Option<crate::iam::IamAuth>,
}

impl std::fmt::Debug for Database {
    // The password stays out of logs and error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .field("iam", &self.iam)
            .finish()
    }
}

impl Database {
    /// Where it connects, for messages: `user@host:port/dbname`, never the password.
    pub fn location(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{host}:{port}/{}",
            self.config.get_user().unwrap_or_default(),
            self.config.get_dbname().unwrap_or_default()
        )
    }

    /// `url`: `postgres://user[:password]@host[:port]/dbname[?sslmode=…&sslrootcert=…&…]`. `password_file`: a file
    /// holding the password (its first line; wins over one in the URL), as Kubernetes secrets are mounted.
    pub fn parse(url: &str, password_file: Option<&Path>) -> Result<Self, ConnectError> {
        const FIELD: &str = "fleet.database_url";
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(config_error(FIELD, "must be a postgres:// URL (libpq's URL form)"));
        }
        // sslmode and sslrootcert are ours to interpret (tokio-postgres knows neither verify mode).
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => {
                    ssl_mode = SslMode::parse(v).ok_or_else(|| {
                        config_error(
                            FIELD,
                            format!("sslmode={v:?}: use disable, prefer, require, verify-ca or verify-full"),
                        )
                    })?
                }
                Some(("sslrootcert", v)) => root_cert = Some(PathBuf::from(v)),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| config_error(FIELD, format!("{e}")))?;
        if config.get_hosts().is_empty() {
            return Err(config_error(FIELD, "names no host"));
        }
        if let Some(path) = password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| config_error("fleet.database_password_file", format!("{}: {e}", path.display())))?;
            let password = text.lines().next().unwrap_or_default();
            if password.is_empty() {
                return Err(config_error("fleet.database_password_file", format!("{} is empty", path.display())));
            }
            config.password(password);
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        config.application_name("meterd");
        let roots = match &root_cert {
            Some(path) => {
                let certs: Vec<_> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| config_error(FIELD, format!("sslrootcert {}: {e}", path.display())))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| config_error(FIELD, format!("sslrootcert {}: {e}", path.display())))?;
                if certs.is_empty() {
                    return Err(config_error(FIELD, format!("sslrootcert {}: no PEM certificate", path.display())));
                }
                Some(certs)
            }
            None => None,
        };
        Ok(Database { config, ssl_mode, root_cert, roots, iam: None })
    }

    /// Whether this URL can be used with IAM database authentication: a user to authenticate, no password of its
    /// own (the token is the password), and TLS (RDS accepts tokens only over an encrypted connection: `prefer`
    /// could fall back to plain text).
    pub fn check_iam(&self) -> Result<(), ConnectError> {
        const WHY: &str = "with fleet.iam_auth = true";
        if !matches!(self.ssl_mode, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(config_error(
                "fleet.database_url",
                format!(
                    "sslmode must be require, verify-ca or verify-full {WHY} (RDS accepts IAM authentication tokens \
                     only over TLS; verify-full with the RDS CA bundle as sslrootcert is the safe choice)"
                ),
            ));
        }
        if self.config.get_user().is_none_or(str::is_empty) {
            return Err(config_error("fleet.database_url", format!("must name the database user {WHY}")));
        }
        if self.config.get_password().is_some() {
            return Err(config_error(
                "fleet.database_url",
                format!("must not hold a password {WHY} (each connection's password is an IAM token)"),
            ));
        }
        if !matches!(self.config.get_hosts().first(), Some(tokio_postgres::config::Host::Tcp(_))) {
            return Err(config_error("fleet.database_url", format!("must name a TCP host {WHY}")));
        }
        Ok(())
    }

    /// Authenticates every new connection with a fresh IAM token (see [`crate::iam`]), after [`Self::check_iam`].
    pub fn with_iam(self, iam: crate::iam::IamAuth) -> Result<Self, ConnectError> {
        self.check_iam()?;
        Ok(Database { iam: Some(iam), ..self })
    }

    /// The session's settings: with IAM authentication, a fresh token as the password.
    async fn session_config(&self) -> Result<std::borrow::Cow<'_, tokio_postgres::Config>, ConnectError> {
        let Some(iam) = &self.iam else { return Ok(std::borrow::Cow::Borrowed(&self.config)) };
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.as_str(),
            _ => return Err(config_error("fleet.database_url", "must name a TCP host with fleet.iam_auth = true")),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or_default();
        let mut config = self.config.clone();
        config.password(iam.token(host, port, user).await?);
        Ok(std::borrow::Cow::Owned(config))
    }

    fn tls(&self) -> Result<rustls::ClientConfig, ConnectError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut store = rustls::RootCertStore::empty();
        match &self.roots {
            Some(certs) => {
                for c in certs {
                    store
                        .add(c.clone())
                        .map_err(|e| config_error("fleet.database_url", format!("sslrootcert: {e}")))?;
                }
            }
            None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .build()
            .map_err(|e| config_error("fleet.database_url", format!("TLS roots: {e}")))?;
        // libpq: `require` with a root certificate file behaves as `verify-ca`.
        let check = match (self.ssl_mode, self.roots.is_some()) {
            (SslMode::VerifyFull, _) => Check::Full,
            (SslMode::VerifyCa, _) | (SslMode::Require | SslMode::Prefer, true) => Check::ChainOnly,
            _ => Check::Nothing,
        };
        let verifier = Arc::new(Verifier { inner: webpki, check, provider: provider.clone() });
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("fleet.database_url", format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    /// Opens a session and drives it on a task.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let config = self.session_config().await?;
        let client = if self.ssl_mode == SslMode::Disable {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(drive(connection));
            client
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls()?);
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(drive(connection));
            client
        };
        // A paused agent (GC, a stopped VM, SIGSTOP) in the middle of a transaction keeps its row locks: the lease
        // row it fenced on (FOR SHARE, so nobody can take the lease over), seal marks, key stripes. No agent
        // transaction waits on anything but the database between its statements, so one idle that long belongs
        // to a process that is not running; the server ends that session and its locks go with it. A statement
        // rather than the `options` start-up parameter, which PgBouncer refuses by default.
        client
            .batch_execute(&format!("SET idle_in_transaction_session_timeout = {}", IDLE_IN_TRANSACTION.as_millis()))
            .await?;
        Ok(client)
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "fleet database connection ended");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Full,
    ChainOnly,
    Nothing,
}

/// rustls verifies chain and name together; `verify-ca` and `require` need less, never more.
#[derive(Debug)]
struct Verifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check: Check,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check {
            Check::Nothing => Ok(ServerCertVerified::assertion()),
            Check::Full => self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            Check::ChainOnly => {
                match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. },
                    )) => Ok(ServerCertVerified::assertion()),
                    other => other,
                }
            }
        }
    }

    // The handshake signature is always checked: it proves the server holds the certificate's key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_settings_are_taken_out_of_the_url_and_bad_ones_name_the_field() {
        let d = Database::parse("postgres://u@db.example:6432/m?sslmode=verify-full&connect_timeout=5", None).unwrap();
        assert_eq!(d.ssl_mode, SslMode::VerifyFull);
        assert_eq!(d.config.get_ports(), [6432]);
        assert_eq!(d.config.get_connect_timeout(), Some(&std::time::Duration::from_secs(5)));
        assert_eq!(Database::parse("postgres://u@h/m", None).unwrap().ssl_mode, SslMode::Prefer);
        for (url, needle) in [
            ("mysql://u@h/m", "postgres:// URL"),
            ("postgres://u@h/m?sslmode=allow-all", "sslmode=\"allow-all\""),
            ("postgres://u@h/m?sslrootcert=/nonexistent/ca.pem", "sslrootcert /nonexistent/ca.pem"),
        ] {
            let e = Database::parse(url, None).unwrap_err().to_string();
            assert!(e.starts_with("fleet.database_url: ") && e.contains(needle), "{url}: {e}");
        }
    }

    #[test]
    fn the_password_file_wins_and_stays_out_of_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let d = Database::parse("postgres://u:old@h/m", Some(&file)).unwrap();
        assert_eq!(d.config.get_password(), Some(&b"s3cret"[..]));
        assert!(!format!("{d:?}").contains("s3cret") && !format!("{d:?}").contains("old"));
        std::fs::write(&file, "").unwrap();
        let e = Database::parse("postgres://u@h/m", Some(&file)).unwrap_err().to_string();
        assert!(e.starts_with("fleet.database_password_file: ") && e.contains("empty"), "{e}");
    }
}
