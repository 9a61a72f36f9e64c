//! `[fleet]`: how this agent joins a fleet sharing one ledger in PostgreSQL.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Config, ConfigError, humantime_serde_compat, invalid};

/// The environment variable that supplies `fleet.database_url` (so the URL, which may hold a password, need not
/// be written into the config file).
pub const DATABASE_URL_ENV: &str = "METERD_FLEET_DATABASE_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// Answer after this agent's own fsync; a forwarder ships the spool to PostgreSQL.
    #[default]
    Local,
    /// Answer after the PostgreSQL commit (hosts with ephemeral disks); UNAVAILABLE while it cannot be reached.
    Shared,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `postgres://user@host:port/db?sslmode=verify-full&sslrootcert=…` (libpq's URL form); or
    /// `METERD_FLEET_DATABASE_URL`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// A file whose first line is the database password (a mounted Kubernetes secret).
    #[serde(default)]
    pub database_password_file: Option<PathBuf>,
    /// IAM database authentication (RDS / Aurora): each new connection's password is a fresh authentication
    /// token signed with the AWS credentials of the standard chain. Needs `aws_region` and TLS.
    #[serde(default)]
    pub iam_auth: bool,
    /// The database's AWS Region (`iam_auth` only), e.g. "us-east-1".
    #[serde(default)]
    pub aws_region: Option<String>,
    /// This agent's name in the fleet; the host name when left out. Unique among live agents.
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub ack: Ack,
    /// How often the forwarder ships the spool and heartbeats ("1s").
    #[serde(default = "default_forward_interval", with = "humantime_serde_compat")]
    pub forward_interval: Duration,
    /// Events per forward transaction.
    #[serde(default = "default_forward_batch")]
    pub forward_batch: usize,
    /// A node with no heartbeat for this long is down: the seal stops waiting for it ("1m").
    #[serde(default = "default_down_after", with = "humantime_serde_compat")]
    pub down_after: Duration,
    /// An hour that ended this long ago is sealed even if a live node has not forwarded it ("1h").
    #[serde(default = "default_max_wait", with = "humantime_serde_compat")]
    pub max_wait: Duration,
}

fn default_forward_interval() -> Duration {
    Duration::from_secs(1)
}
/// Bigger pages drain a spool's backlog faster (each forward locks the key stripes and writes the watermark
/// once): after a 10 s batch burst, an hour's records were accepted ~20 s after its end with 10,000 against ~62 s
/// with 1,000 (docs/fleet.md, "Benchmark").
fn default_forward_batch() -> usize {
    10_000
}
fn default_down_after() -> Duration {
    Duration::from_secs(60)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(3600)
}

/// Fills `fleet.database_url` from the environment, only when the file has a `[fleet]` table.
pub(crate) fn apply_env(doc: &mut toml::Table, env: &impl Fn(&str) -> Option<String>) {
    if let (Some(toml::Value::Table(fleet)), Some(url)) = (doc.get_mut("fleet"), env(DATABASE_URL_ENV)) {
        fleet.insert("database_url".into(), toml::Value::String(url));
    }
}

/// The host name, the default node id.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
}

impl FleetConfig {
    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or_default()
    }

    /// The node id: the configured one, else the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().or_else(host_name).unwrap_or_default()
    }

    pub(crate) fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let url = self.database_url.as_deref().unwrap_or_default();
        if url.is_empty() {
            return Err(invalid(
                "fleet.database_url",
                format!("required in fleet mode (or set {DATABASE_URL_ENV}): postgres://user@host:5432/db"),
            ));
        }
        // The password file is read at start (it may be mounted after the config is checked).
        meterd_fleet::connect::Database::parse(url, None)
            .map_err(|e| invalid("fleet.database_url", strip_field(&e.to_string(), "fleet.database_url")))?;
        if let Some(p) = &self.database_password_file
            && p.as_os_str().is_empty()
        {
            return Err(invalid("fleet.database_password_file", "must be a file path"));
        }
        self.validate_iam(url)?;
        let node = self.node_id();
        let len = node.chars().count();
        if !(1..=128).contains(&len) || node.chars().any(char::is_control) {
            return Err(invalid(
                "fleet.node_id",
                format!("must be 1 to 128 printable characters (the host name when left out), got {len}"),
            ));
        }
        if self.forward_interval < Duration::from_millis(10) || self.forward_interval > Duration::from_secs(60) {
            return Err(invalid("fleet.forward_interval", "must be between 10ms and 1m"));
        }
        if !(1..=10_000).contains(&self.forward_batch) {
            return Err(invalid("fleet.forward_batch", "must be between 1 and 10000"));
        }
        // A node must heartbeat several times within down_after, or a live node would be declared down.
        if self.down_after < self.forward_interval * 5 || self.down_after < Duration::from_secs(5) {
            return Err(invalid(
                "fleet.down_after",
                "must be at least 5s and at least 5 × fleet.forward_interval (a live node heartbeats every interval)",
            ));
        }
        let window = config.pipeline.submission_window.saturating_sub(config.pipeline.safety_margin);
        if self.max_wait < Duration::from_secs(60) || self.max_wait + config.pipeline.seal_grace >= window {
            return Err(invalid(
                "fleet.max_wait",
                format!(
                    "must be at least 1m and, with pipeline.seal_grace, shorter than the submission window less \
                     its safety margin ({}): a record must still reach AWS in time",
                    humantime::format_duration(window)
                ),
            ));
        }
        Ok(())
    }
}

impl FleetConfig {
    /// `iam_auth`: a Region, no password file (the token is the password), and a URL that allows tokens (TLS, a
    /// user, no password of its own).
    fn validate_iam(&self, url: &str) -> Result<(), ConfigError> {
        if !self.iam_auth {
            if self.aws_region.is_some() {
                return Err(invalid("fleet.aws_region", "is only used with fleet.iam_auth = true"));
            }
            return Ok(());
        }
        let region = self.aws_region.as_deref().unwrap_or_default();
        if region.is_empty() {
            return Err(invalid(
                "fleet.aws_region",
                "required with fleet.iam_auth = true: the database's Region (e.g. \"us-east-1\"), which the \
                 authentication token is signed for",
            ));
        }
        if region.len() > 32 || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(invalid("fleet.aws_region", format!("{region:?} is not an AWS Region name (e.g. us-east-1)")));
        }
        if self.database_password_file.is_some() {
            return Err(invalid(
                "fleet.database_password_file",
                "must not be set with fleet.iam_auth = true (each connection's password is an IAM token)",
            ));
        }
        meterd_fleet::connect::Database::parse(url, None)
            .and_then(|d| d.check_iam())
            .map_err(|e| invalid("fleet.database_url", strip_field(&e.to_string(), "fleet.database_url")))
    }
}

/// The fleet crate's message already names the field; ours adds it again.
fn strip_field(message: &str, field: &str) -> String {
    message.strip_prefix(field).map(|m| m.trim_start_matches(':').trim().to_string()).unwrap_or_else(|| message.into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:7171\"\n[storage]\ndata_dir = \"/tmp/m\"\n\
        [products.app]\nidentity = \"license\"\ndimensions = [\"calls\"]\n";

    fn parse(extra: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_toml_with_env(&format!("{BASE}{extra}"), Path::new("meterd.toml"), move |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    fn err(extra: &str) -> String {
        parse(extra, &[]).unwrap_err().to_string()
    }

    #[test]
    fn without_a_fleet_table_the_environment_changes_nothing() {
        let c = parse("", &[(DATABASE_URL_ENV, "postgres://u@db/x")]).unwrap();
        assert!(c.fleet.is_none());
    }

    #[test]
    fn the_database_url_comes_from_the_file_or_the_environment() {
        let c = parse("[fleet]\ndatabase_url = \"postgres://u@db/x\"\nnode_id = \"a\"\n", &[]).unwrap();
        let f = c.fleet.unwrap();
        assert_eq!((f.database_url(), f.node_id().as_str(), f.ack), ("postgres://u@db/x", "a", Ack::Local));
        assert_eq!(
            (f.forward_interval, f.down_after, f.max_wait),
            (Duration::from_secs(1), Duration::from_secs(60), Duration::from_secs(3600))
        );
        let c = parse("[fleet]\n", &[(DATABASE_URL_ENV, "postgres://u@env/x")]).unwrap();
        assert_eq!(c.fleet.unwrap().database_url(), "postgres://u@env/x");
    }

    #[test]
    fn the_node_id_defaults_to_the_host_name() {
        let c = parse("[fleet]\ndatabase_url = \"postgres://u@db/x\"\n", &[]).unwrap();
        assert_eq!(c.fleet.unwrap().node_id(), host_name().unwrap());
    }

    #[test]
    fn the_kubernetes_fleet_example_is_a_valid_config() {
        let yaml = include_str!("../../../examples/kubernetes/fleet.yaml");
        let toml: String = yaml
            .split("  meterd.toml: |\n")
            .nth(1)
            .expect("the example embeds meterd.toml")
            .lines()
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| format!("{}\n", l.trim_start_matches("    ")))
            .collect();
        // The CA bundle file exists only in the pod: check the rest with a URL without it.
        let c = Config::from_toml_with_env(&toml, Path::new("fleet.yaml"), |k| {
            (k == DATABASE_URL_ENV).then(|| "postgres://meterd@db.example:5432/meterd?sslmode=verify-full".into())
        })
        .unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(
            (f.ack, f.database_password_file.unwrap()),
            (Ack::Local, "/var/run/secrets/meterd-db/password".into())
        );
    }

    #[test]
    fn bad_fleet_settings_name_their_key() {
        let url = "[fleet]\ndatabase_url = \"postgres://u@db/x\"\n";
        assert!(err("[fleet]\n").starts_with("fleet.database_url: required"), "{}", err("[fleet]\n"));
        let e = err("[fleet]\ndatabase_url = \"mysql://x\"\n");
        assert!(e.starts_with("fleet.database_url: must be a postgres:// URL"), "{e}");
        let e = err("[fleet]\ndatabase_url = \"postgres://u@db/x?sslmode=maybe\"\n");
        assert!(e.starts_with("fleet.database_url: sslmode=\"maybe\""), "{e}");
        let long = "n".repeat(129);
        assert!(err(&format!("{url}node_id = \"{long}\"\n")).starts_with("fleet.node_id: must be 1 to 128"));
        assert!(err(&format!("{url}node_id = \"\"\n")).starts_with("fleet.node_id:"));
        assert_eq!(parse(&format!("{url}ack = \"shared\"\n"), &[]).unwrap().fleet.unwrap().ack, Ack::Shared);
        assert!(err(&format!("{url}ack = \"maybe\"\n")).contains("unknown variant"));
        assert!(err(&format!("{url}forward_interval = \"2m\"\n")).starts_with("fleet.forward_interval:"));
        assert!(err(&format!("{url}forward_batch = 0\n")).starts_with("fleet.forward_batch:"));
        let e = err(&format!("{url}forward_interval = \"5s\"\ndown_after = \"10s\"\n"));
        assert!(e.starts_with("fleet.down_after:"), "{e}");
        assert!(err(&format!("{url}max_wait = \"23h30m\"\n")).starts_with("fleet.max_wait:"));
        assert!(err(&format!("{url}database_password_file = \"\"\n")).starts_with("fleet.database_password_file:"));
        assert!(err(&format!("{url}nodeid = \"a\"\n")).contains("unknown field"));
    }

    #[test]
    fn iam_auth_needs_a_region_tls_and_no_password_and_errors_name_the_field() {
        let tls = "[fleet]\ndatabase_url = \"postgres://meterd@db:5432/x?sslmode=verify-full\"\n";
        let ok = parse(&format!("{tls}iam_auth = true\naws_region = \"eu-west-1\"\n"), &[]).unwrap().fleet.unwrap();
        assert_eq!((ok.iam_auth, ok.aws_region.as_deref()), (true, Some("eu-west-1")));
        for (extra, field, needle) in [
            (format!("{tls}iam_auth = true\n"), "fleet.aws_region:", "required with fleet.iam_auth"),
            (format!("{tls}iam_auth = true\naws_region = \"\"\n"), "fleet.aws_region:", "required"),
            (format!("{tls}iam_auth = true\naws_region = \"US East\"\n"), "fleet.aws_region:", "not an AWS Region"),
            (format!("{tls}aws_region = \"us-east-1\"\n"), "fleet.aws_region:", "only used with fleet.iam_auth"),
            (
                format!("{tls}iam_auth = true\naws_region = \"us-east-1\"\ndatabase_password_file = \"/run/pw\"\n"),
                "fleet.database_password_file:",
                "must not be set with fleet.iam_auth",
            ),
            (
                "[fleet]\ndatabase_url = \"postgres://meterd@db:5432/x\"\niam_auth = true\naws_region = \"us-east-1\"\n"
                    .to_string(),
                "fleet.database_url:",
                "sslmode must be require, verify-ca or verify-full with fleet.iam_auth",
            ),
            (
                "[fleet]\ndatabase_url = \"postgres://meterd:pw@db:5432/x?sslmode=require\"\niam_auth = true\n\
                 aws_region = \"us-east-1\"\n"
                    .to_string(),
                "fleet.database_url:",
                "must not hold a password",
            ),
        ] {
            let e = err(&extra);
            assert!(e.starts_with(field) && e.contains(needle), "{extra}: {e}");
        }
    }
}
