//! Store generations on disk: which sled directory is the live one, and how a repack switches to a new one
//! atomically.
//!
//! sled's log does not reliably give space back under steady churn, so a repack copies every live key into a
//! fresh directory and switches to it. The switch is one atomic rename of the `CURRENT` file (LevelDB's
//! trick): a crash before the rename leaves the old generation live and a half-copied directory that the
//! next start deletes; a crash after it leaves the new, fully fsynced generation live and the old one to
//! delete. No state in between is ever read.
//!
//! A data dir without `CURRENT` is generation 0 in `sled/` (the layout before repacking existed).

use std::path::Path;

pub const CURRENT_FILE: &str = "CURRENT";
const GEN0: &str = "sled";
const PREFIX: &str = "sled-";

/// The name of the live generation's directory.
pub fn current(dir: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(dir.join(CURRENT_FILE)) {
        Ok(s) => {
            let name = s.trim();
            if parse(name).is_none() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {name:?} is not a store generation", dir.join(CURRENT_FILE).display()),
                ));
            }
            Ok(name.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GEN0.to_string()),
        Err(e) => Err(e),
    }
}

fn parse(name: &str) -> Option<u64> {
    if name == GEN0 { Some(0) } else { name.strip_prefix(PREFIX)?.parse().ok() }
}

/// The directory name of the generation after `name`.
pub fn next(name: &str) -> String {
    format!("{PREFIX}{}", parse(name).unwrap_or(0) + 1)
}

/// Makes `name` the live generation: write, fsync, rename over `CURRENT`, fsync the directory.
pub fn commit(dir: &Path, name: &str) -> std::io::Result<()> {
    super::durable::write_file(dir, CURRENT_FILE, format!("{name}\n").as_bytes())
}

/// Deletes every generation directory except `keep`: a half-copied one from an interrupted repack, or the
/// one a finished repack replaced. Returns what it removed.
pub fn remove_others(dir: &Path, keep: &str) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if name != keep && (parse(&name).is_some() || is_set_aside(&name)) && entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
            removed.push(name);
        }
    }
    let _ = std::fs::remove_file(dir.join(format!("{CURRENT_FILE}.tmp")));
    Ok(removed)
}

/// Marks a generation directory renamed out of the way by [`set_aside`].
const SET_ASIDE: &str = ".gone-";

fn is_set_aside(name: &str) -> bool {
    name.starts_with(PREFIX) && name.contains(SET_ASIDE)
}

/// Renames the (never live) generation directory `name` out of the way, to be deleted at leisure: a later
/// repack may reuse its name at once. Returns the new path; [`remove_others`] deletes it if nothing else does.
pub fn set_aside(dir: &Path, name: &str) -> std::io::Result<std::path::PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let to = dir.join(format!("{name}{SET_ASIDE}{nanos}"));
    std::fs::rename(dir.join(name), &to)?;
    Ok(to)
}

/// Bytes used by the files under `path`.
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_current_the_live_generation_is_the_original_directory() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(current(d.path()).unwrap(), "sled");
        assert_eq!(next("sled"), "sled-1");
        assert_eq!(next("sled-41"), "sled-42");
    }

    #[test]
    fn commit_switches_atomically_and_cleanup_keeps_only_the_live_one() {
        let d = tempfile::tempdir().unwrap();
        for g in ["sled", "sled-1", "sled-2"] {
            std::fs::create_dir(d.path().join(g)).unwrap();
        }
        std::fs::create_dir(d.path().join("unrelated")).unwrap();
        commit(d.path(), "sled-1").unwrap();
        assert_eq!(current(d.path()).unwrap(), "sled-1");
        let mut removed = remove_others(d.path(), "sled-1").unwrap();
        removed.sort();
        assert_eq!(removed, ["sled", "sled-2"]);
        assert!(d.path().join("sled-1").is_dir() && d.path().join("unrelated").is_dir());
        // A copy set aside (a repack given up) goes too, and its name is free again at once.
        std::fs::create_dir(d.path().join("sled-2")).unwrap();
        let aside = set_aside(d.path(), "sled-2").unwrap();
        assert!(aside.is_dir() && !d.path().join("sled-2").exists());
        assert_eq!(remove_others(d.path(), "sled-1").unwrap().len(), 1);
        assert!(!aside.exists());
    }

    #[test]
    fn a_damaged_current_file_is_an_error_not_a_guess() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(CURRENT_FILE), "../../etc\n").unwrap();
        let e = current(d.path()).unwrap_err();
        assert!(e.to_string().contains("not a store generation"), "{e}");
    }
}
