//! Stamps the source commit into the binary (`meterd --version`), so a bug report or a running fleet names the
//! exact source it was built from. Sources, first that answers: `$METERD_GIT_COMMIT`; the git checkout this
//! crate is tracked in; `.cargo_vcs_info.json` (written by `cargo package`); `git-archival.txt` (filled in by
//! `git archive`, see `.gitattributes`); else "unknown". A build from a tarball without `.git` must still work.
//! `main.rs` includes this file in its tests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-env-changed=METERD_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let found = source_commit(&dir, std::env::var("METERD_GIT_COMMIT").ok());
    for file in &found.watch {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rustc-env=METERD_GIT_COMMIT={}", found.commit);
}

/// The commit, and the files whose change means it may have changed (only existing ones: cargo reruns a build
/// script on every build while a watched path is missing).
struct SourceCommit {
    commit: String,
    watch: Vec<PathBuf>,
}

const SHORT: usize = 12;

fn source_commit(dir: &Path, from_env: Option<String>) -> SourceCommit {
    let mut watch: Vec<PathBuf> =
        ["git-archival.txt", ".cargo_vcs_info.json"].iter().map(|f| dir.join(f)).filter(|f| f.exists()).collect();
    if let Some(c) = from_env.as_deref().map(str::trim).filter(|c| is_hex_commit(c)) {
        return SourceCommit { commit: short(c), watch };
    }
    if let Some((commit, git_files)) = git_head(dir) {
        watch.extend(git_files);
        return SourceCommit { commit, watch };
    }
    let commit = vcs_info_sha1(dir).or_else(|| archival_commit(dir)).unwrap_or_else(|| "unknown".to_string());
    SourceCommit { commit, watch }
}

fn is_hex_commit(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn short(commit: &str) -> String {
    commit[..commit.len().min(SHORT)].to_ascii_lowercase()
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

/// HEAD of the git checkout that tracks this crate's build.rs. An unpacked tarball that merely sits inside some
/// other repository (a vendored copy) does not take that repository's commit.
fn git_head(dir: &Path) -> Option<(String, Vec<PathBuf>)> {
    git(dir, &["ls-files", "--error-unmatch", "build.rs"])?;
    let commit = git(dir, &["rev-parse", "HEAD"]).filter(|c| is_hex_commit(c))?;
    // HEAD names the branch; a commit moves the branch's ref (loose, or packed by `git gc`).
    let mut watch = vec![PathBuf::from(git(dir, &["rev-parse", "--git-path", "HEAD"])?)];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(PathBuf::from(git(dir, &["rev-parse", "--git-path", &branch])?));
    }
    watch.push(PathBuf::from(git(dir, &["rev-parse", "--git-path", "packed-refs"])?));
    let watch =
        watch.into_iter().map(|p| if p.is_relative() { dir.join(p) } else { p }).filter(|p| p.exists()).collect();
    Some((short(&commit), watch))
}

/// `"sha1": "<hex>"` in `.cargo_vcs_info.json` (a fixed shape written by cargo; no JSON parser needed).
fn vcs_info_sha1(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")).ok()?;
    let rest = &text[text.find("\"sha1\"")? + "\"sha1\"".len()..];
    let value = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let sha = &value[..value.find('"')?];
    is_hex_commit(sha).then(|| short(sha))
}

/// `git archive` replaces `$Format:%H$` in git-archival.txt with the commit; unexpanded, it says nothing.
fn archival_commit(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("git-archival.txt")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("commit:")).map(str::trim).filter(|c| is_hex_commit(c)).map(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn run_git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"])
            .args(args)
            .status()
            .expect("git runs");
        assert!(ok.success(), "git {args:?}");
    }

    #[test]
    fn without_git_the_archival_file_names_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("git-archival.txt"), format!("commit: {SHA}\n")).unwrap();
        let found = source_commit(dir.path(), None);
        assert_eq!(found.commit, "0123456789ab");
        assert_eq!(found.watch, vec![dir.path().join("git-archival.txt")]);
    }

    #[test]
    fn an_unexpanded_archival_file_and_no_git_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("git-archival.txt"), "commit: $Format:%H$\n").unwrap();
        assert_eq!(source_commit(dir.path(), None).commit, "unknown");
        assert_eq!(source_commit(tempfile::tempdir().unwrap().path(), None).commit, "unknown");
    }

    #[test]
    fn cargo_vcs_info_names_the_commit_of_a_packaged_crate() {
        let dir = tempfile::tempdir().unwrap();
        let info = format!("{{\n  \"git\": {{\n    \"sha1\": \"{SHA}\"\n  }},\n  \"path_in_vcs\": \"agent\"\n}}");
        std::fs::write(dir.path().join(".cargo_vcs_info.json"), info).unwrap();
        assert_eq!(source_commit(dir.path(), None).commit, "0123456789ab");
    }

    #[test]
    fn the_environment_wins_and_must_be_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(source_commit(dir.path(), Some(SHA.to_uppercase())).commit, "0123456789ab");
        assert_eq!(source_commit(dir.path(), Some("main; rm -rf /".into())).commit, "unknown");
    }

    #[test]
    fn a_checkout_names_its_head_and_watches_the_branch_ref() {
        let repo = tempfile::tempdir().unwrap();
        let crate_dir = repo.path().join("agent");
        std::fs::create_dir(&crate_dir).unwrap();
        std::fs::write(crate_dir.join("build.rs"), "fn main() {}\n").unwrap();
        run_git(repo.path(), &["init", "-q", "-b", "main"]);
        run_git(repo.path(), &["add", "."]);
        run_git(repo.path(), &["commit", "-q", "-m", "one"]);
        let head = git(repo.path(), &["rev-parse", "HEAD"]).unwrap();
        let found = source_commit(&crate_dir, None);
        assert_eq!(found.commit, head[..SHORT]);
        let branch_ref = repo.path().join(".git/refs/heads/main").canonicalize().unwrap();
        assert!(found.watch.iter().any(|p| p.canonicalize().ok().as_ref() == Some(&branch_ref)), "{:?}", found.watch);
    }

    #[test]
    fn a_copy_inside_another_repository_does_not_take_its_commit() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::write(repo.path().join("other.txt"), "x").unwrap();
        run_git(repo.path(), &["init", "-q"]);
        run_git(repo.path(), &["add", "."]);
        run_git(repo.path(), &["commit", "-q", "-m", "other project"]);
        let vendored = repo.path().join("vendor/meterd/agent");
        std::fs::create_dir_all(&vendored).unwrap();
        std::fs::write(vendored.join("build.rs"), "fn main() {}\n").unwrap();
        std::fs::write(vendored.join("git-archival.txt"), format!("commit: {SHA}\n")).unwrap();
        assert_eq!(source_commit(&vendored, None).commit, "0123456789ab");
    }
}
