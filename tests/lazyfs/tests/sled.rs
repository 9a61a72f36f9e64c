//! sled 0.34.7 on LazyFS: `Db::flush` alone does not survive a power loss (it uses
//! sync_file_range), a real fsync of the `db` file and of the directories does.
//!
//! The writer runs in a child process (this test binary re-executed) that is SIGKILLed before the
//! power loss, as in the end-to-end tests: dropping a sled `Db` in-process would fsync the file
//! on the way out and hide the bug.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fsync_dir, mount};

const KEYS: u32 = 1000;
/// Set in the child: the sled directory to write, and whether to fsync after flush.
const DIR_ENV: &str = "LAZYFS_SLED_WRITER_DIR";
const FSYNC_ENV: &str = "LAZYFS_SLED_WRITER_FSYNC";
const READY: &str = "LAZYFS-SLED-WRITER-READY";

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

/// Not a test on its own: the body of the writer process. Without the environment variable (a
/// normal test run) it does nothing.
#[test]
fn writer_process() {
    let Some(dir) = std::env::var_os(DIR_ENV) else { return };
    let dir = Path::new(&dir);
    // No background flusher: its periodic sync_all would make the outcome depend on timing.
    let db = sled::Config::new().path(dir).flush_every_ms(None).open().unwrap();
    for i in 0..KEYS {
        db.insert(i.to_be_bytes(), value(i)).unwrap();
    }
    db.flush().unwrap();
    if std::env::var_os(FSYNC_ENV).is_some() {
        // What sled's flush should do: a real fsync of the log file...
        std::fs::File::open(dir.join("db")).unwrap().sync_all().unwrap();
    }
    // ... and of the directories, so that the files themselves exist after the power loss. Done in
    // both cases, so that the only difference is the db file's fsync.
    fsync_dir(&dir.join("blobs"));
    fsync_dir(dir);
    fsync_dir(dir.parent().unwrap());
    println!("{READY}");
    // Wait to be killed, holding the db open like a running agent.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs the writer in a child process, waits until it has flushed, and SIGKILLs it.
fn write_and_kill(dir: &Path, fsync: bool) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["writer_process", "--exact", "--nocapture", "--test-threads=1"]).env(DIR_ENV, dir);
    if fsync {
        cmd.env(FSYNC_ENV, "1");
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // Not an exact match: libtest prints "test writer_process ... " on the same line first.
    let ready = stdout.lines().map_while(Result::ok).any(|line| line.contains(READY));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(ready, "the writer process exited before flushing: {status}");
}

fn reopen_and_count(dir: &Path) -> u32 {
    let db = sled::Config::new().path(dir).flush_every_ms(None).open().unwrap();
    let mut found = 0;
    for i in 0..KEYS {
        if let Some(v) = db.get(i.to_be_bytes()).unwrap() {
            assert_eq!(v.as_ref(), value(i).as_slice(), "key {i} came back with a wrong value");
            found += 1;
        }
    }
    found
}

#[test]
fn sled_keys_survive_power_loss_with_a_real_fsync() {
    let mut m = mount();
    let dir = m.join("sled");
    write_and_kill(&dir, true);
    let dropped = m.power_loss().unwrap();
    assert_eq!(reopen_and_count(&dir), KEYS, "every flushed and fsynced key must survive ({dropped:?})");
}

#[test]
fn sled_flush_alone_loses_keys_on_power_loss() {
    let mut m = mount();
    let dir = m.join("sled");
    write_and_kill(&dir, false);
    let dropped = m.power_loss().unwrap();
    assert!(dropped.bytes_lost > 0, "the db file's flushed data was never fsynced: {dropped:?}");
    let found = reopen_and_count(&dir);
    eprintln!("flush without fsync: {found} of {KEYS} keys survived the power loss ({dropped:?})");
    assert!(found < KEYS, "sled's flush uses sync_file_range, which is not durable; yet {found} keys survived");
}

/// The control for the test above, in its own mount: opening sled to count would fsync the file
/// when the `Db` is dropped, making a later power loss lose nothing.
#[test]
fn sled_flush_alone_survives_kill_without_power_loss() {
    let mut m = mount();
    let dir = m.join("sled");
    write_and_kill(&dir, false);
    m.remount_keep_all().unwrap();
    assert_eq!(reopen_and_count(&dir), KEYS, "after a kill -9 alone every flushed key is there");
}
