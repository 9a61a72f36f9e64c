//! Reading `meterd import` input: CSV with a header, or JSON Lines, one usage event per row, streamed.
//!
//! Columns (CSV header names, JSONL member names), documented in docs/operations.md:
//! `timestamp` (RFC 3339, required), `dimension`, `quantity` (exact decimal text), one customer shape
//! (`tenant_id` | `customer_aws_account_id` + `license_arn` | `customer_identifier` [+ `product_code`]),
//! `product`, `idempotency_key` (or the column named by `--key-column`), tags as `tag:KEY` columns (CSV) or a
//! `tags` object (JSONL).

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use meterd_proto::v1;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::Refusal;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

/// One input row: where it was, what it said (as JSON text, for the refusal file) and what it means.
pub struct Row {
    /// 1-based data row (the CSV header is not a row).
    pub number: u64,
    /// 1-based line where the row starts.
    pub line: u64,
    /// The row as a JSON value's text: CSV cells as an object, a JSONL line as written (or as a string when it
    /// is not JSON).
    pub input: String,
    pub fields: Result<Fields, Refusal>,
}

/// The recognised members of one row, as text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    pub key: Option<String>,
    pub timestamp: Option<String>,
    pub product: Option<String>,
    pub tenant_id: Option<String>,
    pub customer_aws_account_id: Option<String>,
    pub license_arn: Option<String>,
    pub customer_identifier: Option<String>,
    pub product_code: Option<String>,
    pub dimension: Option<String>,
    pub quantity: Option<String>,
    pub tags: BTreeMap<String, String>,
}

const KNOWN: &[&str] = &[
    "timestamp",
    "product",
    "tenant_id",
    "customer_aws_account_id",
    "license_arn",
    "customer_identifier",
    "product_code",
    "dimension",
    "quantity",
];

/// The longest row read; a longer one is refused (`malformed`) rather than buffered without bound.
pub const MAX_ROW_BYTES: usize = 64 * 1024;

impl Fields {
    /// Sets one member by name. Empty values count as absent (an empty CSV cell).
    fn set(&mut self, name: &str, value: String, key_column: &str) -> Result<(), Refusal> {
        if value.is_empty() {
            return Ok(());
        }
        if name == key_column {
            self.key = Some(value);
            return Ok(());
        }
        if let Some(tag) = name.strip_prefix("tag:") {
            self.tags.insert(tag.to_string(), value);
            return Ok(());
        }
        let slot = match name {
            "timestamp" => &mut self.timestamp,
            "product" => &mut self.product,
            "tenant_id" => &mut self.tenant_id,
            "customer_aws_account_id" => &mut self.customer_aws_account_id,
            "license_arn" => &mut self.license_arn,
            "customer_identifier" => &mut self.customer_identifier,
            "product_code" => &mut self.product_code,
            "dimension" => &mut self.dimension,
            "quantity" => &mut self.quantity,
            _ => return Err(unknown_column(name, key_column)),
        };
        *slot = Some(value);
        Ok(())
    }

    /// The wire event and its usage time (ms), or why the row cannot be one.
    pub fn to_event(&self) -> Result<(v1::UsageEvent, i64), Refusal> {
        let ts_text = self.timestamp.as_deref().ok_or_else(|| missing("timestamp"))?;
        let ts = chrono::DateTime::parse_from_rfc3339(ts_text).map_err(|e| {
            Refusal::invalid(
                "timestamp",
                format!(
                    "timestamp: {} is not an RFC 3339 time such as 2026-11-29T10:15:00Z ({e})",
                    crate::domain::echo::echo(ts_text)
                ),
            )
        })?;
        let ms = ts.timestamp_millis();
        let dimension = self.dimension.clone().ok_or_else(|| missing("dimension"))?;
        let quantity = self.quantity.clone().ok_or_else(|| missing("quantity"))?;
        let customer = self.customer()?;
        let key = match &self.key {
            Some(k) => k.clone(),
            None => self.content_key(ms),
        };
        let event = v1::UsageEvent {
            idempotency_key: key,
            customer: Some(v1::Customer { identity: Some(customer) }),
            dimension,
            quantity,
            timestamp: Some(meterd_proto::Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            tags: self.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            product: self.product.clone().unwrap_or_default(),
        };
        Ok((event, ms))
    }

    fn customer(&self) -> Result<v1::customer::Identity, Refusal> {
        use v1::customer::Identity;
        match (
            &self.tenant_id,
            &self.customer_aws_account_id,
            &self.license_arn,
            &self.customer_identifier,
            &self.product_code,
        ) {
            (Some(t), None, None, None, None) => Ok(Identity::TenantId(t.clone())),
            (None, Some(a), Some(l), None, None) => {
                Ok(Identity::AwsAccount(v1::AwsCustomer { customer_aws_account_id: a.clone(), license_arn: l.clone() }))
            }
            (None, None, None, Some(c), p) => Ok(Identity::Legacy(v1::LegacyCustomer {
                customer_identifier: c.clone(),
                product_code: p.clone().unwrap_or_default(),
            })),
            _ => Err(Refusal::invalid(
                "customer",
                "customer: give exactly one of tenant_id, customer_aws_account_id + license_arn, or \
                 customer_identifier (optionally with product_code)"
                    .to_string(),
            )),
        }
    }

    /// A key that is the same for the same usage whatever the file's column order or format: a SHA-256 of the
    /// row's members (length-prefixed, so no two rows collide by moving text between members).
    fn content_key(&self, ts_ms: i64) -> String {
        let mut h = Sha256::new();
        let mut put = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        put("meterd-import-v1");
        for v in [
            &self.product,
            &self.tenant_id,
            &self.customer_aws_account_id,
            &self.license_arn,
            &self.customer_identifier,
            &self.product_code,
            &self.dimension,
            &self.quantity,
        ] {
            put(v.as_deref().unwrap_or(""));
        }
        put(&ts_ms.to_string());
        for (k, v) in &self.tags {
            put(k);
            put(v);
        }
        let digest = h.finalize();
        let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
        format!("row-{hex}")
    }
}

fn missing(field: &str) -> Refusal {
    Refusal::invalid(field, format!("{field}: is required"))
}

fn unknown_column(name: &str, key_column: &str) -> Refusal {
    Refusal::invalid(
        name,
        format!(
            "{}: unknown column (known: {key_column}, {}, tag:KEY)",
            crate::domain::echo::echo(name),
            KNOWN.join(", ")
        ),
    )
}

/// Reads rows one at a time; memory is bounded by one row ([`MAX_ROW_BYTES`]) whatever the input's size.
pub enum Reader<R: Read> {
    Csv { inner: csv::Reader<R>, header: Vec<String>, key_column: String, number: u64 },
    Jsonl { inner: std::io::BufReader<R>, key_column: String, number: u64, line: u64, buf: Vec<u8> },
}

impl<R: Read> Reader<R> {
    /// For CSV, reads and checks the header first: an unknown column fails the whole import before anything is
    /// sent (a misspelt column would otherwise refuse every row).
    pub fn new(input: R, format: Format, key_column: &str) -> anyhow::Result<Self> {
        Ok(match format {
            Format::Csv => {
                let mut inner = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(input);
                let header: Vec<String> = inner
                    .headers()
                    .map_err(|e| anyhow::anyhow!("CSV header: {e}"))?
                    .iter()
                    .map(str::to_string)
                    .collect();
                let mut probe = Fields::default();
                for name in &header {
                    probe
                        .set(name, "x".into(), key_column)
                        .map_err(|r| anyhow::anyhow!("CSV header: {}", r.message))?;
                }
                for required in ["timestamp", "dimension", "quantity"] {
                    anyhow::ensure!(header.iter().any(|h| h == required), "CSV header: no {required:?} column");
                }
                Reader::Csv { inner, header, key_column: key_column.to_string(), number: 0 }
            }
            Format::Jsonl => Reader::Jsonl {
                inner: std::io::BufReader::with_capacity(256 * 1024, input),
                key_column: key_column.to_string(),
                number: 0,
                line: 0,
                buf: Vec::new(),
            },
        })
    }

    /// The next row, `None` at the end, `Err` when the input itself cannot be read (I/O).
    pub fn next_row(&mut self) -> anyhow::Result<Option<Row>> {
        match self {
            Reader::Csv { inner, header, key_column, number } => {
                let mut record = csv::StringRecord::new();
                match inner.read_record(&mut record) {
                    Ok(false) => Ok(None),
                    Ok(true) => {
                        *number += 1;
                        let line = record.position().map_or(0, |p| p.line());
                        if record.as_byte_record().as_slice().len() > MAX_ROW_BYTES {
                            return Ok(Some(Row {
                                number: *number,
                                line,
                                input: "null".into(),
                                fields: Err(Refusal::malformed(format!("row longer than {MAX_ROW_BYTES} bytes"))),
                            }));
                        }
                        Ok(Some(csv_row(*number, line, header, &record, key_column)))
                    }
                    Err(e) => match e.kind() {
                        csv::ErrorKind::Io(_) => Err(anyhow::anyhow!("reading the input: {e}")),
                        // Invalid UTF-8 and the like: this row is refused, the next ones are read.
                        _ => {
                            *number += 1;
                            let line = e.position().map_or(0, |p| p.line());
                            Ok(Some(Row {
                                number: *number,
                                line,
                                input: "null".into(),
                                fields: Err(Refusal::malformed(format!("not a CSV record: {e}"))),
                            }))
                        }
                    },
                }
            }
            Reader::Jsonl { inner, key_column, number, line, buf } => loop {
                buf.clear();
                let n = read_line_bounded(inner, buf)?;
                if n == 0 {
                    return Ok(None);
                }
                *line += 1;
                let too_long = buf.len() > MAX_ROW_BYTES;
                let text = String::from_utf8_lossy(if too_long { &buf[..MAX_ROW_BYTES] } else { buf });
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                *number += 1;
                if too_long {
                    return Ok(Some(Row {
                        number: *number,
                        line: *line,
                        input: "null".into(),
                        fields: Err(Refusal::malformed(format!("row longer than {MAX_ROW_BYTES} bytes"))),
                    }));
                }
                return Ok(Some(jsonl_row(*number, *line, text, key_column)));
            },
        }
    }
}

/// Reads one line into `buf`, keeping at most MAX_ROW_BYTES + 1 bytes of it (the rest is skipped), so a file
/// without newlines cannot exhaust memory. Returns the bytes consumed (0 at the end).
fn read_line_bounded<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(consumed);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_ROW_BYTES + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(take);
        consumed += take;
        if done {
            return Ok(consumed);
        }
    }
}

fn csv_row(number: u64, line: u64, header: &[String], record: &csv::StringRecord, key_column: &str) -> Row {
    let mut input = serde_json::Map::new();
    for (name, value) in header.iter().zip(record.iter()) {
        input.insert(name.clone(), serde_json::Value::String(value.to_string()));
    }
    let input_text = serde_json::Value::Object(input).to_string();
    let fields = if record.len() != header.len() {
        Err(Refusal::malformed(format!("{} cell(s) where the header has {}", record.len(), header.len())))
    } else {
        let mut f = Fields::default();
        header.iter().zip(record.iter()).try_for_each(|(n, v)| f.set(n, v.to_string(), key_column)).map(|()| f)
    };
    Row { number, line, input: input_text, fields }
}

fn jsonl_row(number: u64, line: u64, text: &str, key_column: &str) -> Row {
    // Members are kept as raw JSON so a number such as 12.000001 reaches the agent digit for digit.
    let parsed: Result<BTreeMap<String, Box<RawValue>>, _> = serde_json::from_str(text);
    let Ok(members) = parsed else {
        let why = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(_) => "not a JSON object".to_string(),
            Err(e) => format!("not JSON: {e}"),
        };
        return Row {
            number,
            line,
            input: serde_json::Value::String(text.chars().take(1024).collect()).to_string(),
            fields: Err(Refusal::malformed(why)),
        };
    };
    let mut f = Fields::default();
    let fields = members
        .iter()
        .try_for_each(|(name, raw)| {
            let raw = raw.get();
            if name == "tags" {
                let tags: BTreeMap<String, String> = serde_json::from_str(raw)
                    .map_err(|_| Refusal::invalid("tags", "tags: must be an object of strings".to_string()))?;
                f.tags.extend(tags);
                return Ok(());
            }
            let value = if raw == "null" {
                String::new()
            } else if raw.starts_with('"') {
                serde_json::from_str::<String>(raw)
                    .map_err(|e| Refusal::invalid(name, format!("{name}: not a JSON string: {e}")))?
            } else if name == "quantity" && raw.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                // A JSON number, as written (an exponent or sign is refused by the agent's quantity rules).
                raw.to_string()
            } else {
                return Err(Refusal::invalid(name, format!("{}: must be a string", crate::domain::echo::echo(name))));
            };
            f.set(name, value, key_column)
        })
        .map(|()| f);
    Row { number, line, input: text.to_string(), fields }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(format: Format, text: &str) -> Vec<Row> {
        let mut r = Reader::new(text.as_bytes(), format, "idempotency_key").unwrap();
        let mut out = Vec::new();
        while let Some(row) = r.next_row().unwrap() {
            out.push(row);
        }
        out
    }

    #[test]
    fn csv_and_jsonl_rows_of_the_same_usage_get_the_same_key() {
        let csv = rows(
            Format::Csv,
            "quantity,timestamp,tenant_id,dimension,tag:team\n2.5,2026-11-29T10:15:00Z,t-1,api_calls,blue\n",
        );
        let jsonl = rows(
            Format::Jsonl,
            r#"{"timestamp":"2026-11-29T11:15:00+01:00","tenant_id":"t-1","dimension":"api_calls","quantity":2.5,"tags":{"team":"blue"}}"#,
        );
        let (a, ta) = csv[0].fields.as_ref().unwrap().to_event().unwrap();
        let (b, tb) = jsonl[0].fields.as_ref().unwrap().to_event().unwrap();
        assert_eq!(ta, tb);
        assert_eq!(a, b);
        assert!(a.idempotency_key.starts_with("row-") && a.idempotency_key.len() == 44, "{}", a.idempotency_key);
        // Another quantity is other usage: another key.
        let other = rows(Format::Csv, "timestamp,tenant_id,dimension,quantity\n2026-11-29T10:15:00Z,t-1,api_calls,3\n");
        assert_ne!(other[0].fields.as_ref().unwrap().to_event().unwrap().0.idempotency_key, a.idempotency_key);
    }

    #[test]
    fn a_key_column_is_used_as_given() {
        let r = rows(
            Format::Csv,
            "idempotency_key,timestamp,tenant_id,dimension,quantity\nk-1,2026-11-29T10:15:00Z,t,d,1\n,2026-11-29T10:15:00Z,t,d,1\n",
        );
        assert_eq!(r[0].fields.as_ref().unwrap().to_event().unwrap().0.idempotency_key, "k-1");
        // An empty cell falls back to the row's hash.
        assert!(r[1].fields.as_ref().unwrap().to_event().unwrap().0.idempotency_key.starts_with("row-"));
    }

    #[test]
    fn jsonl_numbers_reach_the_agent_digit_for_digit() {
        let r = rows(
            Format::Jsonl,
            r#"{"timestamp":"2026-11-29T10:15:00Z","tenant_id":"t","dimension":"d","quantity":2147483647.000001}"#,
        );
        assert_eq!(r[0].fields.as_ref().unwrap().to_event().unwrap().0.quantity, "2147483647.000001");
    }

    #[test]
    fn each_bad_row_is_refused_with_its_field_and_the_rest_are_read() {
        let text = concat!(
            "{\"timestamp\":\"yesterday\",\"tenant_id\":\"t\",\"dimension\":\"d\",\"quantity\":\"1\"}\n",
            "not json\n",
            "[1,2]\n",
            "\n",
            "{\"timestamp\":\"2026-11-29T10:15:00Z\",\"dimension\":\"d\",\"quantity\":\"1\"}\n",
            "{\"timestamp\":\"2026-11-29T10:15:00Z\",\"tenant_id\":\"t\",\"quantity\":\"1\"}\n",
            "{\"timestamp\":\"2026-11-29T10:15:00Z\",\"tenant_id\":\"t\",\"dimension\":\"d\",\"quantity\":\"1\",\"colour\":\"red\"}\n",
            "{\"timestamp\":\"2026-11-29T10:15:00Z\",\"tenant_id\":\"t\",\"dimension\":\"d\",\"quantity\":\"1\",\"tags\":[1]}\n",
            "{\"timestamp\":\"2026-11-29T10:15:00Z\",\"tenant_id\":\"t\",\"license_arn\":\"a\",\"dimension\":\"d\",\"quantity\":\"1\"}\n",
            "{\"timestamp\":\"2026-11-29T10:15:00Z\",\"tenant_id\":\"t\",\"dimension\":\"d\",\"quantity\":\"1\"}\n",
        );
        let r = rows(Format::Jsonl, text);
        let outcome: Vec<(u64, u64, String)> = r
            .iter()
            .map(|row| {
                let what = match row.fields.clone().and_then(|f| f.to_event()) {
                    Err(e) => format!("{}:{}", e.reason, e.field),
                    Ok(_) => "ok".into(),
                };
                (row.number, row.line, what)
            })
            .collect();
        assert_eq!(
            outcome,
            vec![
                (1, 1, "invalid:timestamp".into()),
                (2, 2, "malformed:".into()),
                (3, 3, "malformed:".into()),
                (4, 5, "invalid:customer".into()),
                (5, 6, "invalid:dimension".into()),
                (6, 7, "invalid:colour".into()),
                (7, 8, "invalid:tags".into()),
                (8, 9, "invalid:customer".into()),
                (9, 10, "ok".into()),
            ]
        );
    }

    #[test]
    fn csv_header_problems_fail_before_any_row() {
        let e = Reader::new("timestamp,dimension,quantity,colour\n".as_bytes(), Format::Csv, "idempotency_key");
        assert!(e.err().unwrap().to_string().contains("colour"));
        let e = Reader::new("timestamp,dimension\n".as_bytes(), Format::Csv, "idempotency_key");
        assert!(e.err().unwrap().to_string().contains("quantity"));
    }

    #[test]
    fn csv_rows_with_the_wrong_cell_count_are_malformed() {
        let r = rows(Format::Csv, "timestamp,tenant_id,dimension,quantity\n2026-11-29T10:15:00Z,t,d\n\"a,b\",t,d,1\n");
        assert_eq!(r[0].fields.as_ref().err().unwrap().reason, "malformed");
        assert_eq!(r[0].line, 2);
        assert_eq!(r[1].fields.as_ref().unwrap().timestamp.as_deref(), Some("a,b"));
    }

    #[test]
    fn an_overlong_csv_row_is_malformed() {
        let text = format!(
            "timestamp,tenant_id,dimension,quantity\n2026-11-29T10:15:00Z,{},d,1\n2026-11-29T10:15:00Z,t,d,1\n",
            "t".repeat(MAX_ROW_BYTES)
        );
        let r = rows(Format::Csv, &text);
        assert_eq!(r[0].fields.as_ref().err().unwrap().reason, "malformed");
        assert!(r[1].fields.is_ok());
    }

    #[test]
    fn an_endless_line_is_cut_and_refused_not_buffered() {
        let mut text = "x".repeat(MAX_ROW_BYTES * 3);
        text.push('\n');
        text.push_str(r#"{"timestamp":"2026-11-29T10:15:00Z","tenant_id":"t","dimension":"d","quantity":"1"}"#);
        let r = rows(Format::Jsonl, &text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].fields.as_ref().err().unwrap().reason, "malformed");
        assert!(r[1].fields.is_ok());
    }
}
