//! `meterd verify --cloudtrail PATH…`: the third layer of proof. meterd's ledger says what AWS accepted; the
//! account's CloudTrail says what AWS was actually asked and answered. This reads CloudTrail's metering
//! events ([`trail`]), takes the agent's report over the Admin API, and lists every difference
//! ([`matching`]): records meterd holds as accepted that CloudTrail does not show, metering calls meterd did
//! not make, and quantities that differ. Exit status 3 on any difference.

pub mod cli;
pub mod matching;
pub mod trail;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use matching::{Verification, Window};

/// Exit status when any discrepancy is found.
pub const EXIT_DISCREPANCY: u8 = 3;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub cloudtrail: Vec<PathBuf>,
    pub target: String,
    pub format: OutputFormat,
    pub window: Window,
}

pub async fn run(o: Options) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!o.cloudtrail.is_empty(), "give at least one --cloudtrail PATH");
    let trail = trail::Trail::read(&o.cloudtrail)?;
    let client = meterd_proto::client::Client::connect(&o.target, Duration::from_secs(3)).await?;
    let report = client.admin().report(meterd_proto::v1::ReportRequest {}).await?.into_inner();
    let v = matching::verify(&report, &trail, o.window);
    match o.format {
        OutputFormat::Table => print!("{}", to_table(&v)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        OutputFormat::Csv => print!("{}", to_csv(&v)?),
    }
    Ok(if v.reconciled { ExitCode::SUCCESS } else { ExitCode::from(EXIT_DISCREPANCY) })
}

pub fn to_table(v: &Verification) -> String {
    let s = &v.summary;
    let mut out = format!(
        "CloudTrail: {} file(s), {} event(s): {} BatchMeterUsage and {} MeterUsage call(s) ({} failed, nothing \
         billed), {} usage record(s), {} Success; events {} .. {}\n\
         meterd: {} record(s) accepted\n\
         matched {}, confirmed in flight {}, missing {}, foreign {}, mismatched {}: {}\n",
        s.files,
        s.events,
        s.batch_meter_usage_calls,
        s.meter_usage_calls,
        s.failed_calls,
        s.trail_records,
        s.trail_success,
        if s.first_event.is_empty() { "-" } else { &s.first_event },
        if s.last_event.is_empty() { "-" } else { &s.last_event },
        s.meterd_accepted,
        s.matched,
        s.confirmed_in_flight,
        s.missing,
        s.foreign,
        s.mismatched,
        if v.reconciled { "RECONCILED" } else { "DISCREPANCIES" },
    );
    if !v.discrepancies.is_empty() {
        out.push_str(&format!(
            "\n{:<9} {:<24} {:<16} {:<40} {:<16} {:>8} {:>10}  {:<36}  {}\n",
            "kind", "hour", "product", "customer", "dimension", "meterd", "cloudtrail", "metering_record_id", "detail"
        ));
        let q = |x: Option<u64>| x.map_or("-".to_string(), |q| q.to_string());
        for d in &v.discrepancies {
            out.push_str(&format!(
                "{:<9} {:<24} {:<16} {:<40} {:<16} {:>8} {:>10}  {:<36}  {}\n",
                d.kind,
                d.hour,
                if d.product.is_empty() { "-" } else { &d.product },
                d.customer,
                d.dimension,
                q(d.meterd_quantity),
                q(d.cloudtrail_quantity),
                if d.metering_record_id.is_empty() { "-" } else { &d.metering_record_id },
                d.detail
            ));
        }
    }
    out
}

pub fn to_csv(v: &Verification) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "kind",
        "hour",
        "product",
        "customer",
        "dimension",
        "meterd_quantity",
        "cloudtrail_quantity",
        "metering_record_id",
        "status",
        "event_id",
        "event_time",
        "field",
        "detail",
    ])?;
    let q = |x: Option<u64>| x.map_or(String::new(), |q| q.to_string());
    for d in &v.discrepancies {
        w.write_record([
            d.kind,
            &d.hour,
            &d.product,
            &d.customer,
            &d.dimension,
            &q(d.meterd_quantity),
            &q(d.cloudtrail_quantity),
            &d.metering_record_id,
            &d.status,
            &d.event_id,
            &d.event_time,
            &d.field,
            &d.detail,
        ])?;
    }
    Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?)
}

#[cfg(test)]
mod tests {
    use super::matching::{Discrepancy, Summary, Verification};
    use super::*;

    fn sample() -> Verification {
        let d = Discrepancy {
            kind: "foreign",
            hour: "2026-11-29T10:00:00.000Z".into(),
            product: String::new(),
            customer: "aws:111122223333/arn:aws:license-manager::111122223333:license:l-1".into(),
            dimension: "api_calls".into(),
            meterd_quantity: None,
            cloudtrail_quantity: Some(7),
            metering_record_id: "m-9".into(),
            status: "Success".into(),
            event_id: "e-1".into(),
            event_time: "2026-11-29T11:00:00Z".into(),
            field: String::new(),
            detail: "AWS billed usage meterd never sent, \"quoted\"".into(),
        };
        Verification {
            reconciled: false,
            summary: Summary { foreign: 1, matched: 2, meterd_accepted: 2, ..Default::default() },
            discrepancies: vec![d],
        }
    }

    #[test]
    fn the_table_has_the_counts_and_one_line_per_discrepancy() {
        let t = to_table(&sample());
        assert!(
            t.contains("matched 2, confirmed in flight 0, missing 0, foreign 1, mismatched 0: DISCREPANCIES"),
            "{t}"
        );
        let line = t.lines().find(|l| l.starts_with("foreign")).unwrap();
        assert!(line.contains("m-9") && line.contains("-   ") && line.contains(" 7 "), "{line}");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let c = to_csv(&sample()).unwrap();
        let mut r = csv::Reader::from_reader(c.as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0][0], "foreign");
        assert_eq!(&rows[0][6], "7");
        assert_eq!(&rows[0][12], "AWS billed usage meterd never sent, \"quoted\"");
    }
}
