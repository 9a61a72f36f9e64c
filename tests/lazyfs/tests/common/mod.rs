//! Shared helpers of the mount tests: they need root and /dev/fuse, and fail (not skip) without.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::{self, File};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use meterd_lazyfs::LazyFs;
use tempfile::TempDir;

/// A LazyFs mounted in a fresh temp dir; unmounted before the dir is removed.
pub struct Mounted {
    pub fs: LazyFs,
    _dir: TempDir,
}

impl Deref for Mounted {
    type Target = LazyFs;
    fn deref(&self) -> &LazyFs {
        &self.fs
    }
}

impl DerefMut for Mounted {
    fn deref_mut(&mut self) -> &mut LazyFs {
        &mut self.fs
    }
}

impl Mounted {
    pub fn join(&self, rel: &str) -> PathBuf {
        self.fs.path().join(rel)
    }
}

pub fn mount() -> Mounted {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir mnt");
    let fs = LazyFs::mount(&mnt).unwrap_or_else(|e| {
        panic!("mounting LazyFs failed: {e}. These tests need root and /dev/fuse (CI provides both).")
    });
    Mounted { fs, _dir: dir }
}

/// fsync of a directory, as a process does it: open it and fsync the descriptor (FUSE fsyncdir).
pub fn fsync_dir(path: &Path) {
    File::open(path).and_then(|d| d.sync_all()).unwrap_or_else(|e| panic!("fsync dir {}: {e}", path.display()));
}

/// Creates an empty file and makes it durable (file and its directory fsynced), so a test can
/// then look at what happens to its data alone.
pub fn create_durable(path: &Path) -> File {
    let f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    f.sync_all().unwrap();
    fsync_dir(path.parent().unwrap());
    f
}
