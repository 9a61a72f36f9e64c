//! Store v2 → v3: a store whose values are postcard of Rust structs (made here from a store this build wrote,
//! with the frozen v2 encoder `store::migrate::v2`) opens, every value is rewritten in its explicit stored layout
//! and comes back byte for byte as this build wrote it, and a SIGKILL between two chunks of the conversion is
//! finished by the next open.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use meterd::config::LateUsage::Carry;
use meterd::domain::customer::TenantMapping;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::lifecycle::{LifecycleEvent, LifecycleKind, Subject};
use meterd::domain::quantity::Micros;
use meterd::domain::record::{RecordState, RejectReason};
use meterd::store::{SealParams, SealProgress, Store, keys, migrate, schema};

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_790_000_000_000 / HOUR * HOUR;
const ARN: &str = "arn:aws:license-manager::111122223333:license:l-0001";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn open(dir: &Path) -> Store {
    Store::open_with_cache(dir, 16 << 20).unwrap()
}

fn raw(dir: &Path) -> sled::Db {
    meterd::store::open_sled(&dir.join("sled"), 16 << 20).unwrap()
}

fn aws() -> Identity {
    Identity::Aws { account_id: "111122223333".into(), license_arn: ARN.into() }
}

fn ev(key: String, who: Identity, dimension: &str, micros: u128, at_ms: i64) -> UsageEvent {
    UsageEvent {
        idempotency_key: key,
        product: "p".into(),
        identity: who,
        dimension: dimension.into(),
        quantity: Micros(micros),
        timestamp_ms: Some(at_ms),
        tags: if micros.is_multiple_of(2) {
            TagSet::from([("env".to_string(), "prod".to_string())])
        } else {
            TagSet::new()
        },
    }
}

fn seal_before(hour_ms: i64) -> SealParams {
    SealParams {
        cutoff_hour_ms: hour_ms,
        now_ms: hour_ms,
        window_ms: 24 * HOUR,
        product_windows_ms: Default::default(),
        margin_ms: 0,
        zero_records: false,
    }
}

/// Every key and value of a closed store's default tree, but the journal mark: the migration to v4 writes the
/// journal anew, so its mark names other records (`tests/dedupe.rs` checks the keys themselves).
fn snapshot(dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    raw(dir)
        .iter()
        .map(|kv| kv.unwrap())
        .filter(|(k, _)| k != keys::JOURNAL_MARK_KEY)
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn schema_version(db: &sled::Db) -> u32 {
    u32::from_be_bytes(db.get(keys::SCHEMA_VERSION_KEY).unwrap().unwrap().as_ref().try_into().unwrap())
}

/// A store with a value of every family v2 kept as postcard (sealed records in several states, carries, open
/// buckets, a tenant mapping, a customer's lifecycle, compacted and lost totals, the queue's totals, a seal's
/// progress and watermark), plus `bulk` open buckets; returns its default tree as this build wrote it.
fn build(dir: &Path, bulk: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    rt().block_on(async {
        let store = open(dir);
        let mut first = Vec::new();
        for h in 0..2 {
            let at = T0 + h * HOUR + 1;
            first.push(ev(format!("a{h}"), Identity::Tenant("t1".into()), "d", 2_500_000, at));
            first.push(ev(format!("b{h}"), aws(), "d", 3_000_001, at));
            first.push(ev(format!("c{h}"), Identity::Legacy { customer_identifier: "c".into() }, "e", 1_250_000, at));
            first.push(ev(format!("t{h}"), Identity::Tenant("t2".into()), "d", 4_000_000, at));
        }
        store.ingest(first, T0 + HOUR + 5, Carry).await.unwrap();
        let license = LifecycleEvent {
            kind: LifecycleKind::Active,
            subject: Subject::License { license_arn: ARN.into(), account_id: Some("111122223333".into()) },
            agreement_id: Some("agmt-1".into()),
            product_code: Some("pc".into()),
            event_id: Some("e1".into()),
            source_type: "License Updated".into(),
        };
        store.apply_lifecycle(license, seal_before(T0)).await.unwrap();
        let mapping = TenantMapping {
            tenant_id: "t1".into(),
            product: "p".into(),
            identity: aws(),
            agreement_id: Some("agmt-1".into()),
            updated_at_ms: T0 + HOUR + 10,
        };
        store.put_mapping(mapping, T0 + HOUR + 10).await.unwrap();
        store.seal(seal_before(T0 + 2 * HOUR)).await.unwrap();
        let records = store.records().unwrap();
        assert!(records.len() >= 6, "{records:?}");
        let mut updated = Vec::new();
        for (i, r) in records.into_iter().enumerate() {
            let at_ms = T0 + 2 * HOUR + i as i64;
            let state = match i % 4 {
                0 => RecordState::Accepted {
                    metering_record_id: Some(format!("m-{i}")),
                    aws_request_id: Some("req".into()),
                    at_ms,
                    verify: false,
                },
                1 => RecordState::Rejected { reason: RejectReason::DuplicateRecord, aws_request_id: None, at_ms },
                2 => RecordState::InFlight { attempts: 2, next_attempt_ms: at_ms + 1 },
                _ => continue,
            };
            updated.push(meterd::domain::record::SealedRecord { state, ..r });
        }
        store.update_records(updated).await.unwrap();
        store.compact(T0 + HOUR).await.unwrap();
        let bulk: Vec<UsageEvent> = (0..bulk)
            .map(|i| ev(format!("k{i}"), aws(), &format!("dim{i:06}"), 1 + i as u128, T0 + 3 * HOUR + 1))
            .collect();
        for chunk in bulk.chunks(1000) {
            store.ingest(chunk.to_vec(), T0 + 3 * HOUR + 2, Carry).await.unwrap();
        }
        store.close().await.unwrap();
    });
    {
        // A seal under way (its watermark already at the target: the state after its first chunk).
        let db = raw(dir);
        let progress = SealProgress { cutoff_ms: T0 + 2 * HOUR, resume_key: keys::BUCKET_PREFIX.to_vec() };
        db.insert(keys::SEAL_PROGRESS_KEY, schema::encode(&progress)).unwrap();
        db.flush().unwrap();
    }
    let written = snapshot(dir);
    for f in FAMILIES {
        assert!(written.keys().any(|k| k.starts_with(f)), "no {} value to migrate", String::from_utf8_lossy(f));
    }
    written
}

/// Every key family store v2 kept as postcard of a Rust struct (listed here apart from the migration's own table,
/// so a family the migration forgot fails the tests).
const FAMILIES: [&[u8]; 10] = [
    keys::BUCKET_PREFIX,
    keys::RECORD_PREFIX,
    keys::CARRY_PREFIX,
    keys::TENANT_PREFIX,
    keys::LIFECYCLE_PREFIX,
    keys::COMPACTED_KEY,
    keys::LOST_KEY,
    keys::PENDING_KEY,
    keys::SEAL_PROGRESS_KEY,
    keys::SEALED_THROUGH_KEY,
];

/// Rewrites the closed store in `dir` as meterd with store v2 left it; returns how many values changed.
fn make_v2(dir: &Path) -> u64 {
    let db = raw(dir);
    migrate::journal_into_trees(&db, dir, meterd::store::DEFAULT_DEDUPE_KEEP_MS).unwrap();
    let n = migrate::v2::rewrite_as_v2(&db).unwrap();
    assert_eq!(schema_version(&db), 2);
    n
}

#[test]
fn a_v2_store_opens_converted_and_keeps_every_value() {
    let d = tempfile::tempdir().unwrap();
    let written = build(d.path(), 50);
    let n = make_v2(d.path());
    let v2 = snapshot(d.path());
    for (k, v) in &written {
        let family = FAMILIES.iter().any(|f| k.starts_with(f));
        let same = v2.get(k) == Some(v);
        assert!(same != family || k == keys::SCHEMA_VERSION_KEY, "{}: v2 layout {}", String::from_utf8_lossy(k), !same);
    }
    let converted = written.keys().filter(|k| FAMILIES.iter().any(|f| k.starts_with(f))).count();
    assert_eq!(n, converted as u64);
    rt().block_on(async {
        let store = open(d.path());
        assert!(store.lost().unwrap().records > 0 && store.compacted().unwrap().records > 0);
        assert!(!store.records().unwrap().is_empty() && !store.carries().unwrap().is_empty());
        assert!(!store.lifecycles().unwrap().is_empty() && !store.mappings().unwrap().is_empty());
        store.close().await.unwrap();
    });
    assert_eq!(snapshot(d.path()), written, "every key and value as this build wrote it");
    assert_eq!(schema_version(&raw(d.path())), meterd::store::SCHEMA_VERSION);
}

#[test]
fn a_v2_spool_keeps_its_outbox() {
    let d = tempfile::tempdir().unwrap();
    let options = meterd::store::StoreOptions {
        cache_bytes: 16 << 20,
        min_free: meterd::store::space::MinFree::Bytes(0),
        seal_chunk: meterd::store::SEAL_CHUNK_BUCKETS,
        dedupe_keep_ms: meterd::store::DEFAULT_DEDUPE_KEEP_MS,
        stuck_after: Some(meterd::store::watch::DEFAULT_STUCK_AFTER),
    };
    let events: Vec<UsageEvent> =
        (0..20).map(|i| ev(format!("o{i}"), aws(), "d", 1_000_000 + i as u128, T0 + i as i64)).collect();
    let before = rt().block_on(async {
        let store = Store::open_spool(d.path(), options).unwrap();
        store.ingest(events, T0 + 100, Carry).await.unwrap();
        let page = store.outbox_page(100).unwrap();
        store.close().await.unwrap();
        page.entries
    });
    assert_eq!(before.len(), 20);
    let written = snapshot(d.path());
    let n = make_v2(d.path());
    let outbox = written.keys().filter(|k| k.starts_with(meterd::store::outbox::OUTBOX_PREFIX)).count();
    assert!(n as usize > outbox, "the outbox entries were rewritten too");
    assert!(snapshot(d.path()).iter().filter(|(k, _)| k.starts_with(b"o/")).all(|(_, v)| v[0] == 1));
    rt().block_on(async {
        let store = Store::open_spool(d.path(), options).unwrap();
        assert_eq!(store.outbox_page(100).unwrap().entries, before);
        store.close().await.unwrap();
    });
    // Every other value as this build wrote it; the outbox as store v3 converts it (one entry per key, encoding
    // 2), which this build reads as blocks of one (the page above).
    let outside = |m: std::collections::BTreeMap<Vec<u8>, Vec<u8>>| {
        m.into_iter().filter(|(k, _)| !k.starts_with(b"o/")).collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(outside(snapshot(d.path())), outside(written));
}

/// Run as a child process by the SIGKILL test: opens the store named by the environment; after each chunk the
/// migration logs, it waits for a line on stdin, so the parent kills it exactly between two chunks.
#[test]
#[ignore = "child process of the SIGKILL test"]
fn child() {
    let Ok(dir) = std::env::var("SCHEMA_CHILD_DIR") else { return };
    tracing_subscriber::fmt().with_writer(|| Gate).with_ansi(false).init();
    rt().block_on(async {
        let _store = open(Path::new(&dir));
        println!("open");
        std::future::pending::<()>().await;
    });
}

/// stdout that holds the writing thread after a migration chunk's line until the parent answers.
struct Gate;

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout();
        out.write_all(buf)?;
        out.flush()?;
        if String::from_utf8_lossy(buf).contains("values rewritten") {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

#[test]
fn a_conversion_killed_between_chunks_is_finished_by_the_next_open() {
    // 25,000 open buckets and the rest: three chunks of at most 10,000 values.
    let built = tempfile::tempdir().unwrap();
    let written = build(built.path(), 25_000);
    make_v2(built.path());
    for chunks in [1usize, 2] {
        let d = tempfile::tempdir().unwrap();
        let copied =
            std::process::Command::new("cp").arg("-a").arg(built.path().join(".")).arg(d.path()).status().unwrap();
        assert!(copied.success());
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("SCHEMA_CHILD_DIR", d.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut seen = 0;
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            assert_ne!(line, "open", "the migration finished before chunk {chunks}");
            if line.contains("values rewritten") {
                seen += 1;
                if seen == chunks {
                    break;
                }
                writeln!(stdin).unwrap();
            }
        }
        assert_eq!(seen, chunks);
        // The child is held right after chunk `chunks` was written and flushed, before the next one starts.
        child.kill().unwrap();
        child.wait().unwrap();
        {
            let db = raw(d.path());
            assert_eq!(schema_version(&db), 2, "killed after chunk {chunks}: the version moves last");
            assert!(db.get(migrate::V3_PROGRESS_KEY).unwrap().is_some(), "killed after chunk {chunks}");
        }
        rt().block_on(async {
            let store = open(d.path());
            assert_eq!(store.buckets().unwrap().len(), written.keys().filter(|k| k.starts_with(b"b/")).count());
            store.close().await.unwrap();
        });
        let after = snapshot(d.path());
        assert!(after == written, "killed after chunk {chunks}: not every value came back as written");
        assert_eq!(schema_version(&raw(d.path())), meterd::store::SCHEMA_VERSION);
    }
}
