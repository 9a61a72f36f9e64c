//! `meterd report`: reads `Admin.ReportStream` and writes each chunk as it arrives (table, JSON Lines or CSV), so
//! the CLI's memory does not grow with the ledger. The default is the summary per hour × product × dimension;
//! `--rows` gives every hour × customer × dimension.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use meterd_proto::v1;

use crate::report::{Totals, csv_escape};
use crate::server::convert::{row_from_wire, totals_from_wire};

/// Exit code when rows streamed while a seal, compaction or mapping moved usage: read again.
pub const EXIT_INCONSISTENT: u8 = 5;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    /// JSON Lines: one object per group or row, then one `"type": "totals"` object.
    Json,
    Csv,
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    #[arg(long, env = "METERD_TARGET", default_value = "127.0.0.1:7171")]
    pub target: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
    /// Every hour × customer × dimension instead of the summary per hour × product × dimension.
    #[arg(long)]
    pub rows: bool,
    /// Hours from this one on (RFC 3339, e.g. 2026-11-30T05:00:00Z, or a date 2026-11-30).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<i64>,
    /// Hours before this one (RFC 3339 or a date).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<i64>,
    /// A customer as the report shows it: aws:<account>/<license arn>, legacy:<id>, tenant:<id> or deployment.
    #[arg(long)]
    pub customer: Option<String>,
    #[arg(long)]
    pub dimension: Option<String>,
    /// open, sealed, in_flight, accepted, rejected, expired, carried or merged.
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub product: Option<String>,
}

/// RFC 3339, or a date (its midnight, UTC), as Unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis());
    }
    Err(format!("{s:?} is neither an RFC 3339 time (2026-11-30T05:00:00Z) nor a date (2026-11-30)"))
}

fn ts(ms: i64) -> meterd_proto::Timestamp {
    meterd_proto::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

impl ReportArgs {
    pub fn request(&self) -> v1::ReportStreamRequest {
        v1::ReportStreamRequest {
            since: self.since.map(ts),
            until: self.until.map(ts),
            customer: self.customer.clone().unwrap_or_default(),
            dimension: self.dimension.clone().unwrap_or_default(),
            state: self.state.clone().unwrap_or_default(),
            product: self.product.clone().unwrap_or_default(),
            rows: self.rows,
        }
    }
}

fn hour_text(t: &Option<meterd_proto::Timestamp>) -> String {
    t.as_ref().map(|t| crate::clock::rfc3339(t.seconds * 1000)).unwrap_or_default()
}

const SUMMARY_CSV_HEADER: &str =
    "hour,product,dimension,customers,recorded,late,open,sealed,accepted,rejected,expired,pending\n";

fn summary_table_header() -> String {
    format!(
        "{:<20} {:<10} {:<16} {:>9} {:>14} {:>12} {:>9} {:>9} {:>9} {:>8} {:>8}\n",
        "hour",
        "product",
        "dimension",
        "customers",
        "recorded",
        "open",
        "sealed",
        "accepted",
        "rejected",
        "expired",
        "pending"
    )
}

fn summary_table_row(g: &v1::ReportGroup) -> String {
    format!(
        "{:<20} {:<10} {:<16} {:>9} {:>14} {:>12} {:>9} {:>9} {:>9} {:>8} {:>8}\n",
        hour_text(&g.hour).trim_end_matches(":00.000Z"),
        g.product,
        g.dimension,
        g.customers,
        g.recorded,
        g.open,
        g.sealed,
        g.accepted,
        g.rejected,
        g.expired,
        g.pending
    )
}

fn summary_csv_row(g: &v1::ReportGroup) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{}\n",
        hour_text(&g.hour),
        csv_escape(&g.product),
        csv_escape(&g.dimension),
        g.customers,
        g.recorded,
        g.late,
        g.open,
        g.sealed,
        g.accepted,
        g.rejected,
        g.expired,
        g.pending
    )
}

/// Hours are Unix milliseconds in JSON, as in rows (`Row`'s own form).
fn group_json(g: &v1::ReportGroup) -> serde_json::Value {
    serde_json::json!({
        "hour": g.hour.as_ref().map(|t| t.seconds * 1000),
        "product": g.product,
        "dimension": g.dimension,
        "customers": g.customers,
        "rows": g.rows,
        "recorded": g.recorded,
        "late": g.late,
        "open": g.open,
        "sealed": g.sealed,
        "accepted": g.accepted,
        "rejected": g.rejected,
        "expired": g.expired,
        "pending": g.pending,
        "states": g.states.iter().collect::<std::collections::BTreeMap<_, _>>(),
    })
}

/// Writes one chunk in `format`; the header goes before the first.
fn write_chunk(
    out: &mut impl Write,
    format: ReportFormat,
    rows: bool,
    header_done: &mut bool,
    c: &v1::report_chunk::Chunk,
) -> anyhow::Result<()> {
    use v1::report_chunk::Chunk;
    if !*header_done && format != ReportFormat::Json && !matches!(c, Chunk::Trailer(_)) {
        *header_done = true;
        let header = match (format, rows) {
            (ReportFormat::Table, false) => summary_table_header(),
            (ReportFormat::Table, true) => crate::report::table_header(),
            (ReportFormat::Csv, false) => SUMMARY_CSV_HEADER.to_string(),
            _ => crate::report::CSV_HEADER.to_string(),
        };
        out.write_all(header.as_bytes())?;
    }
    match c {
        Chunk::Groups(g) => {
            for g in &g.groups {
                let line = match format {
                    ReportFormat::Table => summary_table_row(g),
                    ReportFormat::Csv => summary_csv_row(g),
                    ReportFormat::Json => {
                        let mut v = group_json(g);
                        v["type"] = "group".into();
                        format!("{v}\n")
                    }
                };
                out.write_all(line.as_bytes())?;
            }
        }
        Chunk::Rows(r) => {
            for w in &r.rows {
                let row = row_from_wire(w);
                let line = match format {
                    ReportFormat::Table => crate::report::table_row(&row),
                    ReportFormat::Csv => crate::report::csv_row(&row),
                    ReportFormat::Json => {
                        let mut v = serde_json::to_value(&row)?;
                        v["type"] = "row".into();
                        format!("{v}\n")
                    }
                };
                out.write_all(line.as_bytes())?;
            }
        }
        Chunk::Trailer(_) => {}
    }
    Ok(())
}

/// The trailer: totals under a table, one `"type": "totals"` line in JSON Lines, nothing in CSV (which stays
/// one line per group or row; the exit code tells whether the ledger reconciles).
fn write_trailer(
    out: &mut impl Write,
    format: ReportFormat,
    rows: bool,
    t: &v1::ReportTrailer,
    totals: &Totals,
) -> anyhow::Result<()> {
    match format {
        ReportFormat::Table => {
            out.write_all(crate::report::totals_text(totals).as_bytes())?;
            if let Some(s) = &t.selected {
                let (n, what) = if rows { (t.rows_sent, "rows") } else { (t.groups_sent, "groups") };
                writeln!(
                    out,
                    "shown: {n} {what} of {} rows (recorded {}, accepted {}, pending {})",
                    s.rows, s.recorded, s.accepted, s.pending
                )?;
            }
            for d in &t.usage_drops {
                writeln!(out, "USAGE DROP: {}", crate::server::convert::drop_line(d))?;
            }
        }
        ReportFormat::Json => {
            let v = serde_json::json!({
                "type": "totals",
                "totals": totals,
                "selected": t.selected.as_ref().map(group_json),
                "rows_sent": t.rows_sent,
                "groups_sent": t.groups_sent,
                "consistent": t.consistent,
                "restarts": t.restarts,
                "usage_drops": t.usage_drops.iter().map(crate::server::convert::drop_json).collect::<Vec<_>>(),
            });
            writeln!(out, "{v}")?;
        }
        ReportFormat::Csv => {}
    }
    Ok(())
}

pub async fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let client = meterd_proto::client::Client::connect(&args.target, Duration::from_secs(3)).await?;
    let mut stream = client.admin().report_stream(args.request()).await?.into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut header_done = false;
    while let Some(msg) = stream.message().await? {
        let Some(c) = msg.chunk else { continue };
        if let v1::report_chunk::Chunk::Trailer(t) = &c {
            let totals = totals_from_wire(t.totals.clone().unwrap_or_default());
            write_trailer(&mut out, args.format, args.rows, t, &totals)?;
            out.flush()?;
            if !t.consistent {
                eprintln!(
                    "meterd report: a seal, compaction or tenant mapping moved usage while the rows streamed: a row \
                     above may count usage another row also counts, or miss some. Run it again."
                );
                return Ok(ExitCode::from(EXIT_INCONSISTENT));
            }
            return Ok(ExitCode::from(crate::report::exit_code(&totals)));
        }
        write_chunk(&mut out, args.format, args.rows, &mut header_done, &c)?;
    }
    out.flush()?;
    anyhow::bail!("the report stream ended without its totals (the agent stopped?)")
}
