//! The agent's TOML configuration: parsing, environment overrides and validation at start.
//!
//! Every error names the key that is wrong (`products.demo.dimensions[1]: ...`) and, where it helps, the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[fleet]`: a child of the configuration (it builds on its validation helpers), so `config` imports nothing above
/// it.
pub mod fleet;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub storage: StorageConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Optional admin listener: Prometheus `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub admin: Option<AdminHttpConfig>,
    /// Optional HTTP endpoints for the fulfillment form and lifecycle events.
    #[serde(default)]
    pub marketplace: Option<MarketplaceHttpConfig>,
    /// Usage-drop (silence) detection: when an ended hour falls far below its own baseline.
    #[serde(default)]
    pub silence: SilenceConfig,
    /// AWS seller accounts (Region, credentials, endpoint) by name; products refer to one.
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountConfig>,
    /// Products by name (the name callers use in `UsageEvent.product`).
    #[serde(default)]
    pub products: BTreeMap<String, ProductConfig>,
    /// Fleet mode: many agents share one ledger in PostgreSQL (`docs/fleet.md`). Absent: sled alone, as ever.
    #[serde(default)]
    pub fleet: Option<crate::config::fleet::FleetConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC on TCP. A non-loopback address requires `tls` and a bearer token.
    pub listen: Option<String>,
    /// gRPC on a Unix socket (created 0660).
    pub unix_socket: Option<PathBuf>,
    /// TLS for the TCP listener (rustls).
    pub tls: Option<TlsConfig>,
    /// A file holding the bearer token TCP callers must send (`authorization: Bearer …`);
    /// `METERD_TOKEN_FILE` overrides the path. The token is never logged or printed.
    pub token_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { listen: Some("127.0.0.1:7171".into()), unix_socket: None, tls: None, token_file: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Terminal records and event keys older than this are compacted away ("45d": past the AWS month).
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub retention: Duration,
    /// How long an idempotency key is remembered ("48h"): a retry later than this is not recognised, and an
    /// event whose timestamp is older is refused. At least `pipeline.max_lateness`, at most `retention`.
    #[serde(default = "default_dedupe_window", with = "humantime_serde_compat")]
    pub dedupe_window: Duration,
    /// Memory sled may use for its page cache, in MiB (bounds the agent's memory; sled's own default is 1024).
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// Repack the store (copy its live keys into a fresh sled generation) when it takes more than this many
    /// times what a fresh copy of its keys and values takes (learned at the last repack; before one, their
    /// bytes); checked after each hourly retention pass. 0 turns it off.
    #[serde(default = "default_repack_ratio")]
    pub repack_ratio: f64,
    /// Free space kept on the data dir's filesystem ("256MiB", "5%"): below it ingest is refused with
    /// RESOURCE_EXHAUSTED (sealing, submission and reads go on) and the agent does not start.
    #[serde(default, deserialize_with = "min_free_from_str")]
    pub min_free: crate::store::space::MinFree,
    /// Buckets sealed per atomic write: ingest waits at most about one chunk behind a seal, and a seal holds at
    /// most one chunk in memory, however large the hour.
    #[serde(default = "default_seal_chunk")]
    pub seal_chunk: usize,
    /// A store writer pass, redo log fsync or checkpoint that has not finished after this long ("10m") means a
    /// hung device or a deadlock: the agent logs it and exits with code 70 for its supervisor to restart it
    /// (everything acknowledged is in the redo log). A repack is exempt. "0s" turns it off.
    #[serde(default = "default_stuck_after", with = "humantime_serde_compat")]
    pub stuck_after: Duration,
}

fn default_stuck_after() -> Duration {
    crate::store::watch::DEFAULT_STUCK_AFTER
}

fn default_seal_chunk() -> usize {
    crate::store::SEAL_CHUNK_BUCKETS
}

fn min_free_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<crate::store::space::MinFree, D::Error> {
    let s = String::deserialize(d)?;
    crate::store::space::MinFree::parse(&s).map_err(serde::de::Error::custom)
}

/// sled 0.34 keeps its in-memory pages well above the sizes it counts against this (about 1.5-3.5× here), so the
/// default is the cache that keeps a 900,000-record hour — recorded, sealed and submitted — within 512 MiB; ingest
/// measured no slower than with 256 (docs/ARCHITECTURE.md, cardinality and ingest benchmarks).
fn default_cache_mb() -> u64 {
    64
}

fn default_repack_ratio() -> f64 {
    3.0
}

fn default_dedupe_window() -> Duration {
    Duration::from_secs(48 * 3600)
}

fn default_retention() -> Duration {
    Duration::from_secs(45 * 24 * 3600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// How far ahead of the agent's clock an event timestamp may be ("5m").
    #[serde(with = "humantime_serde_compat")]
    pub max_future_skew: Duration,
    /// Most events one `RecordUsageBatch` call may carry.
    pub max_batch_events: usize,
    /// Product used when an event names none. Optional when exactly one product is configured.
    pub default_product: Option<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { max_future_skew: Duration::from_secs(300), max_batch_events: 10_000, default_product: None }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as "info" or "meterd=debug".
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// What happens to usage that arrives for an hour that is already sealed (`carry` or `reject`).
pub use crate::domain::catalog::LatePolicy as LateUsage;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// How long after an hour ends it is sealed, to let stragglers in ("5m").
    #[serde(with = "humantime_serde_compat")]
    pub seal_grace: Duration,
    /// How long AWS accepts a record after its hour starts ("24h"; older listings: "6h").
    #[serde(with = "humantime_serde_compat")]
    pub submission_window: Duration,
    /// Taken off every deadline so a record is never sent at the last second ("30m").
    #[serde(with = "humantime_serde_compat")]
    pub safety_margin: Duration,
    pub late_usage: LateUsage,
    /// Usage whose timestamp is older than this is refused (FAILED_PRECONDITION), whatever `late_usage` says
    /// ("24h"). AWS would refuse usage that old itself, and carrying it into the current hour bills the buyer
    /// for the wrong period. At most `storage.retention` (the dedupe horizon).
    #[serde(with = "humantime_serde_compat")]
    pub max_lateness: Duration,
    /// Send a record with quantity 0 when a sealed hour's usage rounds down to nothing.
    pub zero_records: bool,
    /// How often the sealer and submitters wake up ("1s").
    #[serde(with = "humantime_serde_compat")]
    pub tick: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            seal_grace: Duration::from_secs(300),
            submission_window: Duration::from_secs(24 * 3600),
            safety_margin: Duration::from_secs(1800),
            late_usage: LateUsage::Carry,
            max_lateness: Duration::from_secs(24 * 3600),
            zero_records: false,
            tick: Duration::from_secs(1),
        }
    }
}

/// Usage-drop detection (`domain/silence.rs`): an ended hour below `drop_below_percent` of its baseline (the
/// same hour on the previous days and weekdays) is a drop, for baselines of at least `min_baseline`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SilenceConfig {
    /// Default 20: an hour under 20% of its baseline is a drop. 1-99.
    pub drop_below_percent: u32,
    /// Usage per hour a baseline needs before it can be flagged (a decimal string, default "10"): small series
    /// would flap.
    pub min_baseline: String,
    /// Per product × dimension, how many of the biggest customers are watched one by one (default 10, at most
    /// 100; 0 watches only the totals).
    pub top_customers: usize,
}

impl Default for SilenceConfig {
    fn default() -> Self {
        Self { drop_below_percent: 20, min_baseline: "10".into(), top_customers: 10 }
    }
}

impl SilenceConfig {
    /// The detector's settings; errors name the key.
    pub fn settings(&self) -> Result<crate::domain::silence::Settings, ConfigError> {
        if !(1..=99).contains(&self.drop_below_percent) {
            return Err(invalid("silence.drop_below_percent", "must be between 1 and 99"));
        }
        if self.top_customers > 100 {
            return Err(invalid("silence.top_customers", "must be at most 100"));
        }
        let min_baseline = crate::domain::quantity::Micros::parse_event(&self.min_baseline)
            .map_err(|e| invalid("silence.min_baseline", e.to_string()))?;
        Ok(crate::domain::silence::Settings {
            drop_below_percent: self.drop_below_percent,
            min_baseline,
            top_customers: self.top_customers,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminHttpConfig {
    /// Address for `/metrics`, `/healthz`, `/readyz` and the dashboard (`/`), e.g. "127.0.0.1:7172". Loopback,
    /// or any address when `server.token_file` is set: then `/metrics` and `/api/…` need that bearer token.
    pub listen: String,
}

impl AdminHttpConfig {
    pub fn is_loopback(&self) -> bool {
        self.listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketplaceHttpConfig {
    /// Loopback address; put the seller's HTTPS reverse proxy in front (AWS requires an HTTPS URL).
    pub listen: String,
    /// Where the buyer's browser is sent after registration, with `tenant_id=` appended.
    pub redirect_url: String,
    /// The product the fulfillment form registers for (default: the default product).
    #[serde(default)]
    pub product: Option<String>,
    /// EventBridge API destination: a file holding the secret its connection sends (API-key header, or the
    /// password of basic auth). Together with `sns_topics`, what turns `/internal/marketplace/events` on.
    #[serde(default)]
    pub events_secret_file: Option<PathBuf>,
    /// The header the API destination's API-key connection sends the secret in.
    #[serde(default = "default_events_header")]
    pub events_secret_header: String,
    /// When set, EventBridge events must name one of these accounts (`account`: the seller account).
    #[serde(default)]
    pub events_accounts: Vec<String>,
    /// SNS topics whose signed messages are accepted (and whose subscriptions meterd confirms).
    #[serde(default)]
    pub sns_topics: Vec<String>,
    /// Which hosts may serve SNS signing certificates (a regex over `host[:port]` of `SigningCertURL`; default:
    /// the SNS endpoints of every AWS partition). Only for tests or private endpoints.
    #[serde(default)]
    pub sns_cert_host_pattern: Option<String>,
    /// Extra PEM trust roots for fetching SNS certificates, besides the public web roots. Only for tests.
    #[serde(default)]
    pub sns_extra_roots_file: Option<PathBuf>,
    /// Per-source-IP request limit on the fulfillment form (each valid form costs a ResolveCustomer call).
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Per-source-IP request limit on the events endpoint (AWS delivers from few addresses, in bursts).
    #[serde(default = "default_events_rate_limit")]
    pub events_rate_limit: RateLimitConfig,
    /// Proxies whose `X-Forwarded-For` is believed (their address is the TCP peer); empty: the peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

fn default_events_rate_limit() -> RateLimitConfig {
    RateLimitConfig { per_minute: 600, burst: 100 }
}

fn default_events_header() -> String {
    "x-meterd-events-key".into()
}

/// A token bucket per client IP address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per minute from one address.
    pub per_minute: u32,
    /// Requests one address may send at once before the sustained rate applies.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { per_minute: 30, burst: 10 }
    }
}

/// SNS serves signing certificates from `sns.<region>.amazonaws.com` (China: `.amazonaws.com.cn`; GovCloud
/// Regions use the same form).
pub const SNS_CERT_HOST_PATTERN: &str = r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$";

impl MarketplaceHttpConfig {
    /// Why `/internal/marketplace/events` is off, or None when an authentication method is configured.
    pub fn events_off_reason(&self) -> Option<&'static str> {
        (self.events_secret_file.is_none() && self.sns_topics.is_empty()).then_some(
            "lifecycle events over HTTP are off: set marketplace.events_secret_file (EventBridge API destination) \
             and/or marketplace.sns_topics (SNS HTTPS subscription) to authenticate them",
        )
    }
}

/// Where and as whom a product's records are submitted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The AWS Region. Optional: when unset, the standard chain decides (`AWS_REGION`, the profile, then the
    /// instance's own Region from IMDS on EC2) — what an agent on the buyer's host (`identity = "deployment"`)
    /// wants, since MeterUsage must be called in the Region the instance or task runs in.
    #[serde(default)]
    pub region: Option<String>,
    /// Override the AWS endpoint (the emulator, a VPC endpoint).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// A named profile from the shared AWS config files; default: the standard credential chain.
    #[serde(default)]
    pub profile: Option<String>,
    /// A role to assume with the base credentials.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// Fixed dummy credentials, allowed only with a loopback endpoint_url (the emulator).
    #[serde(default)]
    pub test_credentials: bool,
    /// Appended to the AWS user agent so the seller's calls are attributable.
    #[serde(default = "default_app_id")]
    pub app_id: String,
    /// Ceiling of BatchMeterUsage calls per second (AWS allows 10 per account and Region). The submitter paces
    /// adaptively below it: it slows down on throttling (another tool sharing the quota) and climbs back.
    #[serde(default = "default_rate")]
    pub calls_per_second: f64,
    /// Per-call timeout ("10s").
    #[serde(default = "default_call_timeout", with = "humantime_serde_compat")]
    pub call_timeout: Duration,
}

fn default_app_id() -> String {
    "meterd".into()
}
fn default_rate() -> f64 {
    10.0
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How a product's customers are identified on the wire.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    /// Concurrent Agreements: `CustomerAWSAccountId` + `LicenseArn`, no `ProductCode` in the call.
    License,
    /// Legacy listings: `ProductCode` + `CustomerIdentifier`.
    Legacy,
    /// meterd runs in the buyer's own account (AMI or container product): `MeterUsage` with `ProductCode`, no
    /// customer on the wire (AWS knows the buyer from the credentials); events name no customer.
    Deployment,
}

impl IdentityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityMode::License => "license",
            IdentityMode::Legacy => "legacy",
            IdentityMode::Deployment => "deployment",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductConfig {
    pub identity: IdentityMode,
    /// The AWS Marketplace product code. Required for `legacy`; for `license` it is only used to check
    /// ResolveCustomer answers and is never sent.
    #[serde(default)]
    pub product_code: Option<String>,
    /// Dimension API keys exactly as listed in AWS Marketplace (case-sensitive).
    pub dimensions: Vec<String>,
    /// The `[accounts.NAME]` its records are submitted with; optional when exactly one account exists.
    #[serde(default)]
    pub account: Option<String>,
    /// How long AWS accepts a record after its hour starts, for this product (default: `pipeline.submission_window`;
    /// for `identity = "deployment"`, 6h — MeterUsage's window — and never more).
    #[serde(default, with = "humantime_serde_compat::option")]
    pub submission_window: Option<Duration>,
    /// A paid container product (Amazon ECS/EKS): call `RegisterUsage` at start. Only with `identity = "deployment"`.
    #[serde(default)]
    pub register_usage: bool,
    /// The `PublicKeyVersion` sent with `RegisterUsage` (the AWS public key the product verifies the answer with).
    #[serde(default = "default_public_key_version")]
    pub public_key_version: i32,
}

fn default_public_key_version() -> i32 {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// Environment variables that override single keys; documented in the README.
pub const ENV_OVERRIDES: &[(&str, &[&str])] = &[
    ("METERD_LISTEN", &["server", "listen"]),
    ("METERD_UNIX_SOCKET", &["server", "unix_socket"]),
    ("METERD_TOKEN_FILE", &["server", "token_file"]),
    ("METERD_ADMIN_LISTEN", &["admin", "listen"]),
    ("METERD_DATA_DIR", &["storage", "data_dir"]),
    ("METERD_MAX_FUTURE_SKEW", &["ingest", "max_future_skew"]),
    ("METERD_DEFAULT_PRODUCT", &["ingest", "default_product"]),
    ("METERD_LOG_FORMAT", &["log", "format"]),
    ("METERD_LOG_LEVEL", &["log", "level"]),
];

impl Config {
    /// Reads, applies `METERD_*` overrides from the process environment, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml_with_env(&text, path, |k| std::env::var(k).ok())
    }

    /// Parses TOML text; `env` supplies override values (a closure so tests need not touch the process env).
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse { path: path.to_path_buf(), message };
        let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        for (var, key_path) in ENV_OVERRIDES {
            if let Some(value) = env(var) {
                set_path(&mut doc, key_path, toml::Value::String(value));
            }
        }
        // Only fills in a `[fleet]` table the file has: the environment alone never turns fleet mode on.
        crate::config::fleet::apply_env(&mut doc, &env);
        let config: Config = Config::deserialize(doc).map_err(|e| parse_err(e.to_string().trim().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.is_none() && self.server.unix_socket.is_none() {
            return Err(invalid("server", "set at least one of server.listen or server.unix_socket"));
        }
        if let Some(listen) = &self.server.listen {
            let addr: SocketAddr = listen.parse().map_err(|_| {
                invalid("server.listen", format!("{listen:?} is not an IP:port such as 127.0.0.1:7171"))
            })?;
            if !addr.ip().is_loopback() && (self.server.tls.is_none() || self.server.token_file.is_none()) {
                return Err(invalid(
                    "server.listen",
                    format!("{addr} is not a loopback address: set [server.tls] and server.token_file to expose it"),
                ));
            }
        }
        if let Some(sock) = &self.server.unix_socket
            && sock.as_os_str().is_empty()
        {
            return Err(invalid("server.unix_socket", "must be a file path"));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(invalid("storage.data_dir", "must be a directory path"));
        }
        if !(16..=65536).contains(&self.storage.cache_mb) {
            return Err(invalid("storage.cache_mb", "must be between 16 and 65536"));
        }
        if !(10..=100_000).contains(&self.storage.seal_chunk) {
            return Err(invalid("storage.seal_chunk", "must be between 10 and 100000 buckets"));
        }
        if !self.storage.stuck_after.is_zero() && self.storage.stuck_after < Duration::from_secs(1) {
            return Err(invalid("storage.stuck_after", "must be 0s (off) or at least 1s"));
        }
        let ratio = self.storage.repack_ratio;
        if !(ratio == 0.0 || (2.5..=100.0).contains(&ratio)) {
            return Err(invalid(
                "storage.repack_ratio",
                "must be 0 (off) or between 2.5 and 100: a fresh copy already takes about twice its live bytes",
            ));
        }
        if self.storage.retention < Duration::from_secs(2 * 24 * 3600) {
            return Err(invalid(
                "storage.retention",
                "must be at least 2d: it must outlive the submission window and any client retry",
            ));
        }
        if self.pipeline.max_lateness < Duration::from_secs(3600) {
            return Err(invalid(
                "pipeline.max_lateness",
                "must be at least 1h: usage of the hour in progress must always be accepted",
            ));
        }
        if self.pipeline.max_lateness > self.storage.retention {
            return Err(invalid(
                "pipeline.max_lateness",
                format!(
                    "must not be longer than storage.retention ({}): older events could not be deduplicated",
                    humantime::format_duration(self.storage.retention)
                ),
            ));
        }
        if self.storage.dedupe_window < self.pipeline.max_lateness {
            return Err(invalid(
                "storage.dedupe_window",
                format!(
                    "must be at least pipeline.max_lateness ({}): a late event still accepted must still be deduplicated",
                    humantime::format_duration(self.pipeline.max_lateness)
                ),
            ));
        }
        if self.storage.dedupe_window > self.storage.retention {
            return Err(invalid(
                "storage.dedupe_window",
                format!(
                    "must not be longer than storage.retention ({})",
                    humantime::format_duration(self.storage.retention)
                ),
            ));
        }
        if self.ingest.max_batch_events == 0 || self.ingest.max_batch_events > 100_000 {
            return Err(invalid("ingest.max_batch_events", "must be between 1 and 100000"));
        }
        if self.ingest.max_future_skew > Duration::from_secs(24 * 3600) {
            return Err(invalid("ingest.max_future_skew", "must be at most 24h"));
        }
        if self.products.is_empty() {
            return Err(invalid("products", "configure at least one product, e.g. [products.myapp]"));
        }
        for (name, p) in &self.products {
            let key = format!("products.{name}");
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(&key, "product names are 1-64 characters of letters, digits, '_' and '-'"));
            }
            match (&p.identity, &p.product_code) {
                (IdentityMode::Legacy, None) => {
                    return Err(invalid(format!("{key}.product_code"), "is required for identity = \"legacy\""));
                }
                (IdentityMode::Deployment, None) => {
                    return Err(invalid(format!("{key}.product_code"), "is required for identity = \"deployment\""));
                }
                (_, Some(code)) if !valid_product_code(code) => {
                    return Err(invalid(
                        format!("{key}.product_code"),
                        "must be 1-255 characters of letters, digits and -/=:_.@ (the AWS product code, not the prod- entity id)",
                    ));
                }
                _ => {}
            }
            if p.dimensions.is_empty() {
                return Err(invalid(format!("{key}.dimensions"), "list at least one dimension API key"));
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, d) in p.dimensions.iter().enumerate() {
                let dkey = format!("{key}.dimensions[{i}]");
                if d.is_empty() || d.chars().count() > 255 {
                    return Err(invalid(dkey, "dimension keys are 1-255 characters"));
                }
                if d.chars().any(char::is_control) {
                    return Err(invalid(dkey, "dimension keys may not contain control characters"));
                }
                if !seen.insert(d) {
                    return Err(invalid(dkey, format!("{d:?} is listed twice")));
                }
            }
        }
        validate_products(self)?;
        let p = &self.pipeline;
        if p.submission_window < Duration::from_secs(3600) || p.submission_window > Duration::from_secs(48 * 3600) {
            return Err(invalid("pipeline.submission_window", "must be between 1h and 48h (AWS: 24h)"));
        }
        if p.seal_grace + p.safety_margin + Duration::from_secs(3600) >= p.submission_window {
            return Err(invalid(
                "pipeline.seal_grace",
                "1h + seal_grace + safety_margin must be shorter than submission_window, or no record could be sent in time",
            ));
        }
        if p.tick.is_zero() || p.tick > Duration::from_secs(60) {
            return Err(invalid("pipeline.tick", "must be between 1ms and 60s"));
        }
        for (name, a) in &self.accounts {
            let key = format!("accounts.{name}");
            if let Some(region) = &a.region
                && (region.is_empty()
                    || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
            {
                return Err(invalid(format!("{key}.region"), "must be an AWS Region such as us-east-1"));
            }
            if !(a.calls_per_second > 0.0 && a.calls_per_second <= 10.0) {
                return Err(invalid(format!("{key}.calls_per_second"), "must be above 0 and at most 10 (AWS's limit)"));
            }
            if a.call_timeout < Duration::from_millis(100) || a.call_timeout > Duration::from_secs(120) {
                return Err(invalid(format!("{key}.call_timeout"), "must be between 100ms and 120s"));
            }
            if a.app_id.is_empty()
                || a.app_id.len() > 50
                || !a.app_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(invalid(
                    format!("{key}.app_id"),
                    "must be 1-50 characters of letters, digits, '-', '_' and '.'",
                ));
            }
            if let Some(url) = &a.endpoint_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(format!("{key}.endpoint_url"), "must start with http:// or https://"));
            }
            if a.test_credentials && !a.endpoint_url.as_deref().is_some_and(is_loopback_url) {
                return Err(invalid(
                    format!("{key}.test_credentials"),
                    "dummy credentials are only allowed with a loopback endpoint_url (the emulator)",
                ));
            }
            if a.test_credentials && (a.profile.is_some() || a.role_arn.is_some()) {
                return Err(invalid(format!("{key}.test_credentials"), "cannot be combined with profile or role_arn"));
            }
        }
        for (name, product) in &self.products {
            match &product.account {
                Some(a) if !self.accounts.contains_key(a) => {
                    return Err(invalid(
                        format!("products.{name}.account"),
                        format!("{a:?} is not a configured [accounts.NAME]"),
                    ));
                }
                None if self.accounts.len() > 1 => {
                    return Err(invalid(
                        format!("products.{name}.account"),
                        "is required when several accounts are configured",
                    ));
                }
                _ => {}
            }
        }
        self.silence.settings()?;
        if let Some(a) = &self.admin {
            let addr: SocketAddr = a.listen.parse().map_err(|_| invalid("admin.listen", "must be an IP:port"))?;
            if !addr.ip().is_loopback() && self.server.token_file.is_none() {
                return Err(invalid(
                    "admin.listen",
                    "must be a loopback address, unless server.token_file is set (then /metrics and the dashboard's data need that token)",
                ));
            }
        }
        if let Some(m) = &self.marketplace {
            let addr: SocketAddr = m.listen.parse().map_err(|_| invalid("marketplace.listen", "must be an IP:port"))?;
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "marketplace.listen",
                    "must be a loopback address; put an HTTPS reverse proxy in front",
                ));
            }
            if !(m.redirect_url.starts_with("https://") || m.redirect_url.starts_with("http://")) {
                return Err(invalid("marketplace.redirect_url", "must be an http(s) URL"));
            }
            if let Some(p) = &m.product
                && !self.products.contains_key(p)
            {
                return Err(invalid("marketplace.product", format!("{p:?} is not a configured product")));
            }
            validate_marketplace_auth(m)?;
        }
        if let Some(fleet) = &self.fleet {
            fleet.validate(self)?;
        }
        if let Some(default) = &self.ingest.default_product
            && !self.products.contains_key(default)
        {
            return Err(invalid(
                "ingest.default_product",
                format!("{default:?} is not a configured product (known: {})", self.product_names()),
            ));
        }
        Ok(())
    }

    pub fn product_names(&self) -> String {
        self.products.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// The account a product submits with, if any account is configured.
    pub fn account_of(&self, product: &str) -> Option<&str> {
        let p = self.products.get(product)?;
        match &p.account {
            Some(a) => Some(a.as_str()),
            None => self.accounts.keys().next().map(String::as_str),
        }
    }

    /// How long AWS accepts a record of `product` after its hour starts.
    pub fn submission_window_of(&self, product: &str) -> Duration {
        match self.products.get(product) {
            Some(p) => p.submission_window.unwrap_or(match p.identity {
                IdentityMode::Deployment => crate::domain::deployment::METER_USAGE_WINDOW,
                _ => self.pipeline.submission_window,
            }),
            None => self.pipeline.submission_window,
        }
    }

    /// Every product's submission window in ms where it differs from `pipeline.submission_window`.
    pub fn product_windows_ms(&self) -> std::collections::BTreeMap<String, i64> {
        self.products
            .keys()
            .map(|p| (p.clone(), self.submission_window_of(p)))
            .filter(|(_, w)| *w != self.pipeline.submission_window)
            .map(|(p, w)| (p, w.as_millis() as i64))
            .collect()
    }

    /// The product events without a `product` field are counted under, if any.
    pub fn default_product(&self) -> Option<&str> {
        match &self.ingest.default_product {
            Some(p) => Some(p.as_str()),
            None if self.products.len() == 1 => self.products.keys().next().map(String::as_str),
            None => None,
        }
    }

    /// How records are sealed (`pipeline.submission_window`, `safety_margin`, `zero_records`).
    pub fn seal_policy(&self) -> crate::domain::seal::SealPolicy {
        let p = &self.pipeline;
        crate::domain::seal::SealPolicy {
            window_ms: p.submission_window.as_millis() as i64,
            product_windows_ms: self.product_windows_ms(),
            margin_ms: p.safety_margin.as_millis() as i64,
            zero_records: p.zero_records,
        }
    }

    /// The products, dimensions, identity modes and limits events are validated and decided against: built
    /// once at start, so the domain never reads the configuration.
    pub fn catalog(&self) -> crate::domain::catalog::Catalog {
        use crate::domain::catalog::{Catalog, IdentityMode as Mode, Limits, Product};
        Catalog {
            products: self
                .products
                .iter()
                .map(|(name, p)| {
                    let identity = match p.identity {
                        IdentityMode::License => Mode::License,
                        IdentityMode::Legacy => Mode::Legacy,
                        IdentityMode::Deployment => Mode::Deployment,
                    };
                    let product =
                        Product { identity, product_code: p.product_code.clone(), dimensions: p.dimensions.clone() };
                    (name.clone(), product)
                })
                .collect(),
            default_product: self.default_product().map(str::to_string),
            limits: Limits {
                max_future_skew_ms: self.ingest.max_future_skew.as_millis() as i64,
                dedupe_horizon_ms: self.storage.dedupe_window.as_millis() as i64,
                max_lateness_ms: Some(self.pipeline.max_lateness.as_millis() as i64),
                late: self.pipeline.late_usage,
            },
        }
    }

    /// The configuration `meterd run --simulate` uses when no file is given: one demo product, with the same
    /// `METERD_*` environment overrides as a file.
    pub fn simulate_default(data_dir: PathBuf, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = format!(
            r#"
[storage]
data_dir = {:?}

# The dashboard and /metrics, on a free loopback port (printed at start; METERD_ADMIN_LISTEN picks one).
[admin]
listen = "127.0.0.1:0"

[products.demo]
identity = "license"
product_code = "demo-product-code"
dimensions = ["api_calls", "storage_gb_hours"]

# An AMI product with usage pricing: meterd on the buyer's instance, MeterUsage, no customer in the events.
[products.demo_ami]
identity = "deployment"
product_code = "demo-ami-product-code"
dimensions = ["vcpu_hours"]

[ingest]
default_product = "demo"
"#,
            data_dir.display().to_string()
        );
        Self::from_toml_with_env(&text, Path::new("<simulate defaults>"), env)
    }
}

fn validate_marketplace_auth(m: &MarketplaceHttpConfig) -> Result<(), ConfigError> {
    let h = &m.events_secret_header;
    if h.is_empty() || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(invalid("marketplace.events_secret_header", "must be 1-64 lowercase letters, digits and '-'"));
    }
    if matches!(h.as_str(), "authorization" | "host" | "content-type" | "content-length" | "x-forwarded-for") {
        return Err(invalid("marketplace.events_secret_header", format!("{h:?} is a standard header; pick your own")));
    }
    for (i, a) in m.events_accounts.iter().enumerate() {
        if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!("marketplace.events_accounts[{i}]"), "must be a 12-digit AWS account id"));
        }
    }
    for (i, t) in m.sns_topics.iter().enumerate() {
        let parts: Vec<&str> = t.split(':').collect();
        if parts.len() != 6
            || parts[0] != "arn"
            || !parts[1].starts_with("aws")
            || parts[2] != "sns"
            || parts[5].is_empty()
        {
            return Err(invalid(
                format!("marketplace.sns_topics[{i}]"),
                format!("{t:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"),
            ));
        }
    }
    if let Some(p) = &m.sns_cert_host_pattern {
        regex::Regex::new(p).map_err(|e| invalid("marketplace.sns_cert_host_pattern", format!("not a regex: {e}")))?;
    }
    for (i, p) in m.trusted_proxies.iter().enumerate() {
        p.parse::<std::net::IpAddr>()
            .map_err(|_| invalid(format!("marketplace.trusted_proxies[{i}]"), format!("{p:?} is not an IP address")))?;
    }
    for (key, r) in [("rate_limit", &m.rate_limit), ("events_rate_limit", &m.events_rate_limit)] {
        if !(1..=100_000).contains(&r.per_minute) {
            return Err(invalid(format!("marketplace.{key}.per_minute"), "must be between 1 and 100000"));
        }
        if !(1..=10_000).contains(&r.burst) {
            return Err(invalid(format!("marketplace.{key}.burst"), "must be between 1 and 10000"));
        }
    }
    Ok(())
}

pub use crate::domain::catalog::valid_product_code;

fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim_start_matches("http://").trim_start_matches("https://");
    let host = rest.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    host == "localhost"
        || host.trim_matches(|c| c == '[' || c == ']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn set_path(doc: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, parents) = path.split_last().expect("non-empty override path");
    let mut table = doc;
    for p in parents {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        table = entry.as_table_mut().expect("just made a table");
    }
    table.insert(last.to_string(), value);
}

/// Durations written as humantime strings ("5m", "24h", "90s").
/// Checks the per-product settings `identity = "deployment"` adds (submission windows, register_usage).
fn validate_products(config: &Config) -> Result<(), ConfigError> {
    let p = &config.pipeline;
    for (name, product) in &config.products {
        let key = format!("products.{name}");
        let deployment = product.identity == IdentityMode::Deployment;
        if let Some(w) = product.submission_window {
            if deployment && w > crate::domain::deployment::METER_USAGE_WINDOW {
                return Err(invalid(
                    format!("{key}.submission_window"),
                    "must be at most 6h for identity = \"deployment\": MeterUsage refuses older records",
                ));
            }
            if w < Duration::from_secs(3600) || w > Duration::from_secs(48 * 3600) {
                return Err(invalid(format!("{key}.submission_window"), "must be between 1h and 48h"));
            }
        }
        if p.seal_grace + p.safety_margin + Duration::from_secs(3600) >= config.submission_window_of(name) {
            return Err(invalid(
                format!("{key}.submission_window"),
                "1h + pipeline.seal_grace + pipeline.safety_margin must be shorter than this product's submission \
                 window, or no record could be sent in time",
            ));
        }
        if product.register_usage && !deployment {
            return Err(invalid(
                format!("{key}.register_usage"),
                "is only for paid container products: set identity = \"deployment\"",
            ));
        }
        if product.public_key_version < 1 {
            return Err(invalid(format!("{key}.public_key_version"), "must be at least 1"));
        }
    }
    Ok(())
}

pub(crate) mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like \"5m\" or \"24h\": {e}")))
    }

    /// An optional duration (the key may be left out).
    pub mod option {
        use serde::Deserializer;
        use std::time::Duration;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:7171"
        [storage]
        data_dir = "/tmp/meterd"
        [products.app]
        identity = "license"
        dimensions = ["api_calls", "gb"]
    "#;

    const MP: &str = "\n[marketplace]\nlisten = \"127.0.0.1:0\"\nredirect_url = \"https://x.example\"\n";

    const DEP: &str = "\n[products.ami]\nidentity = \"deployment\"\ndimensions = [\"vcpu_hours\"]\n";

    #[test]
    fn a_deployment_product_gets_meter_usage_s_window_and_an_account_may_leave_the_region_unset() {
        let text =
            format!("{GOOD}{DEP}product_code = \"pc\"\nregister_usage = true\n[accounts.instance]\napp_id = \"x\"\n");
        let c = parse(&text).unwrap();
        assert_eq!(c.submission_window_of("ami"), Duration::from_secs(6 * 3600));
        assert_eq!(c.submission_window_of("app"), Duration::from_secs(24 * 3600));
        assert_eq!(c.product_windows_ms(), [("ami".to_string(), 6 * 3_600_000)].into());
        assert_eq!(c.accounts["instance"].region, None);
        assert!(c.products["ami"].register_usage);
        let c = parse(&format!("{GOOD}{DEP}product_code = \"pc\"\nsubmission_window = \"3h\"")).unwrap();
        assert_eq!(c.submission_window_of("ami"), Duration::from_secs(3 * 3600));
    }

    #[test]
    fn marketplace_events_are_off_until_authenticated() {
        let c = parse(&format!("{GOOD}{MP}")).unwrap();
        let m = c.marketplace.unwrap();
        assert!(m.events_off_reason().unwrap().contains("events_secret_file"));
        assert_eq!((m.rate_limit.per_minute, m.events_secret_header.as_str()), (30, "x-meterd-events-key"));
        let c = parse(&format!("{GOOD}{MP}sns_topics = [\"arn:aws:sns:us-east-1:287250355862:aws-mp-n1\"]")).unwrap();
        assert!(c.marketplace.unwrap().events_off_reason().is_none());
        let re = regex::Regex::new(SNS_CERT_HOST_PATTERN).unwrap();
        for ok in ["sns.us-east-1.amazonaws.com", "sns.cn-north-1.amazonaws.com.cn", "sns.us-gov-west-1.amazonaws.com"]
        {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in [
            "sns.us-east-1.amazonaws.com.evil.com",
            "evil.com",
            "sns.us-east-1.amazonaws.com:8443",
            "xsns.a.amazonaws.com",
        ] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, Path::new("meterd.toml"), |_| None)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn silence_settings_are_validated_naming_the_key() {
        let s = parse(GOOD).unwrap().silence.settings().unwrap();
        assert_eq!(
            (s.drop_below_percent, s.min_baseline, s.top_customers),
            (20, crate::domain::quantity::Micros::from_units(10), 10)
        );
        let s =
            parse(&format!("{GOOD}\n[silence]\ndrop_below_percent = 35\nmin_baseline = \"0.5\"\ntop_customers = 0\n"))
                .unwrap()
                .silence
                .settings()
                .unwrap();
        assert_eq!((s.drop_below_percent, s.min_baseline.0, s.top_customers), (35, 500_000, 0));
        for (bad, key) in [
            ("drop_below_percent = 0", "silence.drop_below_percent: must be between 1 and 99"),
            ("drop_below_percent = 100", "silence.drop_below_percent: must be between 1 and 99"),
            ("min_baseline = \"ten\"", "silence.min_baseline: \"ten\" is not a plain decimal"),
            ("top_customers = 101", "silence.top_customers: must be at most 100"),
        ] {
            let e = err(&format!("{GOOD}\n[silence]\n{bad}\n"));
            assert!(e.starts_with(key), "{bad}: {e}");
        }
        assert!(err(&format!("{GOOD}\n[silence]\nthreshold = 3\n")).contains("unknown field `threshold`"));
    }

    #[test]
    fn a_non_loopback_admin_listener_needs_the_token_file() {
        let open = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:7172\"\n");
        assert!(err(&open).starts_with("admin.listen: must be a loopback address, unless server.token_file is set"));
        let with_token =
            open.replace("listen = \"127.0.0.1:7171\"", "listen = \"127.0.0.1:7171\"\ntoken_file = \"/etc/t\"");
        assert!(!parse(&with_token).unwrap().admin.unwrap().is_loopback());
    }

    #[test]
    fn accepts_a_minimal_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.default_product(), Some("app"));
        assert_eq!(c.ingest.max_future_skew, Duration::from_secs(300));
        assert_eq!(c.pipeline.max_lateness, Duration::from_secs(24 * 3600));
        // The pacer's ceiling defaults to AWS's whole quota: it backs off by itself when the quota is shared.
        assert!(c.accounts.values().all(|a| a.calls_per_second == 10.0));
    }

    #[test]
    fn env_overrides_apply_and_are_validated() {
        let env = |k: &str| match k {
            "METERD_DATA_DIR" => Some("/var/lib/other".to_string()),
            "METERD_MAX_FUTURE_SKEW" => Some("90s".to_string()),
            _ => None,
        };
        let c = Config::from_toml_with_env(GOOD, Path::new("x"), env).unwrap();
        assert_eq!(c.storage.data_dir, PathBuf::from("/var/lib/other"));
        assert_eq!(c.ingest.max_future_skew, Duration::from_secs(90));
        let bad = |k: &str| (k == "METERD_LISTEN").then(|| "0.0.0.0:1".to_string());
        let e = Config::from_toml_with_env(GOOD, Path::new("x"), bad).unwrap_err().to_string();
        assert!(e.starts_with("server.listen:"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("\"gb\"", "\"api_calls\""), "products.app.dimensions[1]:"),
            (GOOD.replace("[\"api_calls\", \"gb\"]", "[]"), "products.app.dimensions:"),
            (GOOD.replace("\"license\"", "\"legacy\""), "products.app.product_code:"),
            (GOOD.replace("127.0.0.1:7171", "10.0.0.1:7171"), "server.listen:"),
            (GOOD.replace("127.0.0.1:7171", "localhost"), "server.listen:"),
            (GOOD.replace("[products.app]", "[products.\"a b\"]"), "products.a b:"),
            (format!("{GOOD}\n[ingest]\ndefault_product = \"nope\""), "ingest.default_product:"),
            (format!("{GOOD}\n[ingest]\nmax_batch_events = 0"), "ingest.max_batch_events:"),
            (format!("{GOOD}\n[ingest]\nmax_future_skew = \"2d\""), "ingest.max_future_skew:"),
            (format!("{GOOD}\n[pipeline]\nmax_lateness = \"46d\""), "pipeline.max_lateness:"),
            (format!("{GOOD}\n[pipeline]\nmax_lateness = \"30m\""), "pipeline.max_lateness:"),
            (
                GOOD.replace("data_dir = \"/tmp/meterd\"", "data_dir = \"/tmp/meterd\"\ndedupe_window = \"12h\""),
                "storage.dedupe_window:",
            ),
            (
                GOOD.replace("data_dir = \"/tmp/meterd\"", "data_dir = \"/tmp/meterd\"\ndedupe_window = \"3d\"")
                    + "\n[pipeline]\nmax_lateness = \"4d\"",
                "storage.dedupe_window:",
            ),
            (
                GOOD.replace(
                    "data_dir = \"/tmp/meterd\"",
                    "data_dir = \"/tmp/meterd\"\nretention = \"3d\"\ndedupe_window = \"4d\"",
                ),
                "storage.dedupe_window:",
            ),
            (
                GOOD.replace("data_dir = \"/tmp/meterd\"", "data_dir = \"/tmp/meterd\"\nretention = \"3d\"")
                    + "\n[pipeline]\nmax_lateness = \"4d\"",
                "pipeline.max_lateness:",
            ),
            (
                GOOD.replace("data_dir = \"/tmp/meterd\"", "data_dir = \"/tmp/meterd\"\nrepack_ratio = 1.5"),
                "storage.repack_ratio:",
            ),
            (
                GOOD.replace("data_dir = \"/tmp/meterd\"", "data_dir = \"/tmp/meterd\"\ncache_mb = 8"),
                "storage.cache_mb:",
            ),
            (
                GOOD.replace("data_dir = \"/tmp/meterd\"", "data_dir = \"/tmp/meterd\"\nseal_chunk = 5"),
                "storage.seal_chunk:",
            ),
            (
                GOOD.replace("data_dir = \"/tmp/meterd\"", "data_dir = \"/tmp/meterd\"\nstuck_after = \"500ms\""),
                "storage.stuck_after:",
            ),
            (format!("{GOOD}{MP}sns_topics = [\"arn:aws:sqs:us-east-1:1:x\"]"), "marketplace.sns_topics[0]:"),
            (format!("{GOOD}{MP}events_accounts = [\"12\"]"), "marketplace.events_accounts[0]:"),
            (format!("{GOOD}{MP}events_secret_header = \"Authorization\""), "marketplace.events_secret_header:"),
            (format!("{GOOD}{MP}events_secret_header = \"authorization\""), "marketplace.events_secret_header:"),
            (format!("{GOOD}{MP}sns_cert_host_pattern = \"(\""), "marketplace.sns_cert_host_pattern:"),
            (format!("{GOOD}{MP}trusted_proxies = [\"proxy\"]"), "marketplace.trusted_proxies[0]:"),
            (format!("{GOOD}{MP}rate_limit = {{ per_minute = 0 }}"), "marketplace.rate_limit.per_minute:"),
            (format!("{GOOD}{DEP}"), "products.ami.product_code:"),
            (
                format!("{GOOD}{DEP}product_code = \"pc\"\nsubmission_window = \"7h\""),
                "products.ami.submission_window:",
            ),
            (
                format!("{GOOD}{DEP}product_code = \"pc\"\nsubmission_window = \"1h\""),
                "products.ami.submission_window:",
            ),
            (format!("{GOOD}{DEP}product_code = \"pc\"\npublic_key_version = 0"), "products.ami.public_key_version:"),
            (
                GOOD.replace("identity = \"license\"", "identity = \"license\"\nregister_usage = true"),
                "products.app.register_usage:",
            ),
            (
                format!("{GOOD}{DEP}product_code = \"pc\"\n[pipeline]\nseal_grace = \"4h\"\nsafety_margin = \"1h\""),
                "products.ami.submission_window:",
            ),
        ];
        for (text, key) in cases {
            let e = err(&text);
            assert!(e.starts_with(key), "expected {key} in {e}");
        }
        let e = err(&GOOD.replace("identity", "identiti"));
        assert!(e.contains("identiti"), "{e}");
        let e = err(&format!("{GOOD}\n[ingest]\nmax_future_skew = \"soon\""));
        assert!(e.contains("not a duration"), "{e}");
        assert!(err("").contains("storage"), "missing storage must be named");
    }
}
