//! Start-up honesty: a data dir that held a store never silently opens as an empty one (a power loss that
//! took the store's files, a deleted generation, an emptied sled config), and a fresh or pre-marker data dir
//! opens as before.

use std::path::Path;

use meterd::config::LateUsage::Carry;
use meterd::domain::event::{Identity, TagSet, UsageEvent};
use meterd::domain::quantity::Micros;
use meterd::store::{MARKER_FILE, Store, StoreError};

const T0: i64 = 1_790_000_000_000 / 3_600_000 * 3_600_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A store holding one event, closed.
fn store_with_one_event(dir: &Path) {
    rt().block_on(async {
        let store = Store::open(dir).unwrap();
        let e = UsageEvent {
            idempotency_key: "k".into(),
            product: "p".into(),
            identity: Identity::Tenant("t".into()),
            dimension: "d".into(),
            quantity: Micros(1_000_000),
            timestamp_ms: None,
            tags: TagSet::new(),
        };
        store.ingest(vec![e], T0, Carry).await.unwrap();
        store.close().await.unwrap();
    });
}

fn open_err(dir: &Path) -> StoreError {
    match Store::open(dir) {
        Ok(_) => panic!("a data dir that lost its store opened as an empty store"),
        Err(e) => e,
    }
}

#[test]
fn a_new_data_dir_gets_a_marker_and_reopens() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("a/b/data");
    store_with_one_event(&dir);
    assert!(std::fs::read_to_string(dir.join(MARKER_FILE)).unwrap().contains("created_at_ms="));
    rt().block_on(async {
        let store = Store::open(&dir).unwrap();
        assert!(store.event("k").unwrap().is_some());
        store.close().await.unwrap();
    });
}

#[test]
fn a_missing_generation_is_refused_and_nothing_is_created_in_its_place() {
    let d = tempfile::tempdir().unwrap();
    store_with_one_event(d.path());
    std::fs::remove_dir_all(d.path().join("sled")).unwrap();
    let e = open_err(d.path());
    assert!(matches!(e, StoreError::Missing(_)), "{e}");
    assert!(e.to_string().contains("is missing") && e.to_string().contains("Refusing"), "{e}");
    assert!(!d.path().join("sled").exists(), "the refusal wrote a fresh store");
}

#[test]
fn an_empty_sled_config_or_log_is_refused() {
    for file in ["conf", "db"] {
        let d = tempfile::tempdir().unwrap();
        store_with_one_event(d.path());
        std::fs::File::create(d.path().join("sled").join(file)).unwrap();
        let e = open_err(d.path());
        assert!(e.to_string().contains(&format!("{file} is empty")), "{e}");
    }
}

#[test]
fn a_lost_current_file_is_refused_instead_of_deleting_the_live_generation() {
    let d = tempfile::tempdir().unwrap();
    store_with_one_event(d.path());
    rt().block_on(async {
        let store = Store::open(d.path()).unwrap();
        store.repack().await.unwrap();
        store.close().await.unwrap();
    });
    assert!(d.path().join("sled-1").is_dir());
    std::fs::remove_file(d.path().join("CURRENT")).unwrap();
    let e = open_err(d.path());
    assert!(matches!(e, StoreError::Missing(_)), "{e}");
    assert!(d.path().join("sled-1").is_dir(), "the live generation was deleted");
}

#[test]
fn a_store_made_before_the_marker_existed_opens_and_gets_one() {
    let d = tempfile::tempdir().unwrap();
    store_with_one_event(d.path());
    std::fs::remove_file(d.path().join(MARKER_FILE)).unwrap();
    rt().block_on(async {
        let store = Store::open(d.path()).unwrap();
        assert!(store.event("k").unwrap().is_some());
        store.close().await.unwrap();
    });
    assert!(d.path().join(MARKER_FILE).exists());
}
