//! The durability model seen through std::fs on a real mount. Needs root and /dev/fuse.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{create_durable, fsync_dir, mount};

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn write_without_fsync_is_lost() {
    let mut m = mount();
    let path = m.join("f");
    let mut f = create_durable(&path);
    f.write_all(b"not durable").unwrap();
    drop(f);
    assert_eq!(read(&path), b"not durable");

    let dropped = m.power_loss().unwrap();
    assert_eq!(read(&path), b"", "the file exists durably but its unsynced data must be gone");
    assert_eq!(dropped.files_with_lost_data, 1);
    assert_eq!(dropped.bytes_lost, 11);
    assert_eq!(dropped.entries_reverted, 0);
}

#[test]
fn fsync_and_fdatasync_make_data_and_size_durable() {
    let mut m = mount();
    let (a, b) = (m.join("all"), m.join("data"));
    let mut fa = create_durable(&a);
    fa.write_all(b"synced with fsync").unwrap();
    fa.sync_all().unwrap();
    // fdatasync must persist the size growth too, or the data could not be read back.
    let fb = create_durable(&b);
    fb.write_all_at(&[5; 10_000], 0).unwrap();
    fb.sync_data().unwrap();
    // Writes after the last sync are lost, including a size change.
    fb.write_all_at(b"later", 20_000).unwrap();
    fa.set_len(3).unwrap();
    drop((fa, fb));

    m.power_loss().unwrap();
    assert_eq!(read(&a), b"synced with fsync");
    assert_eq!(read(&b), vec![5; 10_000]);
    assert_eq!(fs::metadata(&b).unwrap().len(), 10_000);
}

#[test]
fn sync_file_range_is_not_durable() {
    let mut m = mount();
    let path = m.join("log");
    let f = create_durable(&path);
    f.write_all_at(&[1; 8192], 0).unwrap();
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open descriptor.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 8192, flags) };
    assert_eq!(rc, 0, "sync_file_range: {}", io::Error::last_os_error());
    drop(f);
    let fsyncs = m.stats().fsyncs;

    let dropped = m.power_loss().unwrap();
    assert_eq!(m.stats().fsyncs, fsyncs, "sync_file_range must not reach the filesystem as an fsync");
    assert_eq!(read(&path), b"", "data 'synced' with sync_file_range only must not survive a power loss");
    assert_eq!(dropped.bytes_lost, 8192);
}

#[test]
fn new_file_in_unsynced_directory_vanishes() {
    let mut m = mount();
    // A file fsynced in a directory that is itself fsynced, but whose parent (the root) is not.
    fs::create_dir(m.join("d")).unwrap();
    let mut f = File::create(m.join("d/f")).unwrap();
    f.write_all(b"synced data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(&m.join("d"));

    let dropped = m.power_loss().unwrap();
    assert!(!m.join("d").exists(), "d was never made durable in the root");
    assert_eq!(dropped.entries_reverted, 1);
    assert_eq!(dropped.inodes_dropped, 2);

    // The same with the root fsynced but not d: d exists, empty.
    fs::create_dir_all(m.join("d/e")).unwrap();
    File::create(m.join("d/e/f")).unwrap().sync_all().unwrap();
    fsync_dir(&m.join("d/e"));
    fsync_dir(m.path());
    m.power_loss().unwrap();
    assert!(m.join("d").is_dir());
    assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), 0);

    // Every directory on the way fsynced: everything stays.
    fs::create_dir_all(m.join("d/e")).unwrap();
    let mut f = File::create(m.join("d/e/f")).unwrap();
    f.write_all(b"synced data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    for dir in ["d/e", "d", ""] {
        fsync_dir(&m.join(dir));
    }
    let dropped = m.power_loss().unwrap();
    assert_eq!(read(&m.join("d/e/f")), b"synced data");
    assert_eq!((dropped.entries_reverted, dropped.bytes_lost), (0, 0));
}

/// The classic atomic replace: write a temp file, fsync it, rename it over the old one.
fn replace_conf(m: &common::Mounted, content: &[u8]) {
    let tmp = m.join("conf.tmp");
    let mut f = File::create(&tmp).unwrap();
    f.write_all(content).unwrap();
    f.sync_all().unwrap();
    fs::rename(&tmp, m.join("conf")).unwrap();
}

#[test]
fn rename_over_existing_file_reverts_without_directory_fsync() {
    let mut m = mount();
    let conf = m.join("conf");
    let mut f = create_durable(&conf);
    f.write_all(b"old").unwrap();
    f.sync_all().unwrap();
    drop(f);

    replace_conf(&m, b"new");
    assert_eq!(read(&conf), b"new");
    let dropped = m.power_loss().unwrap();
    assert_eq!(read(&conf), b"old", "the rename was not durable: the old file must come back");
    assert!(!m.join("conf.tmp").exists());
    assert_eq!(dropped.entries_reverted, 1);

    replace_conf(&m, b"new");
    fsync_dir(m.path());
    m.power_loss().unwrap();
    assert_eq!(read(&conf), b"new");
}

#[test]
fn unlink_without_directory_fsync_comes_back() {
    let mut m = mount();
    let path = m.join("f");
    let mut f = create_durable(&path);
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" and not").unwrap();
    drop(f);
    fs::remove_file(&path).unwrap();
    assert!(!path.exists());

    m.power_loss().unwrap();
    assert_eq!(read(&path), b"durable");

    fs::remove_file(&path).unwrap();
    fsync_dir(m.path());
    m.power_loss().unwrap();
    assert!(!path.exists());
}

#[test]
fn remount_keep_all_keeps_unsynced_changes() {
    let mut m = mount();
    fs::create_dir_all(m.join("a/b")).unwrap();
    fs::write(m.join("a/b/f"), b"never synced").unwrap();
    let stats = m.stats();
    m.remount_keep_all().unwrap();
    assert_eq!(read(&m.join("a/b/f")), b"never synced");
    assert_eq!(m.stats(), stats, "the counters survive remounts");
    // ... and a later power loss still drops it all.
    m.power_loss().unwrap();
    assert!(!m.join("a").exists());
}

#[test]
fn stats_count_requests() {
    let m = mount();
    let f = create_durable(&m.join("f")); // one fsync, one fsyncdir
    f.write_all_at(b"12345", 0).unwrap();
    f.write_all_at(b"678", 5).unwrap();
    f.sync_data().unwrap();
    let s = m.stats();
    assert_eq!((s.fsyncs, s.fsyncdirs, s.writes, s.bytes_written), (2, 1, 2, 8));
}

#[test]
fn std_fs_operations_work() {
    let m = mount();
    fs::create_dir_all(m.join("x/y/z")).unwrap();
    for i in 0..50 {
        fs::write(m.join(&format!("x/y/z/{i}")), i.to_string()).unwrap();
    }
    fs::write(m.join("x/top"), b"t").unwrap();
    let mut names: Vec<String> =
        fs::read_dir(m.join("x/y/z")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort_by_key(|n| n.parse::<u32>().unwrap());
    assert_eq!(names, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());

    // rename across directories, then of a directory.
    fs::rename(m.join("x/top"), m.join("x/y/z/moved")).unwrap();
    assert_eq!(read(&m.join("x/y/z/moved")), b"t");
    fs::rename(m.join("x/y"), m.join("y2")).unwrap();
    assert!(m.join("y2/z/moved").exists() && !m.join("x/y").exists());
    assert_eq!(fs::metadata(m.join("x")).unwrap().nlink(), 2);

    // Errors come back as the right errno.
    assert_eq!(fs::remove_dir(m.join("y2")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    assert_eq!(fs::remove_file(m.join("y2")).unwrap_err().raw_os_error(), Some(libc::EISDIR));
    assert_eq!(fs::read(m.join("nope")).unwrap_err().kind(), io::ErrorKind::NotFound);

    // RENAME_NOREPLACE.
    fs::write(m.join("a"), b"a").unwrap();
    fs::write(m.join("b"), b"b").unwrap();
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let (a, b) = (c(&m.join("a")), c(&m.join("b")));
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_NOREPLACE) };
    assert_eq!((rc, io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EEXIST)));
    assert_eq!(read(&m.join("b")), b"b");

    fs::remove_dir_all(m.join("y2")).unwrap();
    fs::remove_dir_all(m.join("x")).unwrap();
    let mut left: Vec<_> = fs::read_dir(m.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["a", "b"]);
}

#[test]
fn attributes_seek_and_statfs() {
    let m = mount();
    let path = m.join("f");
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    f.write_all(b"0123456789").unwrap();
    f.seek(SeekFrom::Start(2)).unwrap();
    let mut buf = [0; 3];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"234");
    assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 10);
    f.set_len(4096).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!((meta.len(), meta.nlink(), meta.uid()), (4096, 1, 0));

    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    f.set_modified(when).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), when);

    // fallocate mode 0 grows the file.
    // SAFETY: a valid open descriptor.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 8192) }, 0);
    assert_eq!(fs::metadata(&path).unwrap().len(), 8192);

    // statfs: 4 GiB by default, the file's bytes in use.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(m.path().as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path and out pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_blocks * st.f_frsize, meterd_lazyfs::DEFAULT_CAPACITY);
    assert_eq!((st.f_blocks - st.f_bfree) * st.f_frsize, 8192);
}

#[test]
fn flock_is_handled_by_the_kernel() {
    let m = mount();
    let path = m.join("lock");
    let a = File::create(&path).unwrap();
    let b = File::open(&path).unwrap();
    let lock = |f: &File| unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(lock(&a), 0);
    assert_eq!(lock(&b), -1, "a second open file description must not get the exclusive lock");
    assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EWOULDBLOCK));
    drop(a);
    assert_eq!(lock(&b), 0, "closing the holder releases the lock");
}

#[test]
fn power_loss_with_a_file_still_open_detaches_the_old_mount() {
    let mut m = mount();
    m.set_unmount_patience(Duration::from_millis(100));
    let path = m.join("f");
    let f = create_durable(&path);
    f.write_all_at(b"durable", 0).unwrap();
    f.sync_all().unwrap();

    // f keeps the old mount busy: it is detached lazily and cut off.
    m.power_loss().unwrap();
    assert_eq!(f.write_at(b"zombie", 0).unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(read(&path), b"durable", "the new mount serves the durable state");
    drop(f);
}
