//! The `meterd` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "meterd",
    version,
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
    },
    /// Show the state of a running agent.
    Status {
        /// Where the agent listens: host:port or unix:/path.
        #[arg(long, env = "METERD_TARGET", default_value = "127.0.0.1:7171")]
        target: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Path to the TOML config file. Optional with --simulate (a demo product is used).
    #[arg(long, short, env = "METERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Run against a built-in demo product with a throwaway data dir, for trying meterd out.
    #[arg(long)]
    pub simulate: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run(args).await,
        Command::CheckConfig { file } => Ok(check_config(&file)),
        Command::Status { target, json } => status(&target, json).await,
    }
}

fn init_logging(format: &LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("METERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match (&args.config, args.simulate) {
        (Some(path), _) => Config::load(path)?,
        (None, true) => {
            let dir = std::env::var_os("METERD_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join(format!("meterd-simulate-{}", std::process::id())));
            Config::simulate_default(dir)
        }
        (None, false) => {
            anyhow::bail!("--config FILE is required (or use --simulate to try meterd with a demo product)")
        }
    };
    init_logging(&config.log.format, &config.log.level);
    let clock = Arc::new(SystemClock);
    crate::app::run(
        config,
        clock,
        None,
        |ready| {
            use std::io::Write;
            println!("{}", ready.line());
            let _ = std::io::stdout().flush();
        },
        crate::app::shutdown_signal(),
    )
    .await?;
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
            println!("  data_dir     {}", c.storage.data_dir.display());
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

async fn status(target: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = meterd_proto::client::Client::connect(target, Duration::from_secs(3)).await?;
    let s = client.admin().status(meterd_proto::v1::StatusRequest {}).await?.into_inner();
    let ts = |t: &Option<meterd_proto::Timestamp>| {
        t.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000 + i64::from(t.nanos / 1_000_000))).unwrap_or_default()
    };
    if json {
        let v = serde_json::json!({
            "version": s.version,
            "started_at": ts(&s.started_at),
            "now": ts(&s.now),
            "data_dir": s.data_dir,
            "schema_version": s.schema_version,
            "events_stored": s.events_stored,
            "open_buckets": s.open_buckets,
            "store_size_bytes": s.store_size_bytes,
            "products": s.products.iter().map(|p| serde_json::json!({
                "name": p.name, "identity": p.identity, "dimensions": p.dimensions,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("meterd {} at {target}", s.version);
        println!("  started        {}", ts(&s.started_at));
        println!("  now            {}", ts(&s.now));
        println!("  data dir       {} (schema v{}, {} bytes)", s.data_dir, s.schema_version, s.store_size_bytes);
        println!("  events stored  {}", s.events_stored);
        println!("  open buckets   {}", s.open_buckets);
        for p in &s.products {
            println!("  product {}: identity={} dimensions=[{}]", p.name, p.identity, p.dimensions.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
