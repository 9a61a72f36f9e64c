//! The `meterd` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};

/// `meterd --version`: the crate version and the source commit (see agent/build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("METERD_GIT_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "meterd",
    version = VERSION,
    about = "Records SaaS usage durably and meters it to AWS Marketplace, exactly once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// Validate a config file and print what it configures; exits 2 if it is invalid.
    CheckConfig {
        /// Path to the TOML config file.
        file: PathBuf,
        /// Also ask AWS: a MeterUsage DryRun for each dimension of every `identity = "deployment"` product
        /// (entitlement, product code, dimension, IAM permission, credentials, Region); exits 1 if one fails.
        #[arg(long)]
        aws: bool,
        /// Also check the fleet database (`[fleet]`): reachable, and migrated to this meterd's schema; exits 1 if
        /// not.
        #[arg(long)]
        fleet: bool,
    },
    /// Show the state of a running agent: queue depth, oldest pending, most urgent deadline, skew.
    Status {
        /// Where the agent listens: host:port or unix:/path.
        #[arg(long, env = "METERD_TARGET", default_value = "127.0.0.1:7171")]
        target: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Seal every ended hour now (ignoring the seal grace) and wake the submitters.
    Flush {
        #[arg(long, env = "METERD_TARGET", default_value = "127.0.0.1:7171")]
        target: String,
    },
    /// Copy the store into a fresh generation now, giving back the space churn left (the agent also does this
    /// by itself past `storage.repack_ratio`).
    Repack {
        #[arg(long, env = "METERD_TARGET", default_value = "127.0.0.1:7171")]
        target: String,
    },
    /// Reconciliation, streamed: a summary per hour x product x dimension (customers, recorded, sealed,
    /// accepted, rejected, expired, pending), or with --rows every hour x customer x dimension; totals that
    /// reconcile. Exits 3 when the ledger does not reconcile, 4 when revenue was lost, 5 when usage moved while
    /// rows streamed (run it again).
    Report(crate::report_cli::ReportArgs),
    /// The customer registry: tenant mappings, token resolution, lifecycle events.
    Customers {
        #[arg(long, env = "METERD_TARGET", default_value = "127.0.0.1:7171", global = true)]
        target: String,
        #[command(subcommand)]
        command: CustomersCommand,
    },
    /// Backfill usage from a CSV or JSON Lines file (or "-" for stdin) through the agent's ingest; exits 3 when
    /// any row was refused (listed in the refusal file). Columns: docs/operations.md.
    Import(crate::import::cli::ImportArgs),
    /// Match meterd's ledger with CloudTrail's MeterUsage/BatchMeterUsage records; exits 3 on any discrepancy.
    Verify(crate::verify::cli::VerifyArgs),
    /// Run the AWS Marketplace Metering emulator standalone (for your own tests).
    #[cfg(feature = "simulate")]
    Emulator {
        /// Address to listen on, e.g. 127.0.0.1:4599 (port 0 picks one; the URL is printed).
        #[arg(long, default_value = "127.0.0.1:4599")]
        listen: std::net::SocketAddr,
        /// Emulator config (products, customers, faults); see emulator/README.md.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CustomersCommand {
    /// List every mapped tenant with its identity and status.
    List,
    /// Show one tenant: identity, status and lifecycle history.
    Show { tenant_id: String },
    /// Map a tenant to a marketplace identity (license: --account-id and --license-arn; legacy: --customer-identifier).
    Put {
        tenant_id: String,
        #[arg(long, default_value = "")]
        product: String,
        #[arg(long)]
        account_id: Option<String>,
        #[arg(long)]
        license_arn: Option<String>,
        #[arg(long)]
        customer_identifier: Option<String>,
        #[arg(long, default_value = "")]
        agreement_id: String,
    },
    /// Resolve a registration token with AWS (ResolveCustomer) and map the tenant to the answer.
    Resolve {
        registration_token: String,
        tenant_id: String,
        #[arg(long, default_value = "")]
        product: String,
    },
    /// Remove a tenant's mapping.
    Remove { tenant_id: String },
    /// Apply a lifecycle event (EventBridge or SNS JSON) from a file, or from stdin with "-".
    ApplyEvent { file: PathBuf },
    /// Move a customer (tenant id, license ARN or legacy customer identifier) back to active after a wrong
    /// end-of-subscription; recorded in its history with who and why.
    Reinstate {
        customer: String,
        /// Why (kept in the customer's history).
        #[arg(long)]
        reason: String,
        /// Who (kept in the history); default: $USER@host.
        #[arg(long)]
        operator: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Path to the TOML config file. Optional with --simulate (a demo product is used).
    #[arg(long, short, env = "METERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Submit to an embedded AWS emulator instead of AWS. Without --config: a demo product, a throwaway
    /// data dir and a demo load.
    #[arg(long)]
    pub simulate: bool,
    /// With --simulate: how much faster than real time the clock runs (120 = an hour every 30 s).
    #[arg(long, default_value_t = 120.0)]
    pub speed: f64,
    /// With --simulate and --config: also run the demo load.
    #[arg(long)]
    pub feed: bool,
    /// With --simulate (at --speed 1): run the clock this many milliseconds ahead of (or, negative, behind) the
    /// wall clock. Processes given the same offset agree on the time: fleet-bench uses it to end an hour a few
    /// seconds after its load, for several agents at once.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub clock_offset_ms: i64,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::memory::pin_mmap_threshold();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            // A refusal from the agent: show its code and message, not the transport's debug form.
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run(args).await,
        Command::CheckConfig { file, aws, fleet } => {
            let code = check_config(&file);
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            if fleet && check_fleet(&file).await? != ExitCode::SUCCESS {
                return Ok(ExitCode::FAILURE);
            }
            if !aws {
                return Ok(code);
            }
            check_aws(&file).await
        }
        Command::Status { target, json } => status(&target, json).await,
        Command::Flush { target } => flush(&target).await,
        Command::Repack { target } => repack(&target).await,
        Command::Report(args) => crate::report_cli::run(args).await,
        Command::Customers { target, command } => customers(&target, command).await,
        Command::Import(args) => crate::import::run(args.into_options()).await,
        Command::Verify(args) => crate::verify::run(args.into_options()).await,
        #[cfg(feature = "simulate")]
        Command::Emulator { listen, config } => {
            init_logging(&LogFormat::Text, "info");
            meterd_emulator::run_standalone(listen, config.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(format: &LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("METERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let demo = args.simulate && args.config.is_none();
    // The demo's own data dir, unless METERD_DATA_DIR names one to keep: removed when this function returns.
    let mut throwaway_dir = None;
    let config = match (&args.config, args.simulate) {
        (Some(path), _) => Config::load(path)?,
        (None, true) => {
            let dir = match std::env::var_os("METERD_DATA_DIR") {
                Some(d) => PathBuf::from(d),
                None => {
                    let d = std::env::temp_dir().join(format!("meterd-simulate-{}", std::process::id()));
                    throwaway_dir = Some(ThrowawayDir(d.clone()));
                    d
                }
            };
            Config::simulate_default(dir, |k| std::env::var(k).ok())?
        }
        (None, false) => {
            anyhow::bail!("--config FILE is required (or use --simulate to try meterd with a demo product)")
        }
    };
    init_logging(&config.log.format, &config.log.level);
    if !args.simulate {
        let clock = Arc::new(SystemClock);
        crate::app::run(config, clock, None, print_ready, crate::app::shutdown_signal()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    run_simulated(args, config, demo, throwaway_dir).await
}

/// A production build (`--no-default-features`) has no emulator to simulate against.
#[cfg(not(feature = "simulate"))]
async fn run_simulated(_: RunArgs, _: Config, _: bool, _: Option<ThrowawayDir>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("--simulate: this meterd was built without the `simulate` feature (no embedded emulator)")
}

#[cfg(feature = "simulate")]
async fn run_simulated(
    args: RunArgs,
    mut config: Config,
    demo: bool,
    throwaway_dir: Option<ThrowawayDir>,
) -> anyhow::Result<ExitCode> {
    if !(args.speed >= 1.0 && args.speed <= 3600.0) {
        anyhow::bail!("--speed must be between 1 and 3600");
    }
    if args.clock_offset_ms != 0 && (args.speed - 1.0).abs() >= f64::EPSILON {
        // A scaled clock counts from its own start: processes would disagree however the offset is set.
        anyhow::bail!("--clock-offset-ms needs --speed 1");
    }
    if demo {
        // Simulated minutes: seal a minute after each hour ends, look for work often.
        config.pipeline.seal_grace = Duration::from_secs(60);
        config.pipeline.tick = Duration::from_millis(250);
    }
    let sim = crate::simulate::prepare_with_offset(config, args.speed, args.clock_offset_ms).await?;
    let emulator_url = sim.handle.endpoint_url();
    let config = sim.config.clone();
    let feeder_config = Arc::new(config.clone());
    let feed = demo || args.feed;
    let emulator = sim.emulator.clone();
    let (data_dir, throwaway) = (config.storage.data_dir.clone(), throwaway_dir.is_some());
    tracing::info!(speed = args.speed, emulator = %emulator_url, "simulating: submitting to the embedded emulator, not AWS");
    crate::app::run(
        config,
        sim.clock.clone(),
        Some(emulator_url),
        move |ready| {
            // Where the demo's data is, and whether it outlives the run.
            let note = if throwaway { " (throwaway: removed on exit)" } else { "" };
            print_line(&format!("{} data_dir={}{note}", ready.line(), data_dir.display()));
            if let Some(admin) = ready.admin {
                print_line(&format!("simulate: dashboard at http://{admin}/"));
            }
            if let Some(tcp) = ready.tcp {
                if feed {
                    tokio::spawn(crate::simulate::feed(tcp.to_string(), feeder_config));
                }
                tokio::spawn(crate::simulate::narrate(tcp.to_string(), emulator));
            }
        },
        crate::app::shutdown_signal(),
    )
    .await?;
    sim.handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn print_ready(ready: &crate::app::Ready) {
    print_line(&ready.line());
}

/// Scripts wait for the ready line: flush it even when stdout is a pipe.
fn print_line(line: &str) {
    use std::io::Write;
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// `run --simulate`'s default data dir under the temp dir: nothing in it outlives the demo, so it is removed
/// when the run ends (after the store is closed), on a clean stop or an error alike.
struct ThrowawayDir(PathBuf);

impl Drop for ThrowawayDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: cannot remove the simulation's data dir {}: {e}", self.0.display());
        }
    }
}

async fn customers(target: &str, command: CustomersCommand) -> anyhow::Result<ExitCode> {
    use meterd_proto::v1;
    let client = meterd_proto::client::Client::connect(target, Duration::from_secs(3)).await?;
    let mut c = v1::customers_client::CustomersClient::new(client.channel());
    let show = |i: &v1::CustomerInfo| {
        let who = match &i.identity {
            Some(v1::customer_info::Identity::AwsAccount(a)) => {
                format!("{} / {}", a.customer_aws_account_id, a.license_arn)
            }
            Some(v1::customer_info::Identity::Legacy(l)) => format!("legacy {}", l.customer_identifier),
            None => "-".into(),
        };
        println!("{:<24} {:<10} {:<14} {}  {}", i.tenant_id, i.product, i.status, who, i.agreement_id);
    };
    match command {
        CustomersCommand::List => {
            for i in c.list(v1::ListCustomersRequest {}).await?.into_inner().customers {
                show(&i);
            }
        }
        CustomersCommand::Show { tenant_id } => {
            let i = c.get(v1::GetCustomerRequest { tenant_id }).await?.into_inner();
            show(&i);
            for h in &i.history {
                let at = h.at.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000)).unwrap_or_default();
                let note = if h.applied { "" } else { " (no change)" };
                println!("  {at}  {:<14} {} {}{note}", h.status, h.source, h.event_id);
            }
        }
        CustomersCommand::Put { tenant_id, product, account_id, license_arn, customer_identifier, agreement_id } => {
            let identity = match (account_id, license_arn, customer_identifier) {
                (Some(a), Some(l), None) => v1::put_customer_request::Identity::AwsAccount(v1::AwsCustomer {
                    customer_aws_account_id: a,
                    license_arn: l,
                }),
                (None, None, Some(ci)) => v1::put_customer_request::Identity::Legacy(v1::LegacyCustomer {
                    customer_identifier: ci,
                    product_code: String::new(),
                }),
                _ => anyhow::bail!("give --account-id and --license-arn, or --customer-identifier"),
            };
            let i = c
                .put(v1::PutCustomerRequest { tenant_id, product, identity: Some(identity), agreement_id })
                .await?
                .into_inner();
            show(&i);
        }
        CustomersCommand::Resolve { registration_token, tenant_id, product } => {
            let i =
                c.resolve(v1::ResolveCustomerRequest { registration_token, tenant_id, product }).await?.into_inner();
            show(&i);
        }
        CustomersCommand::Remove { tenant_id } => {
            let r = c.remove(v1::RemoveCustomerRequest { tenant_id: tenant_id.clone() }).await?.into_inner();
            println!(
                "{}",
                if r.removed { format!("removed {tenant_id}") } else { format!("{tenant_id} had no mapping") }
            );
        }
        CustomersCommand::ApplyEvent { file } => {
            let json = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)?
            };
            let r = c.apply_event(v1::ApplyEventRequest { event_json: json }).await?.into_inner();
            println!("{} (records sealed now: {})", r.summary, r.records_sealed);
        }
        CustomersCommand::Reinstate { customer, reason, operator } => {
            let operator = operator.unwrap_or_else(default_operator);
            let r = c.reinstate(v1::ReinstateCustomerRequest { customer, operator, reason }).await?.into_inner();
            println!("{}", r.summary);
            if let Some(h) = r.history.last() {
                let at = h.at.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000)).unwrap_or_default();
                println!("  history: {at}  {}  {}", h.status, h.source);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `$USER@hostname`, for the audit entry of a reinstatement.
fn default_operator() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() { user } else { format!("{user}@{host}") }
}

async fn flush(target: &str) -> anyhow::Result<ExitCode> {
    let client = meterd_proto::client::Client::connect(target, Duration::from_secs(3)).await?;
    let r = client.admin().flush(meterd_proto::v1::FlushRequest {}).await?.into_inner();
    if r.events_forwarded > 0 {
        println!("forwarded {} event(s) from this agent's spool to the shared ledger", r.events_forwarded);
    }
    println!(
        "sealed {} record(s) ({} hour(s) were only fractions, carried on); sealed through {}",
        r.records_sealed,
        r.hours_carried_only,
        r.sealed_through.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000)).unwrap_or_else(|| "-".into())
    );
    if !r.waiting_for.is_empty() {
        println!(
            "the fleet's seal still waits for the forward of node(s) {} (up to fleet.down_after once they stop \
             heartbeating); the submitter seals as soon as they have forwarded",
            r.waiting_for.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn repack(target: &str) -> anyhow::Result<ExitCode> {
    let client = meterd_proto::client::Client::connect(target, Duration::from_secs(3)).await?;
    let r = client.admin().repack(meterd_proto::v1::RepackRequest {}).await?.into_inner();
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "repacked {} key(s) in {} ms (writes waited {} ms): {:.1} MiB -> {:.1} MiB",
        r.keys,
        r.duration_ms,
        r.writes_paused_ms,
        mib(r.bytes_before),
        mib(r.bytes_after)
    );
    Ok(ExitCode::SUCCESS)
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(c) => {
            println!("config OK: {}", file.display());
            if let Some(l) = &c.server.listen {
                println!("  listen       {l}");
            }
            if let Some(u) = &c.server.unix_socket {
                println!("  unix_socket  {}", u.display());
            }
            if let Some(t) = &c.server.tls {
                let mtls = if t.client_ca_file.is_some() { " + client certificates (mTLS)" } else { "" };
                println!("  tls          {}{mtls}", t.cert_file.display());
            }
            if let Some(f) = &c.server.token_file {
                // The path only: the token itself is never printed.
                println!("  token        from {}", f.display());
            }
            if let Some(a) = &c.admin {
                let auth = if a.is_loopback() { "" } else { "; /metrics and /api/… need the token" };
                println!("  admin        {} (dashboard /, /metrics, /healthz, /readyz{auth})", a.listen);
            }
            if let Some(m) = &c.marketplace {
                println!("  marketplace  {} → {}", m.listen, m.redirect_url);
                println!(
                    "  fulfillment  {} ({}/min per client, burst {})",
                    crate::server::marketplace_http::FULFILLMENT_PATH,
                    m.rate_limit.per_minute,
                    m.rate_limit.burst
                );
                match m.events_off_reason() {
                    Some(why) => println!("  events       off (404): {why}"),
                    None => {
                        let mut how = Vec::new();
                        if let Some(f) = &m.events_secret_file {
                            how.push(format!("EventBridge secret from {} in {}", f.display(), m.events_secret_header));
                        }
                        if !m.sns_topics.is_empty() {
                            how.push(format!("signed SNS from {} topic(s)", m.sns_topics.len()));
                        }
                        println!(
                            "  events       {} ({})",
                            crate::server::marketplace_http::EVENTS_PATH,
                            how.join("; ")
                        );
                    }
                }
            }
            let secs = c.storage.retention.as_secs();
            let retention = if secs % 86_400 == 0 {
                format!("{}d", secs / 86_400)
            } else {
                humantime::format_duration(c.storage.retention).to_string()
            };
            println!("  data_dir     {} (retention {retention})", c.storage.data_dir.display());
            for (name, a) in &c.accounts {
                println!(
                    "  account {name}: region={} calls/s={}{}",
                    a.region.as_deref().unwrap_or("(from the environment or instance metadata)"),
                    a.calls_per_second,
                    a.endpoint_url.as_deref().map(|u| format!(" endpoint={u}")).unwrap_or_default()
                );
            }
            for (name, p) in &c.products {
                println!("  product {name}: identity={} dimensions=[{}]", p.identity.as_str(), p.dimensions.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("config invalid: {e}");
            ExitCode::from(2)
        }
    }
}

/// `check-config --fleet`: the fleet database is reachable and migrated (one line either way).
async fn check_fleet(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(file)?;
    let Some(f) = &config.fleet else {
        println!("fleet: no [fleet] table: this agent runs on its data dir alone");
        return Ok(ExitCode::SUCCESS);
    };
    Ok(match crate::fleet::check_database(f).await {
        Ok(line) => {
            println!("fleet: {line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            println!("fleet: FAILED: {line}");
            ExitCode::FAILURE
        }
    })
}

/// `check-config --aws`: the deployment-mode DryRun checks, printed one line per dimension.
async fn check_aws(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(file)?;
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let checks = crate::submit::register::DeploymentChecks::default();
    let mut checked = 0;
    for (account, a) in &config.accounts {
        let products = crate::submit::register::deployment_products(&config, account);
        if products.is_empty() {
            continue;
        }
        let client = crate::submit::aws::client(a, clock.clone(), Default::default())
            .await
            .map_err(|e| anyhow::anyhow!("accounts.{account}: {e:#}"))?;
        crate::submit::register::dry_run_all(&client, &config, &products, &clock, &checks).await;
        checked += products.len();
    }
    if checked == 0 {
        println!("aws: no identity = \"deployment\" product to check (BatchMeterUsage has no DryRun)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0;
    for (product, check, r) in checks.snapshot() {
        if r.state == "ok" {
            println!("aws: {product} {check}: ok (MeterUsage DryRun would succeed)");
        } else {
            failed += 1;
            println!("aws: {product} {check}: FAILED {}: {}", r.error_code, r.message);
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn status(target: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = meterd_proto::client::Client::connect(target, Duration::from_secs(3)).await?;
    let s = client.admin().status(meterd_proto::v1::StatusRequest {}).await?.into_inner();
    let ts = |t: &Option<meterd_proto::Timestamp>| {
        t.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000 + i64::from(t.nanos / 1_000_000))).unwrap_or_default()
    };
    if json {
        let v = crate::server::status::to_json(&s);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("meterd {} at {target}", s.version);
        println!("  started        {}", ts(&s.started_at));
        println!("  now            {}", ts(&s.now));
        println!("  data dir       {} (schema v{}, {} bytes)", s.data_dir, s.schema_version, s.store_size_bytes);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "  disk           {:.1} MiB free, reserve {:.1} MiB{}",
            mib(s.disk_free_bytes),
            mib(s.disk_reserve_bytes),
            if s.disk_full { " — DISK FULL: ingest refused until there is room (storage.min_free)" } else { "" }
        );
        println!("  events stored  {}", s.events_stored);
        println!("  open buckets   {}", s.open_buckets);
        println!("  late events    {}", s.late_events);
        println!("  at risk        {} record(s) held for unmapped tenants", s.records_at_risk);
        let mut statuses: Vec<_> = s.customers_by_status.iter().map(|(k, v)| format!("{k} {v}")).collect();
        statuses.sort();
        println!(
            "  customers      {} ({} answered CustomerNotSubscribed)",
            if statuses.is_empty() { "none tracked".to_string() } else { statuses.join(", ") },
            s.customers_not_subscribed
        );
        if s.records_lost > 0 {
            println!(
                "  LOST REVENUE   {} unit(s) in {} record(s): AWS answered DuplicateRecord on their first send (meterd report)",
                s.units_lost, s.records_lost
            );
        }
        println!("  sealed through {}", ts(&s.sealed_through));
        println!(
            "  pending        {} record(s) ({} in flight, {} unit(s)), oldest hour {} s old",
            s.pending_records, s.pending_in_flight, s.pending_units, s.oldest_pending_age_seconds
        );
        if s.projected_drain_seconds > 0 {
            println!(
                "  drain          ~{} at 25 records per call and the current send rate",
                humantime::format_duration(std::time::Duration::from_secs(s.projected_drain_seconds))
            );
        }
        println!("  next deadline  {}", ts(&s.most_urgent_deadline));
        if let Some(f) = &s.fleet {
            print!("{}", crate::fleet::status_view::text(f));
        }
        if s.usage_drops.is_empty() {
            println!("  usage drops    none in the last ended hour");
        } else {
            println!(
                "  USAGE DROPS    {} in the last ended hour (is the product still calling meterd?):",
                s.usage_drops.len()
            );
            for d in &s.usage_drops {
                println!("    {}", crate::server::convert::drop_line(d));
            }
        }
        for p in &s.products {
            println!("  product {}: identity={} dimensions=[{}]", p.name, p.identity, p.dimensions.join(", "));
        }
        for c in &s.deployment_checks {
            let error =
                if c.error_code.is_empty() { String::new() } else { format!(": {} {}", c.error_code, c.message) };
            println!("  check {} {}: {} (attempts {}){error}", c.product, c.check, c.state, c.attempts);
        }
        for a in &s.accounts {
            println!(
                "  account {}: last success {}, skew {}, calls ok/throttled/failed {}/{}/{}, records accepted/rejected/expired {}/{}/{}",
                a.name,
                ts(&a.last_successful_call),
                a.clock_skew_ms.map(|m| format!("{m} ms")).unwrap_or_else(|| "unknown".into()),
                a.calls_ok,
                a.calls_throttled,
                a.calls_failed,
                a.records_accepted,
                a.records_rejected,
                a.records_expired
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
