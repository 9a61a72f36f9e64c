//! The pure in-memory model of the filesystem: what is current and what is durable.
//!
//! Nothing here knows about FUSE; `fs.rs` translates kernel requests into these calls, and the
//! unit tests below exercise the model without a mount. Errors are raw errno values.
//!
//! The model is strict POSIX: a write or truncate is durable only after an fsync/fdatasync of that
//! file, and a directory entry (create, unlink, rename, mkdir, rmdir, link) is durable only after
//! an fsync of the directory holding it. Metadata other than size (mode, owner, times) is not
//! modelled: it is kept as is across a power loss.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use crate::ranges::RangeSet;

pub type Ino = u64;
pub const ROOT: Ino = 1;

/// Errors are plain errno values so the model stays independent of the FUSE crate.
pub type Res<T> = Result<T, i32>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// What to create in [`State::create`].
#[derive(Debug, Clone)]
pub enum NewNode {
    File,
    Dir,
    Symlink(OsString),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Plain rename(2): replaces an existing destination.
    Replace,
    /// RENAME_NOREPLACE: EEXIST if the destination exists.
    NoReplace,
    /// RENAME_EXCHANGE: atomically swaps two existing entries.
    Exchange,
}

/// Counters since the state was created (they survive remounts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// fsync/fdatasync calls on files that reached the filesystem.
    pub fsyncs: u64,
    /// fsync calls on directories.
    pub fsyncdirs: u64,
    /// write requests.
    pub writes: u64,
    /// Bytes written by those requests.
    pub bytes_written: u64,
}

/// What a power loss threw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropStats {
    /// Files whose current content or size differed from their durable one.
    pub files_with_lost_data: u64,
    /// Bytes of current content that differed from (or did not exist in) the durable content,
    /// plus durable bytes the current content had truncated away.
    pub bytes_lost: u64,
    /// Directory entries whose current target differed from the durable one (created, removed
    /// or renamed without an fsync of the directory).
    pub entries_reverted: u64,
    /// Inodes that no durable entry reaches any more (e.g. files created in an unsynced directory).
    pub inodes_dropped: u64,
}

/// Attributes reported to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub crtime: SystemTime,
}

/// Metadata changes of a setattr; `None` leaves the field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetaChange {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
    pub ctime: Option<SystemTime>,
}

#[derive(Debug)]
struct FileBody {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges where `current` may differ from `durable`. Invariant: outside these ranges, a
    /// byte exists in both or in neither, and is equal. Growing or shrinking marks the bytes
    /// between the old and the new length.
    dirty: RangeSet,
}

impl FileBody {
    fn mark(&mut self, a: u64, b: u64) {
        self.dirty.insert(a.min(b)..a.max(b));
    }

    /// Copies `from`'s dirty bytes over `to` after resizing it: the fsync / power-loss step.
    fn copy_dirty(dirty: &RangeSet, from: &[u8], to: &mut Vec<u8>) {
        to.resize(from.len(), 0);
        let len = from.len() as u64;
        for r in dirty.iter() {
            let (a, b) = (r.start.min(len) as usize, r.end.min(len) as usize);
            to[a..b].copy_from_slice(&from[a..b]);
        }
    }

    fn sync(&mut self) {
        Self::copy_dirty(&self.dirty, &self.current, &mut self.durable);
        self.dirty.clear();
    }

    /// Bytes of the dirty ranges where current and durable differ, counting a byte present in only
    /// one of them as different.
    fn lost_bytes(&self) -> u64 {
        let (cur, dur) = (&self.current, &self.durable);
        let common = cur.len().min(dur.len()) as u64;
        let longest = cur.len().max(dur.len()) as u64;
        let mut lost = 0;
        for r in self.dirty.iter() {
            let (a, b) = (r.start.min(common) as usize, r.end.min(common) as usize);
            lost += cur[a..b].iter().zip(&dur[a..b]).filter(|(x, y)| x != y).count() as u64;
            // The part beyond the shorter of the two exists in only one.
            lost += r.end.min(longest).saturating_sub(r.start.max(common));
        }
        lost
    }

    fn revert(&mut self) {
        Self::copy_dirty(&self.dirty, &self.durable, &mut self.current);
        self.dirty.clear();
    }
}

#[derive(Debug, Default)]
struct DirBody {
    current: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
}

impl DirBody {
    fn reverted_entries(&self) -> u64 {
        let changed = self.current.iter().filter(|(name, ino)| self.durable.get(*name) != Some(ino)).count();
        let removed = self.durable.keys().filter(|name| !self.current.contains_key(*name)).count();
        (changed + removed) as u64
    }
}

#[derive(Debug)]
enum Body {
    File(FileBody),
    Dir(DirBody),
    Symlink(OsString),
}

#[derive(Debug)]
struct Inode {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    crtime: SystemTime,
    /// Current directory entries naming this inode.
    current_links: u32,
    /// Durable directory entries naming this inode. An inode lives while either count or `open`
    /// is non-zero: an unlinked file must come back with its durable data if the unlink is lost.
    durable_links: u32,
    /// Open file handles (kernel `open`/`create` minus `release`).
    open: u32,
}

impl Inode {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            body,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            current_links: 0,
            durable_links: 0,
            open: 0,
        }
    }

    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
            Body::Symlink(_) => Kind::Symlink,
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// The whole filesystem. One instance lives across remounts (behind `Arc<Mutex<_>>`).
#[derive(Debug)]
pub struct State {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    /// Which mount may use the state: bumped when a mount is cut off, so requests still arriving
    /// through an old (lazily detached) mount are refused instead of changing the new state.
    pub epoch: u64,
    capacity: u64,
    /// Sum of the current sizes of all files, for statfs and ENOSPC.
    used: u64,
    stats: Stats,
    /// A device whose syncs hang: fsync and fdatasync wait while this is set ([`crate::LazyFs::stall_syncs`]).
    pub syncs_stalled: bool,
}

impl State {
    /// An empty filesystem whose root directory exists durably.
    pub fn new(capacity: u64) -> State {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode::new(Body::Dir(DirBody::default()), 0o755, 0, 0));
        State { inodes, next_ino: ROOT + 1, epoch: 0, capacity, used: 0, stats: Stats::default(), syncs_stalled: false }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn node(&self, ino: Ino) -> Res<&Inode> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Res<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Res<&DirBody> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Res<&mut DirBody> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Res<&mut FileBody> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
            Body::Symlink(_) => Err(libc::EINVAL),
        }
    }

    pub fn attr(&self, ino: Ino) -> Res<Attr> {
        let node = self.node(ino)?;
        let (size, nlink) = match &node.body {
            Body::File(f) => (f.current.len() as u64, node.current_links),
            Body::Symlink(target) => (target.len() as u64, node.current_links),
            Body::Dir(d) => {
                let subdirs = d.current.values().filter(|i| self.inodes[i].kind() == Kind::Dir).count();
                (4096, 2 + subdirs as u32)
            }
        };
        Ok(Attr {
            ino,
            kind: node.kind(),
            size,
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.crtime,
        })
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Res<Ino> {
        self.dir(parent)?.current.get(name).copied().ok_or(libc::ENOENT)
    }

    pub fn readlink(&self, ino: Ino) -> Res<OsString> {
        match &self.node(ino)?.body {
            Body::Symlink(target) => Ok(target.clone()),
            _ => Err(libc::EINVAL),
        }
    }

    /// Current entries of a directory, sorted by name.
    pub fn entries(&self, dir: Ino) -> Res<Vec<(OsString, Ino, Kind)>> {
        let d = self.dir(dir)?;
        Ok(d.current.iter().map(|(name, &ino)| (name.clone(), ino, self.inodes[&ino].kind())).collect())
    }

    /// Creates a file, directory or symlink named `name` in `parent` (current state only).
    pub fn create(&mut self, parent: Ino, name: &OsStr, node: NewNode, perm: u16, uid: u32, gid: u32) -> Res<Ino> {
        if self.dir(parent)?.current.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let body = match node {
            NewNode::File => {
                Body::File(FileBody { current: Vec::new(), durable: Vec::new(), dirty: RangeSet::default() })
            }
            NewNode::Dir => Body::Dir(DirBody::default()),
            NewNode::Symlink(target) => Body::Symlink(target),
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(body, perm, uid, gid));
        self.add_entry(parent, name, ino)?;
        Ok(ino)
    }

    /// A hard link: another current entry for an existing non-directory.
    pub fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> Res<()> {
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(libc::EPERM);
        }
        if self.dir(parent)?.current.contains_key(name) {
            return Err(libc::EEXIST);
        }
        self.add_entry(parent, name, ino)?;
        self.node_mut(ino)?.ctime = SystemTime::now();
        Ok(())
    }

    fn add_entry(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Res<()> {
        let p = self.node_mut(parent)?;
        p.touch();
        let Body::Dir(d) = &mut p.body else { return Err(libc::ENOTDIR) };
        d.current.insert(name.to_owned(), ino);
        self.node_mut(ino)?.current_links += 1;
        Ok(())
    }

    /// Removes a current entry; the inode goes away only if nothing (durable entry, open handle)
    /// still refers to it.
    fn remove_entry(&mut self, parent: Ino, name: &OsStr) -> Res<Ino> {
        let p = self.node_mut(parent)?;
        p.touch();
        let Body::Dir(d) = &mut p.body else { return Err(libc::ENOTDIR) };
        let ino = d.current.remove(name).ok_or(libc::ENOENT)?;
        let node = self.node_mut(ino)?;
        node.current_links -= 1;
        node.ctime = SystemTime::now();
        self.maybe_free(ino);
        Ok(ino)
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.remove_entry(parent, name).map(drop)
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        if !self.dir(ino)?.current.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.remove_entry(parent, name).map(drop)
    }

    /// rename/renameat2 on current entries. (The kernel already refuses moving a directory into
    /// its own subtree.)
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        mode: RenameMode,
    ) -> Res<()> {
        let src = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let dst = self.dir(new_parent)?.current.get(new_name).copied();
        match (mode, dst) {
            (RenameMode::Exchange, None) => return Err(libc::ENOENT),
            (RenameMode::Exchange, Some(dst)) => {
                self.dir_mut(parent)?.current.insert(name.to_owned(), dst);
                self.dir_mut(new_parent)?.current.insert(new_name.to_owned(), src);
                self.node_mut(parent)?.touch();
                self.node_mut(new_parent)?.touch();
                return Ok(());
            }
            (RenameMode::NoReplace, Some(_)) => return Err(libc::EEXIST),
            (_, Some(dst)) if dst == src => return Ok(()),
            (_, Some(dst)) => {
                let (src_kind, dst_kind) = (self.node(src)?.kind(), self.node(dst)?.kind());
                match (src_kind == Kind::Dir, dst_kind == Kind::Dir) {
                    (true, false) => return Err(libc::ENOTDIR),
                    (false, true) => return Err(libc::EISDIR),
                    (true, true) if !self.dir(dst)?.current.is_empty() => return Err(libc::ENOTEMPTY),
                    _ => {}
                }
                self.remove_entry(new_parent, new_name)?;
            }
            (_, None) => {}
        }
        // Add before removing so the inode's link count never drops to zero (which would free it).
        self.add_entry(new_parent, new_name, src)?;
        self.remove_entry(parent, name)?;
        Ok(())
    }

    pub fn open(&mut self, ino: Ino) -> Res<()> {
        self.node_mut(ino)?.open += 1;
        Ok(())
    }

    pub fn release(&mut self, ino: Ino) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.open = node.open.saturating_sub(1);
            self.maybe_free(ino);
        }
    }

    pub fn read(&self, ino: Ino, offset: u64, size: usize) -> Res<&[u8]> {
        let Body::File(f) = &self.node(ino)?.body else { return Err(libc::EISDIR) };
        let len = f.current.len() as u64;
        let start = offset.min(len) as usize;
        let end = (offset.saturating_add(size as u64)).min(len) as usize;
        Ok(&f.current[start..end])
    }

    /// Refuses growth past the capacity, like a full disk.
    fn reserve(&mut self, old_len: u64, new_len: u64) -> Res<()> {
        if new_len > old_len && self.used + (new_len - old_len) > self.capacity {
            return Err(libc::ENOSPC);
        }
        self.used = self.used + new_len - old_len;
        Ok(())
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Res<usize> {
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        let old_len = self.file_mut(ino)?.current.len() as u64;
        self.reserve(old_len, old_len.max(end))?;
        let f = self.file_mut(ino)?;
        if end as usize > f.current.len() {
            f.current.resize(end as usize, 0);
        }
        f.current[offset as usize..end as usize].copy_from_slice(data);
        // Bytes between the old end and the write (a hole) changed too.
        f.mark(offset.min(old_len), end);
        self.node_mut(ino)?.touch();
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        Ok(data.len())
    }

    /// truncate/ftruncate/set_len (current state only).
    pub fn set_size(&mut self, ino: Ino, size: u64) -> Res<()> {
        let old_len = self.file_mut(ino)?.current.len() as u64;
        if old_len == size {
            return Ok(());
        }
        self.reserve(old_len, size)?;
        let f = self.file_mut(ino)?;
        f.current.resize(size as usize, 0);
        f.mark(old_len, size);
        self.node_mut(ino)?.touch();
        Ok(())
    }

    /// fallocate: mode 0 extends the size; KEEP_SIZE is accepted and does nothing (nothing is
    /// preallocated in memory); PUNCH_HOLE|KEEP_SIZE zeroes a range.
    pub fn fallocate(&mut self, ino: Ino, offset: u64, length: u64, mode: i32) -> Res<()> {
        let end = offset.checked_add(length).ok_or(libc::EFBIG)?;
        match mode {
            0 => {
                let len = self.file_mut(ino)?.current.len() as u64;
                if end > len { self.set_size(ino, end) } else { Ok(()) }
            }
            libc::FALLOC_FL_KEEP_SIZE => self.file_mut(ino).map(drop),
            m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                let f = self.file_mut(ino)?;
                let len = f.current.len() as u64;
                let (a, b) = (offset.min(len), end.min(len));
                f.current[a as usize..b as usize].fill(0);
                f.mark(a, b);
                self.node_mut(ino)?.touch();
                Ok(())
            }
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    pub fn set_meta(&mut self, ino: Ino, change: MetaChange) -> Res<()> {
        let node = self.node_mut(ino)?;
        if let Some(perm) = change.perm {
            node.perm = perm;
        }
        if let Some(uid) = change.uid {
            node.uid = uid;
        }
        if let Some(gid) = change.gid {
            node.gid = gid;
        }
        if let Some(t) = change.atime {
            node.atime = t;
        }
        if let Some(t) = change.mtime {
            node.mtime = t;
        }
        node.ctime = change.ctime.unwrap_or_else(SystemTime::now);
        Ok(())
    }

    /// fsync/fdatasync of a file (both persist data and size), or fsync of a directory.
    pub fn fsync(&mut self, ino: Ino) -> Res<()> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => {
                f.sync();
                self.stats.fsyncs += 1;
                Ok(())
            }
            Body::Dir(_) => self.fsyncdir(ino),
            // A symlink's target is written at creation; it is as durable as its entry.
            Body::Symlink(_) => Ok(()),
        }
    }

    /// Makes a directory's current entries durable, adjusting the durable link counts of the
    /// inodes that gained or lost a durable entry.
    pub fn fsyncdir(&mut self, ino: Ino) -> Res<()> {
        let d = self.dir_mut(ino)?;
        let old = std::mem::replace(&mut d.durable, d.current.clone());
        let new = d.durable.clone();
        for target in new.values() {
            self.node_mut(*target)?.durable_links += 1;
        }
        for target in old.values() {
            self.node_mut(*target)?.durable_links -= 1;
            self.maybe_free(*target);
        }
        self.stats.fsyncdirs += 1;
        Ok(())
    }

    /// Frees an inode nothing refers to any more, and then whatever only its durable entries
    /// kept alive.
    fn maybe_free(&mut self, ino: Ino) {
        let mut queue = vec![ino];
        while let Some(ino) = queue.pop() {
            let Some(node) = self.inodes.get(&ino) else { continue };
            if ino == ROOT || node.current_links > 0 || node.durable_links > 0 || node.open > 0 {
                continue;
            }
            let node = self.inodes.remove(&ino).expect("checked above");
            match node.body {
                Body::File(f) => self.used -= f.current.len() as u64,
                Body::Dir(d) => {
                    // An rmdir'ed directory has no current entries; its durable ones may remain.
                    for (_, target) in d.durable.into_iter().chain(d.current) {
                        if let Some(t) = self.inodes.get_mut(&target) {
                            t.durable_links = t.durable_links.saturating_sub(1);
                            queue.push(target);
                        }
                    }
                }
                Body::Symlink(_) => {}
            }
        }
    }

    /// (total bytes, free bytes, number of inodes)
    pub fn statfs(&self) -> (u64, u64, u64) {
        (self.capacity, self.capacity.saturating_sub(self.used), self.inodes.len() as u64)
    }

    /// Forgets every open handle: after an unmount no process holds a file of the old mount.
    pub fn close_all(&mut self) {
        let open: Vec<Ino> = self.inodes.iter().filter(|(_, n)| n.open > 0).map(|(&i, _)| i).collect();
        for ino in open {
            self.inodes.get_mut(&ino).expect("listed above").open = 0;
            self.maybe_free(ino);
        }
    }

    /// The power cut: every file's content and size return to what was last fsynced, every
    /// directory to its last fsynced entries; whatever no durable entry reaches from the root
    /// disappears.
    pub fn power_loss(&mut self) -> DropStats {
        let mut stats = DropStats::default();
        for node in self.inodes.values_mut() {
            match &mut node.body {
                Body::File(f) => {
                    let lost = f.lost_bytes();
                    if lost > 0 {
                        stats.files_with_lost_data += 1;
                        stats.bytes_lost += lost;
                    }
                    f.revert();
                }
                Body::Dir(d) => {
                    stats.entries_reverted += d.reverted_entries();
                    d.current = d.durable.clone();
                }
                Body::Symlink(_) => {}
            }
            node.open = 0;
            node.current_links = 0;
            node.durable_links = 0;
        }

        // Walk the durable tree from the root. A directory met a second time (possible when only
        // one side of a cross-directory rename was fsynced) keeps its first entry only: the kernel
        // cannot cope with a directory in two places.
        let mut reached = HashSet::from([ROOT]);
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let entries: Vec<(OsString, Ino)> =
                self.dir(dir).expect("queued dirs are dirs").current.iter().map(|(n, &i)| (n.clone(), i)).collect();
            for (name, ino) in entries {
                let is_dir = self.inodes[&ino].kind() == Kind::Dir;
                if is_dir && !reached.insert(ino) {
                    let d = self.dir_mut(dir).expect("a dir");
                    d.current.remove(&name);
                    d.durable.remove(&name);
                    stats.entries_reverted += 1;
                    continue;
                }
                reached.insert(ino);
                let node = self.inodes.get_mut(&ino).expect("durable entries keep their inode");
                node.current_links += 1;
                node.durable_links += 1;
                if is_dir {
                    queue.push_back(ino);
                }
            }
        }
        let before = self.inodes.len();
        self.inodes.retain(|ino, _| reached.contains(ino));
        stats.inodes_dropped = (before - self.inodes.len()) as u64;
        self.used = self
            .inodes
            .values()
            .map(|n| match &n.body {
                Body::File(f) => f.current.len() as u64,
                _ => 0,
            })
            .sum();
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn new_file(st: &mut State, parent: Ino, n: &str) -> Ino {
        st.create(parent, name(n), NewNode::File, 0o644, 0, 0).unwrap()
    }

    fn content(st: &State, ino: Ino) -> Vec<u8> {
        st.read(ino, 0, usize::MAX).unwrap().to_vec()
    }

    #[test]
    fn unsynced_write_is_lost_synced_write_stays() {
        let mut st = State::new(GIB);
        let f = new_file(&mut st, ROOT, "f");
        st.fsyncdir(ROOT).unwrap();
        st.write(f, 0, b"hello").unwrap();
        st.fsync(f).unwrap();
        st.write(f, 3, b"p me").unwrap();
        assert_eq!(content(&st, f), b"help me");

        let lost = st.power_loss();
        assert_eq!(content(&st, st.lookup(ROOT, name("f")).unwrap()), b"hello");
        assert_eq!(lost.files_with_lost_data, 1);
        // "lo" -> "p " differ, " me" did not exist durably.
        assert_eq!(lost.bytes_lost, 4);
        assert_eq!(lost.entries_reverted, 0);
    }

    #[test]
    fn truncate_then_regrow_is_reverted_and_synced_correctly() {
        let mut st = State::new(GIB);
        let f = new_file(&mut st, ROOT, "f");
        st.fsyncdir(ROOT).unwrap();
        st.write(f, 0, &[7; 10_000]).unwrap();
        st.fsync(f).unwrap();
        st.set_size(f, 100).unwrap();
        st.set_size(f, 9_000).unwrap();
        st.write(f, 9_500, b"x").unwrap(); // a hole between 9000 and 9500
        let expected = {
            let mut v = vec![7; 100];
            v.resize(9_500, 0);
            v.push(b'x');
            v
        };
        assert_eq!(content(&st, f), expected);
        st.power_loss();
        assert_eq!(content(&st, f), vec![7; 10_000]);

        st.set_size(f, 100).unwrap();
        st.set_size(f, 9_000).unwrap();
        st.fsync(f).unwrap();
        st.power_loss();
        let mut v = vec![7; 100];
        v.resize(9_000, 0);
        assert_eq!(content(&st, f), v);
    }

    #[test]
    fn fsync_copies_only_dirty_ranges() {
        let mut st = State::new(GIB);
        let f = new_file(&mut st, ROOT, "f");
        st.write(f, 0, &[1; 1 << 20]).unwrap();
        st.fsync(f).unwrap();
        st.write(f, 4096, b"abc").unwrap();
        let Body::File(body) = &st.inodes[&f].body else { unreachable!() };
        assert_eq!(body.dirty.iter().collect::<Vec<_>>(), vec![4096..4099]);
        st.fsync(f).unwrap();
        let Body::File(body) = &st.inodes[&f].body else { unreachable!() };
        assert!(body.dirty.is_empty());
        assert_eq!(&body.durable[4095..4100], &[1, b'a', b'b', b'c', 1]);
    }

    #[test]
    fn new_file_in_unsynced_dir_vanishes_even_if_fsynced() {
        let mut st = State::new(GIB);
        let d = st.create(ROOT, name("d"), NewNode::Dir, 0o755, 0, 0).unwrap();
        let f = new_file(&mut st, d, "f");
        st.write(f, 0, b"data").unwrap();
        st.fsync(f).unwrap();
        st.fsyncdir(d).unwrap(); // the parent of d (root) is not synced
        let lost = st.power_loss();
        assert_eq!(st.lookup(ROOT, name("d")), Err(libc::ENOENT));
        assert_eq!(lost.entries_reverted, 1);
        assert_eq!(lost.inodes_dropped, 2);
        assert_eq!(st.inodes.len(), 1);

        let d = st.create(ROOT, name("d"), NewNode::Dir, 0o755, 0, 0).unwrap();
        let f = new_file(&mut st, d, "f");
        st.write(f, 0, b"data").unwrap();
        st.fsync(f).unwrap();
        st.fsyncdir(d).unwrap();
        st.fsyncdir(ROOT).unwrap();
        assert_eq!(st.power_loss(), DropStats::default());
        let d = st.lookup(ROOT, name("d")).unwrap();
        assert_eq!(content(&st, st.lookup(d, name("f")).unwrap()), b"data");
    }

    #[test]
    fn rename_over_reverts_to_old_file_until_dir_synced() {
        let mut st = State::new(GIB);
        let old = new_file(&mut st, ROOT, "conf");
        st.write(old, 0, b"old").unwrap();
        st.fsync(old).unwrap();
        st.fsyncdir(ROOT).unwrap();
        let tmp = new_file(&mut st, ROOT, "conf.tmp");
        st.write(tmp, 0, b"new").unwrap();
        st.fsync(tmp).unwrap();
        st.rename(ROOT, name("conf.tmp"), ROOT, name("conf"), RenameMode::Replace).unwrap();
        // The old inode has no current entry but is kept for its durable one.
        assert!(st.inodes.contains_key(&old));
        assert_eq!(st.attr(old).unwrap().nlink, 0);

        let lost = st.power_loss();
        assert_eq!(lost.entries_reverted, 1); // "conf" now points elsewhere; conf.tmp was never durable
        assert_eq!(content(&st, st.lookup(ROOT, name("conf")).unwrap()), b"old");
        assert_eq!(st.lookup(ROOT, name("conf.tmp")), Err(libc::ENOENT));

        let tmp = new_file(&mut st, ROOT, "conf.tmp");
        st.write(tmp, 0, b"new").unwrap();
        st.fsync(tmp).unwrap();
        st.rename(ROOT, name("conf.tmp"), ROOT, name("conf"), RenameMode::Replace).unwrap();
        st.fsyncdir(ROOT).unwrap();
        assert!(!st.inodes.contains_key(&old), "the replaced inode is freed once no entry refers to it");
        st.power_loss();
        assert_eq!(content(&st, st.lookup(ROOT, name("conf")).unwrap()), b"new");
    }

    #[test]
    fn rename_flags() {
        let mut st = State::new(GIB);
        let a = new_file(&mut st, ROOT, "a");
        let b = new_file(&mut st, ROOT, "b");
        assert_eq!(st.rename(ROOT, name("a"), ROOT, name("b"), RenameMode::NoReplace), Err(libc::EEXIST));
        st.rename(ROOT, name("a"), ROOT, name("b"), RenameMode::Exchange).unwrap();
        assert_eq!(st.lookup(ROOT, name("a")), Ok(b));
        assert_eq!(st.lookup(ROOT, name("b")), Ok(a));
        assert_eq!(st.rename(ROOT, name("a"), ROOT, name("c"), RenameMode::Exchange), Err(libc::ENOENT));
        st.rename(ROOT, name("a"), ROOT, name("c"), RenameMode::NoReplace).unwrap();
        let d = st.create(ROOT, name("d"), NewNode::Dir, 0o755, 0, 0).unwrap();
        new_file(&mut st, d, "x");
        assert_eq!(st.rename(ROOT, name("c"), ROOT, name("d"), RenameMode::Replace), Err(libc::EISDIR));
        let e = st.create(ROOT, name("e"), NewNode::Dir, 0o755, 0, 0).unwrap();
        assert_eq!(st.rename(ROOT, name("e"), ROOT, name("d"), RenameMode::Replace), Err(libc::ENOTEMPTY));
        st.rename(ROOT, name("d"), ROOT, name("e"), RenameMode::Replace).unwrap();
        assert_eq!(st.lookup(ROOT, name("e")), Ok(d));
        assert!(!st.inodes.contains_key(&e));
        assert_eq!(st.attr(ROOT).unwrap().nlink, 3);
    }

    #[test]
    fn unlink_without_dir_sync_comes_back() {
        let mut st = State::new(GIB);
        let f = new_file(&mut st, ROOT, "f");
        st.write(f, 0, b"keep").unwrap();
        st.fsync(f).unwrap();
        st.fsyncdir(ROOT).unwrap();
        st.write(f, 0, b"lost").unwrap();
        st.unlink(ROOT, name("f")).unwrap();
        assert_eq!(st.lookup(ROOT, name("f")), Err(libc::ENOENT));
        let lost = st.power_loss();
        assert_eq!(lost.entries_reverted, 1);
        assert_eq!(content(&st, st.lookup(ROOT, name("f")).unwrap()), b"keep");
        assert_eq!(st.attr(f).unwrap().nlink, 1);

        st.unlink(ROOT, name("f")).unwrap();
        st.fsyncdir(ROOT).unwrap();
        assert!(!st.inodes.contains_key(&f));
    }

    #[test]
    fn open_unlinked_file_lives_until_release() {
        let mut st = State::new(GIB);
        let f = new_file(&mut st, ROOT, "f");
        st.open(f).unwrap();
        st.unlink(ROOT, name("f")).unwrap();
        st.write(f, 0, b"still here").unwrap();
        assert_eq!(content(&st, f), b"still here");
        st.release(f);
        assert_eq!(st.attr(f), Err(libc::ENOENT));
        assert_eq!(st.statfs().1, GIB);
    }

    #[test]
    fn cross_dir_rename_synced_only_at_destination_keeps_one_entry() {
        let mut st = State::new(GIB);
        let a = st.create(ROOT, name("a"), NewNode::Dir, 0o755, 0, 0).unwrap();
        let b = st.create(ROOT, name("b"), NewNode::Dir, 0o755, 0, 0).unwrap();
        let sub = st.create(a, name("sub"), NewNode::Dir, 0o755, 0, 0).unwrap();
        for d in [a, b, ROOT] {
            st.fsyncdir(d).unwrap();
        }
        st.rename(a, name("sub"), b, name("sub"), RenameMode::Replace).unwrap();
        st.fsyncdir(b).unwrap();
        st.power_loss();
        // Durably, "sub" is in both a and b; only the first one met survives.
        assert_eq!(st.lookup(a, name("sub")), Ok(sub));
        assert_eq!(st.lookup(b, name("sub")), Err(libc::ENOENT));
    }

    #[test]
    fn capacity_is_enforced_and_reported() {
        let mut st = State::new(10);
        let f = new_file(&mut st, ROOT, "f");
        st.write(f, 0, b"0123456789").unwrap();
        assert_eq!(st.write(f, 10, b"x"), Err(libc::ENOSPC));
        assert_eq!(st.statfs().1, 0);
        st.set_size(f, 4).unwrap();
        assert_eq!(st.statfs().1, 6);
        st.power_loss(); // the file was never durable
        assert_eq!(st.statfs(), (10, 10, 1));
    }

    #[test]
    fn fallocate_modes() {
        let mut st = State::new(GIB);
        let f = new_file(&mut st, ROOT, "f");
        st.fallocate(f, 0, 8192, 0).unwrap();
        assert_eq!(st.attr(f).unwrap().size, 8192);
        st.fallocate(f, 0, 100, 0).unwrap(); // never shrinks
        assert_eq!(st.attr(f).unwrap().size, 8192);
        st.fallocate(f, 0, 1 << 20, libc::FALLOC_FL_KEEP_SIZE).unwrap();
        assert_eq!(st.attr(f).unwrap().size, 8192);
        st.write(f, 0, b"abc").unwrap();
        st.fallocate(f, 1, 1, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE).unwrap();
        assert_eq!(&content(&st, f)[..3], b"a\0c");
        assert_eq!(st.fallocate(f, 0, 1, libc::FALLOC_FL_COLLAPSE_RANGE), Err(libc::EOPNOTSUPP));
    }
}
