//! `meterd verify`'s arguments.

use std::path::PathBuf;

use super::matching::Window;
use super::{Options, OutputFormat};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// CloudTrail log files (S3 objects, .json or .json.gz), `aws cloudtrail lookup-events` output, or
    /// directories holding them; repeatable.
    #[arg(long, required = true, num_args = 1..)]
    pub cloudtrail: Vec<PathBuf>,
    #[arg(long, env = "METERD_TARGET", default_value = "127.0.0.1:7171")]
    pub target: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Compare only usage hours from this time on (RFC 3339), on both sides.
    #[arg(long, value_parser = parse_time)]
    pub from: Option<i64>,
    /// Compare only usage hours before this time (RFC 3339): e.g. leave out the last ~15 minutes CloudTrail
    /// has not delivered yet.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<i64>,
}

fn parse_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-11-29T10:00:00Z: {e}"))
}

impl VerifyArgs {
    pub fn into_options(self) -> Options {
        Options {
            cloudtrail: self.cloudtrail,
            target: self.target,
            format: self.format,
            window: Window { from_ms: self.from, to_ms: self.to },
        }
    }
}
