//! FUSE glue: turns kernel requests into calls on the shared [`State`].
//!
//! Every reply uses TTL 0 and every file is opened with `FOPEN_DIRECT_IO`, so the kernel caches
//! neither attributes, names nor data: what a process reads is always what the model holds, and
//! nothing the model drops can survive in a kernel cache. The writeback cache is not requested
//! (fuser's default init flags leave it off), so a write reaches us before write(2) returns and
//! `sync_file_range(2)`, which has no FUSE request, cannot make anything durable.
//!
//! File locks (flock, POSIX) are left unimplemented on purpose: without `FUSE_POSIX_LOCKS` /
//! `FUSE_FLOCK_LOCKS` the kernel handles them locally, which is all a single machine needs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::state::{Attr, Ino, Kind, MetaChange, NewNode, RenameMode, Res, State};

/// Nothing may be cached by the kernel (see the module docs).
const TTL: Duration = Duration::ZERO;
const BLOCK: u32 = 4096;

/// One directory listing, taken at opendir so that readdir offsets stay stable while the caller
/// removes entries (`remove_dir_all` does).
type Listing = Vec<(std::ffi::OsString, Ino, Kind)>;

/// The filesystem object of one mount. Successive mounts share the state.
pub(crate) struct LazyFsFuse {
    state: Arc<Mutex<State>>,
    /// The state's epoch when this mount was made; requests are refused (EIO) once it changed.
    epoch: u64,
    listings: Mutex<HashMap<u64, Listing>>,
    next_fh: AtomicU64,
}

impl LazyFsFuse {
    pub(crate) fn new(state: Arc<Mutex<State>>, epoch: u64) -> LazyFsFuse {
        LazyFsFuse { state, epoch, listings: Mutex::new(HashMap::new()), next_fh: AtomicU64::new(1) }
    }

    /// The state, unless this mount has been cut off by a power loss or remount.
    fn state(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let st = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if st.epoch == self.epoch { Ok(st) } else { Err(Errno::EIO) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> Res<T>) -> Result<T, Errno> {
        f(&mut *self.state()?).map_err(Errno::from_i32)
    }

    /// A hung device: holds the sync (and, the session being one thread, every later request) until the test
    /// lets syncs go or the mount is cut off.
    fn wait_while_syncs_stall(&self) {
        while matches!(self.state(), Ok(st) if st.syncs_stalled) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn fh(&self) -> FileHandle {
        FileHandle(self.next_fh.fetch_add(1, Ordering::Relaxed))
    }

    /// Creates a node and returns its attributes (mode & !umask, caller's uid/gid).
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        node: NewNode,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, Errno> {
        let perm = (mode & !umask & 0o7777) as u16;
        self.with(|st| {
            let ino = st.create(parent.0, name, node, perm, req.uid(), req.gid())?;
            st.attr(ino).map(to_fuse)
        })
    }
}

fn kind_to_fuse(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn to_fuse(a: Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: kind_to_fuse(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn reply_entry(reply: ReplyEntry, res: Result<FileAttr, Errno>) {
    match res {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for LazyFsFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.with(|st| st.attr(st.lookup(parent.0, name)?).map(to_fuse)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|st| st.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &to_fuse(attr)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = MetaChange {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            atime: atime.map(time),
            mtime: mtime.map(time),
            ctime,
        };
        let res = self.with(|st| {
            if let Some(size) = size {
                st.set_size(ino.0, size)?;
            }
            st.set_meta(ino.0, change)?;
            st.attr(ino.0)
        });
        match res {
            Ok(attr) => reply.attr(&TTL, &to_fuse(attr)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.with(|st| st.readlink(ino.0)) {
            Ok(target) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files: devices, fifos and sockets are not needed by anything we test.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        reply_entry(reply, self.make(req, parent, name, NewNode::File, mode, umask));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        reply_entry(reply, self.make(req, parent, name, NewNode::Dir, mode, umask));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.with(|st| st.unlink(parent.0, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.with(|st| st.rmdir(parent.0, name)));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let node = NewNode::Symlink(target.as_os_str().to_owned());
        reply_entry(reply, self.make(req, parent, link_name, node, 0o777, 0));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            return reply.error(Errno::EINVAL); // RENAME_WHITEOUT or combinations
        };
        reply_empty(reply, self.with(|st| st.rename(parent.0, name, newparent.0, newname, mode)));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        reply_entry(
            reply,
            self.with(|st| {
                st.link(ino.0, newparent.0, newname)?;
                st.attr(ino.0).map(to_fuse)
            }),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|st| st.open(ino.0)) {
            Ok(()) => reply.opened(self.fh(), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let res = self.make(req, parent, name, NewNode::File, mode, umask).and_then(|attr| {
            self.with(|st| st.open(attr.ino.0))?;
            Ok(attr)
        });
        match res {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), self.fh(), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = match self.state() {
            Ok(st) => st,
            Err(e) => return reply.error(e),
        };
        match st.read(ino.0, offset, size as usize) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|st| st.write(ino.0, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2) is not a durability point.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.with(|st| {
                st.release(ino.0);
                Ok(())
            }),
        );
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.wait_while_syncs_stall();
        // fdatasync persists the size too (it is needed to read the data back), so both are alike.
        reply_empty(reply, self.with(|st| st.fsync(ino.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listing = match self.with(|st| st.entries(ino.0)) {
            Ok(listing) => listing,
            Err(e) => return reply.error(e),
        };
        let fh = self.fh();
        self.listings.lock().unwrap_or_else(|p| p.into_inner()).insert(fh.0, listing);
        reply.opened(fh, FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        let Some(listing) = listings.get(&fh.0) else { return reply.error(Errno::EBADF) };
        // Offsets: 1 is ".", 2 is "..", 3.. the listing. The kernel resolves ".." itself; the inode
        // number given here is only informative.
        let dots = [(OsStr::new("."), ino.0, Kind::Dir), (OsStr::new(".."), ino.0, Kind::Dir)];
        let all = dots.into_iter().chain(listing.iter().map(|(n, i, k)| (n.as_os_str(), *i, *k)));
        for (i, (name, ino, kind)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind_to_fuse(kind), name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.listings.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.wait_while_syncs_stall();
        reply_empty(reply, self.with(|st| st.fsyncdir(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.with(|st| Ok(st.statfs())) {
            Ok((total, free, inodes)) => {
                let b = u64::from(BLOCK);
                let files = 1 << 20;
                reply.statfs(total / b, free / b, free / b, files, files.saturating_sub(inodes), BLOCK, 255, BLOCK)
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.with(|st| st.fallocate(ino.0, offset, length, mode)));
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        // Only SEEK_DATA/SEEK_HOLE reach us; the whole file counts as data.
        let res = self.with(|st| {
            let size = st.attr(ino.0)?.size as i64;
            match whence {
                _ if offset < 0 => Err(libc::EINVAL),
                _ if offset >= size => Err(libc::ENXIO),
                libc::SEEK_DATA => Ok(offset),
                libc::SEEK_HOLE => Ok(size),
                _ => Err(libc::EINVAL),
            }
        });
        match res {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        }
    }
}
