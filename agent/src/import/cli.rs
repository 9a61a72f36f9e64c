//! `meterd import`'s arguments.

use std::path::PathBuf;
use std::time::Duration;

use super::{Format, Options};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The file to import (.csv or .jsonl/.ndjson, optionally gzipped), or "-" for stdin.
    pub file: PathBuf,
    /// Input format; by default told from the file name (required for stdin).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    #[arg(long, env = "METERD_TARGET", default_value = "127.0.0.1:7171")]
    pub target: String,
    /// Read and check every row (format, fields, AWS deadline, product and dimension) without sending any.
    #[arg(long)]
    pub dry_run: bool,
    /// Where refused rows are written (JSON Lines); default FILE.refused.jsonl.
    #[arg(long)]
    pub refusals: Option<PathBuf>,
    /// The column holding each row's idempotency key; rows without one are keyed by a hash of their content.
    #[arg(long, default_value = "idempotency_key")]
    pub key_column: String,
    /// Rows per RecordUsageBatch call (capped at the agent's ingest.max_batch_events).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Batches sent at once.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// How often a progress line is printed when stderr is not a terminal.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub progress_every: Duration,
}

impl ImportArgs {
    pub fn into_options(self) -> Options {
        Options {
            file: self.file,
            format: self.format,
            target: self.target,
            dry_run: self.dry_run,
            refusals: self.refusals,
            key_column: self.key_column,
            batch_size: self.batch,
            in_flight: self.in_flight,
            progress_every: self.progress_every,
        }
    }
}
