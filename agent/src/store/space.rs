//! Free disk space: never open the store, take an ingest write or start a repack without room.
//!
//! Opening sled 0.34 on a full filesystem can leave a state it cannot read back (it starts writing a snapshot
//! and segment headers at open); a write that hits ENOSPC half way makes the agent refuse everything until a
//! restart. So meterd keeps a reserve: below it, ingest is refused with a clear "disk nearly full" while sealing
//! and submission — which free space as records age out — and reads go on, and a start refuses before it
//! writes a byte.

use std::path::Path;

/// The reserve kept free on the data dir's filesystem (`storage.min_free`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    /// A share of the filesystem's size, in percent.
    Percent(f64),
}

impl Default for MinFree {
    fn default() -> Self {
        MinFree::Bytes(DEFAULT_MIN_FREE)
    }
}

/// 256 MiB: what the agent writes while ingest is paused (record states, sled's log segments, snapshots) with
/// a wide margin, and small next to any disk a server has. A repack checks for its own room on top.
pub const DEFAULT_MIN_FREE: u64 = 256 * 1024 * 1024;

/// Fewer free inodes than this counts as full too (sled needs a few files per generation).
pub const MIN_FREE_INODES: u64 = 64;

impl MinFree {
    /// Parses "256MiB", "1GiB", "500MB", "1048576" (bytes) or "5%".
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("{s:?} is not a percentage like \"5%\""))?;
            if !(0.0..=50.0).contains(&v) {
                return Err(format!("{s:?}: a percentage must be between 0% and 50%"));
            }
            return Ok(MinFree::Percent(v));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like \"256MiB\" or \"5%\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(format!("{s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB or %)")),
        };
        n.checked_mul(mult).map(MinFree::Bytes).ok_or_else(|| format!("{s:?} is too large"))
    }

    /// The reserve in bytes on a filesystem of `total` bytes.
    pub fn bytes(&self, total: u64) -> u64 {
        match *self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

/// What statvfs says about the filesystem holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    /// Available to an unprivileged writer (what meterd may count on, even when it runs as root).
    pub free_bytes: u64,
    pub free_inodes: u64,
}

/// statvfs of `path`, or of its nearest existing ancestor (a data dir not created yet).
pub fn space_of(path: &Path) -> std::io::Result<Space> {
    let mut at = path;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => at = Path::new("."),
        }
    }
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs(3) fills the struct we pass; the path is a valid NUL-terminated C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok(Space {
        total_bytes: st.f_blocks as u64 * frsize,
        free_bytes: st.f_bavail as u64 * frsize,
        free_inodes: st.f_favail as u64,
    })
}

/// Why there is not room: `None` when there is.
pub fn shortfall(space: &Space, reserve: MinFree, extra: u64) -> Option<DiskFull> {
    let reserve_bytes = reserve.bytes(space.total_bytes).saturating_add(extra);
    (space.free_bytes < reserve_bytes || space.free_inodes < MIN_FREE_INODES).then_some(DiskFull {
        free_bytes: space.free_bytes,
        reserve_bytes,
        free_inodes: space.free_inodes,
    })
}

/// A refusal for lack of room, with the figures the operator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFull {
    pub free_bytes: u64,
    pub reserve_bytes: u64,
    pub free_inodes: u64,
}

impl std::fmt::Display for DiskFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "disk nearly full: {:.1} MiB free, reserve {:.1} MiB",
            mib(self.free_bytes),
            mib(self.reserve_bytes)
        )?;
        if self.free_inodes < MIN_FREE_INODES {
            write!(f, ", {} inodes free (need {MIN_FREE_INODES})", self.free_inodes)?;
        }
        write!(f, " (storage.min_free)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_percentages_parse_and_bad_ones_name_the_problem() {
        assert_eq!(MinFree::parse("256MiB"), Ok(MinFree::Bytes(256 << 20)));
        assert_eq!(MinFree::parse("1GiB"), Ok(MinFree::Bytes(1 << 30)));
        assert_eq!(MinFree::parse("500MB"), Ok(MinFree::Bytes(500_000_000)));
        assert_eq!(MinFree::parse("4096"), Ok(MinFree::Bytes(4096)));
        assert_eq!(MinFree::parse("5%"), Ok(MinFree::Percent(5.0)));
        assert!(MinFree::parse("5TB").unwrap_err().contains("unknown unit"));
        assert!(MinFree::parse("lots").unwrap_err().contains("not a size"));
        assert!(MinFree::parse("80%").unwrap_err().contains("between 0% and 50%"));
        assert!(MinFree::parse("99999999999999GiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn the_reserve_is_checked_in_bytes_and_inodes() {
        let s = Space { total_bytes: 1000 << 20, free_bytes: 100 << 20, free_inodes: 10_000 };
        assert_eq!(shortfall(&s, MinFree::Bytes(64 << 20), 0), None);
        assert!(shortfall(&s, MinFree::Bytes(64 << 20), 40 << 20).is_some(), "extra room is added to the reserve");
        let full = shortfall(&s, MinFree::Percent(20.0), 0).unwrap();
        assert_eq!(full.reserve_bytes, 200 << 20);
        assert!(full.to_string().contains("100.0 MiB free, reserve 200.0 MiB"), "{full}");
        let no_inodes = Space { free_inodes: 3, ..s };
        assert!(shortfall(&no_inodes, MinFree::Bytes(0), 0).unwrap().to_string().contains("3 inodes free"));
    }

    #[test]
    fn a_path_not_created_yet_is_measured_on_its_nearest_ancestor() {
        let d = tempfile::tempdir().unwrap();
        let s = space_of(&d.path().join("not/yet/there")).unwrap();
        assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes);
    }
}
