//! A LazyFS-style FUSE filesystem for power-loss tests (after Jepsen's LazyFS).
//!
//! Everything lives in memory. The filesystem tracks which writes and directory operations were
//! made durable (fsync/fdatasync of a file, fsync of a directory), and [`LazyFs::power_loss`]
//! drops everything that was not, then remounts. See `README.md` for what is and is not modelled.
//!
//! Mounting needs root (or CAP_SYS_ADMIN) and `/dev/fuse`; no libfuse or fusermount is used.

mod fs;
mod ranges;
pub mod state;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use state::State;
pub use state::{DropStats, Stats};

/// Default capacity reported by statfs and enforced (ENOSPC): 4 GiB.
pub const DEFAULT_CAPACITY: u64 = 4 << 30;

/// How long an unmount retries on EBUSY (a just-killed process may still be closing its files)
/// before it detaches the mount lazily; see [`LazyFs::set_unmount_patience`].
pub const DEFAULT_UNMOUNT_PATIENCE: Duration = Duration::from_secs(3);

/// How long to wait for the FUSE session thread to notice an unmount.
const SESSION_EXIT_PATIENCE: Duration = Duration::from_secs(5);

/// A mounted LazyFS. Dropping it unmounts (and the in-memory content is gone).
pub struct LazyFs {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    unmount_patience: Duration,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs").field("mountpoint", &self.mountpoint).field("stats", &self.stats()).finish()
    }
}

impl LazyFs {
    /// Mounts an empty LazyFS of [`DEFAULT_CAPACITY`] at `mountpoint`, an existing empty directory.
    pub fn mount(mountpoint: &Path) -> io::Result<LazyFs> {
        Self::mount_with_capacity(mountpoint, DEFAULT_CAPACITY)
    }

    /// Like [`LazyFs::mount`] with a capacity in bytes (statfs reports it; writes past it fail
    /// with ENOSPC).
    pub fn mount_with_capacity(mountpoint: &Path, capacity: u64) -> io::Result<LazyFs> {
        if !Path::new("/dev/fuse").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "/dev/fuse is missing: LazyFs needs the fuse kernel module and root \
                 (in a container: --device /dev/fuse --cap-add SYS_ADMIN)",
            ));
        }
        let mountpoint = mountpoint.canonicalize()?;
        if !mountpoint.is_dir() || mountpoint.read_dir()?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("LazyFs mountpoint {} must be an existing empty directory", mountpoint.display()),
            ));
        }
        let mut fs = LazyFs {
            mountpoint,
            state: Arc::new(Mutex::new(State::new(capacity))),
            session: None,
            unmount_patience: DEFAULT_UNMOUNT_PATIENCE,
        };
        fs.start()?;
        Ok(fs)
    }

    /// Where the filesystem is mounted (canonical path).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// How long an unmount (power loss, remount, drop) retries while the mount is busy before it
    /// detaches it lazily. Files still open then fail with EIO instead of reaching the new mount.
    pub fn set_unmount_patience(&mut self, patience: Duration) {
        self.unmount_patience = patience;
    }

    /// A device whose syncs hang (`true`) or work again (`false`): while stalled, fsync and fdatasync do not
    /// return, and since the session serves one request at a time, neither does anything after them.
    pub fn stall_syncs(&self, stalled: bool) {
        self.lock().syncs_stalled = stalled;
    }

    /// Counters since the first mount.
    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }

    /// Simulates a power loss. Every process writing to the filesystem must already be dead (the
    /// caller SIGKILLs them first) and every file of it closed.
    ///
    /// Cuts the current mount off at once (requests still in flight fail with EIO), unmounts it so
    /// the kernel forgets every cache, drops every write and directory operation that was not made
    /// durable, and remounts the surviving state at the same path.
    pub fn power_loss(&mut self) -> io::Result<DropStats> {
        self.cut_off();
        self.unmount()?;
        let dropped = self.lock().power_loss();
        self.start()?;
        Ok(dropped)
    }

    /// The control experiment: unmount and remount keeping everything, durable or not — what a
    /// process crash (kill -9) leaves, since the OS page cache survives it.
    pub fn remount_keep_all(&mut self) -> io::Result<()> {
        self.cut_off();
        self.unmount()?;
        self.lock().close_all();
        self.start()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the current mount refuse every further request: the instant of the "power cut".
    fn cut_off(&self) {
        self.lock().epoch += 1;
    }

    fn start(&mut self) -> io::Result<()> {
        let epoch = self.lock().epoch;
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("lazyfs".into()),
            MountOption::Subtype("lazyfs".into()),
            // Permission checks by the kernel from the modes we report (root passes anyway).
            MountOption::DefaultPermissions,
        ];
        // Other users may use the mount too (the agent under test may drop privileges).
        config.acl = SessionACL::All;
        let session = fuser::spawn_mount(fs::LazyFsFuse::new(self.state.clone(), epoch), &self.mountpoint, &config)?;
        self.session = Some(session);
        Ok(())
    }

    /// Unmounts: retries on EBUSY, then detaches lazily. In the lazy case, processes that still
    /// hold files of the old mount get EIO from it (it was cut off), and its session thread is left
    /// to end when they let go.
    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else { return Ok(()) };
        let path = CString::new(self.mountpoint.as_os_str().as_bytes())?;
        let deadline = Instant::now() + self.unmount_patience;
        loop {
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EBUSY) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Some(libc::EBUSY) => {
                    // SAFETY: as above.
                    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // Dropping the session now (before a remount at the same path) is safe: its own
                    // unmount attempt finds nothing mounted there.
                    drop(session);
                    return Ok(());
                }
                // Not mounted any more (someone unmounted it): nothing to do.
                Some(libc::EINVAL) => break,
                _ => return Err(err),
            }
        }
        // The session thread ends when the kernel tears the connection down. Do not wait forever:
        // another mount namespace holding a copy of the mount would keep the connection alive.
        let deadline = Instant::now() + SESSION_EXIT_PATIENCE;
        while !session.guard.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if !session.guard.is_finished() {
            return Ok(());
        }
        match session.join() {
            // The kernel aborted the connection instead of closing it: torn down all the same (the state is ours,
            // not the kernel's). Seen once in `power_loss.rs` with a repack in flight at the SIGKILL (kernel 6.18),
            // likely releases of the killed process's files still pending as the mount went.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            other => other,
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.cut_off();
        let _ = self.unmount();
    }
}
