//! Durability on disk: the barriers that make "an OK reply means the event is on disk" true after a power
//! loss, not only after a process crash.
//!
//! sled 0.34's `Db::flush()` ends in `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on Linux: it starts
//! and waits for the write-back of the dirty pages, but it neither persists the file's metadata (its size
//! grows with the log) nor flushes the device's volatile cache, and the man page promises nothing after a
//! crash. Only sled's background thread calls a real `fsync`, every 500 ms. A kill -9 test cannot see the
//! difference (the page cache survives it); a power loss can, and did: acknowledged batches vanished.
//!
//! So every barrier here is `fsync`/`fdatasync`:
//! - [`GenerationFiles::sync`] runs after sled's `flush()` on every group commit: `fdatasync` of sled's log
//!   file (`db`), which also persists its size (the metadata needed to read the data back), then an `fsync` of
//!   the generation's directory and of `blobs/` whenever their entries changed since the last barrier (sled
//!   renames snapshots and creates blob files without syncing their directories), with every new blob file
//!   fsynced first.
//! - Directories are fsynced after anything whose existence matters is created, renamed or deleted
//!   ([`create_dir_all`], [`write_file`], [`sync_dir`]).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// fsync a directory, so the entries created, renamed or removed in it survive a power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and every missing parent (new ones with `mode`), fsyncing the parent of each directory it
/// created: a directory nobody fsynced into its parent can vanish with everything in it.
pub fn create_dir_all(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        at = p.parent();
    }
    for p in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(p) {
            Ok(()) => {}
            // Another process created it meanwhile: it still needs its entry made durable below.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_dir(parent_of(p))?;
    }
    Ok(())
}

fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(q) if !q.as_os_str().is_empty() => q,
        _ => Path::new("."),
    }
}

/// Writes a small metadata file atomically and durably: write a temporary file, fsync it, rename it over
/// `name`, fsync the directory. A crash at any point leaves either the old file or the new one.
pub fn write_file(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// The files of one sled generation that a barrier must cover.
#[derive(Debug)]
pub struct GenerationFiles {
    dir: PathBuf,
    /// sled's log. One descriptor of the inode is enough: fsync covers every write made through any of them.
    log: File,
    /// Directory entries as of the last barrier: `(generation dir, blobs dir)`.
    synced: Mutex<(BTreeSet<String>, BTreeSet<String>)>,
    /// Set by a repack once this generation is fully synced and replaced: its directory may be gone.
    retired: std::sync::atomic::AtomicBool,
}

impl GenerationFiles {
    /// Opens the files of the sled generation in `dir` (sled must have opened it already) and makes the
    /// generation itself durable: its log and config, its directories, and its entry in `parent`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let log = File::options().read(true).write(true).open(dir.join("db"))?;
        let files = GenerationFiles {
            dir: dir.to_path_buf(),
            log,
            synced: Mutex::new(Default::default()),
            retired: Default::default(),
        };
        // sled writes `conf` once, at creation, without an fsync; a store whose conf is lost does not open.
        File::open(dir.join("conf"))?.sync_all()?;
        files.log.sync_all()?;
        files.sync_dirs(true)?;
        sync_dir(parent_of(dir))?;
        Ok(files)
    }

    /// The barrier after `db.flush()`: afterwards everything sled wrote before the flush survives a power loss.
    pub fn sync(&self, db: &sled::Db) -> Result<(), sled::Error> {
        if self.retired.load(std::sync::atomic::Ordering::Acquire) {
            // A flusher that took this generation just before a repack switched away from it: everything written
            // to it was synced by the repack before the switch, and its directory may already be deleted.
            return Ok(());
        }
        db.flush()?;
        // fdatasync, not fsync: it persists the data and the size (the metadata needed to read it back), and
        // skips timestamps. sled's own sync_file_range did neither the size nor the device cache.
        self.log.sync_data()?;
        match self.sync_dirs(false) {
            // Retired while this barrier ran: the repack synced it first, then deleted the directory.
            Err(_) if self.retired.load(std::sync::atomic::Ordering::Acquire) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Marks the generation as replaced after a repack synced it; later barriers on it have nothing to do.
    pub fn retire(&self) {
        self.retired.store(true, std::sync::atomic::Ordering::Release);
    }

    /// fsyncs the generation's directory and `blobs/` when their entries changed since the last barrier
    /// (always when `force`). Listing two small directories costs microseconds; an fsync costs a disk flush.
    fn sync_dirs(&self, force: bool) -> std::io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let blobs_dir = self.dir.join("blobs");
        let blobs = names(&blobs_dir)?;
        if force || blobs != synced.1 {
            // A blob is written with plain writes and never fsynced by sled: sync the new ones first.
            for name in blobs.difference(&synced.1) {
                match File::open(blobs_dir.join(name)) {
                    Ok(f) => f.sync_all()?,
                    // Removed meanwhile (sled garbage-collects blobs): nothing left to make durable.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            sync_dir(&blobs_dir)?;
            synced.1 = blobs;
        }
        let top = names(&self.dir)?;
        if force || top != synced.0 {
            sync_dir(&self.dir)?;
            synced.0 = top;
        }
        Ok(())
    }
}

fn names(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        out.insert(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dir_all_creates_every_missing_level_with_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        create_dir_all(&deep, 0o700).unwrap();
        assert!(deep.is_dir());
        assert_eq!(std::fs::metadata(d.path().join("a/b")).unwrap().permissions().mode() & 0o777, 0o700);
        create_dir_all(&deep, 0o700).unwrap();
    }

    #[test]
    fn write_file_replaces_atomically_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        write_file(d.path(), "MARK", b"one").unwrap();
        write_file(d.path(), "MARK", b"two").unwrap();
        assert_eq!(std::fs::read(d.path().join("MARK")).unwrap(), b"two");
        assert!(!d.path().join("MARK.tmp").exists());
    }

    #[test]
    fn a_generation_barrier_covers_a_new_blob_and_the_directories() {
        let d = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(d.path().join("g")).open().unwrap();
        let files = GenerationFiles::open(&d.path().join("g")).unwrap();
        db.insert(b"k", vec![7u8; 300_000]).unwrap();
        files.sync(&db).unwrap();
        let synced = files.synced.lock().unwrap().clone();
        assert_eq!(synced.0, names(&d.path().join("g")).unwrap());
        assert_eq!(synced.1, names(&d.path().join("g/blobs")).unwrap());
        assert!(!synced.1.is_empty(), "a 300 kB value is stored as a blob file");
    }

    #[test]
    fn a_barrier_on_a_generation_a_repack_replaced_and_deleted_is_not_an_error_but_on_a_live_one_it_is() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("g");
        let db = sled::Config::new().path(&dir).open().unwrap();
        let files = GenerationFiles::open(&dir).unwrap();
        db.insert(b"k", b"v").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(files.sync(&db).is_err(), "a live generation whose directory vanished cannot be called durable");
        files.retire();
        files.sync(&db).unwrap();
    }
}
