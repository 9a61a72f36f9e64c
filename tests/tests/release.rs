//! What a release carries: `meterd --version` names the version and the commit; one version across the agent,
//! the protocol crate, both SDKs and the changelog; the binary tarball holds what an operator needs and states
//! the glibc it needs. (Building and installing the wheel and npm packages: tests/packages/run.sh.)

use std::path::{Path, PathBuf};
use std::process::Command;

use meterd_tests::meterd_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn workspace_version() -> String {
    let cargo: toml::Table = read("Cargo.toml").parse().unwrap();
    cargo["workspace"]["package"]["version"].as_str().unwrap().to_string()
}

fn git_head() -> Option<String> {
    let out = Command::new("git").arg("-C").arg(repo()).args(["rev-parse", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8(out.stdout).unwrap().trim().to_string())
}

#[test]
fn version_names_the_release_and_the_commit() {
    let out = Command::new(meterd_bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let commit = match git_head() {
        Some(head) => head[..12].to_string(),
        // A tree exported with `git archive`: the commit it wrote into git-archival.txt, if it did.
        None => read("agent/git-archival.txt")
            .trim()
            .strip_prefix("commit: ")
            .filter(|c| c.len() >= 12 && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .map_or("unknown".to_string(), |c| c[..12].to_string()),
    };
    assert_eq!(text.trim(), format!("meterd {} (commit {commit})", workspace_version()));
}

#[test]
fn one_version_for_agent_protocol_sdks_and_changelog() {
    let version = workspace_version();
    // Every crate inherits the workspace version; maturin gives it to the wheel (dynamic = ["version"]).
    for krate in ["agent", "proto", "sdk-python", "sdk-node"] {
        let manifest: toml::Table = read(&format!("{krate}/Cargo.toml")).parse().unwrap();
        assert_eq!(manifest["package"]["version"]["workspace"].as_bool(), Some(true), "{krate}/Cargo.toml");
    }
    let pyproject: toml::Table = read("sdk-python/pyproject.toml").parse().unwrap();
    assert!(pyproject["project"].get("version").is_none(), "pyproject.toml must take the Cargo version");
    assert_eq!(pyproject["project"]["dynamic"].as_array().unwrap()[0].as_str(), Some("version"));

    let node = json("sdk-node/package.json");
    assert_eq!(node["version"], version.as_str(), "sdk-node/package.json");
    assert_eq!(json("sdk-node/package-lock.json")["version"], version.as_str(), "sdk-node/package-lock.json");
    let npm = repo().join("sdk-node/npm");
    let mut platforms = 0;
    for dir in std::fs::read_dir(&npm).unwrap() {
        let p = json(&format!("sdk-node/npm/{}/package.json", dir.unwrap().file_name().to_string_lossy()));
        assert_eq!(p["version"], version.as_str(), "{}", p["name"]);
        assert!(p["name"].as_str().unwrap().starts_with("@meterd/meterd-"), "{}", p["name"]);
        platforms += 1;
    }
    assert_eq!(platforms, node["napi"]["targets"].as_array().unwrap().len(), "one npm/ dir per napi target");

    // Keep a Changelog: the newest section is this version.
    let changelog = read("CHANGELOG.md");
    let newest = changelog.lines().find(|l| l.starts_with("## [")).expect("a version section");
    assert!(newest.starts_with(&format!("## [{version}]")), "newest CHANGELOG.md section: {newest}");
}

#[test]
fn licence_copies_match_and_the_release_workflow_builds_every_npm_target() {
    let licence = read("LICENSE");
    assert!(licence.contains("Apache License") && licence.contains("Version 2.0"));
    assert_eq!(read("sdk-python/LICENSE"), licence, "sdk-python/LICENSE");
    assert_eq!(read("sdk-node/LICENSE"), licence, "sdk-node/LICENSE");
    let workflow = read(".github/workflows/release.yml");
    for target in json("sdk-node/package.json")["napi"]["targets"].as_array().unwrap() {
        let target = target.as_str().unwrap();
        // A matrix entry `{ host: …, target: T }` or `{ …, target: T, cross: … }`.
        let entry = [format!("target: {target} }}"), format!("target: {target},")];
        assert!(entry.iter().any(|e| workflow.contains(e.as_str())), "release.yml does not build {target}");
    }
}

#[test]
fn agent_tarball_holds_binary_docs_config_unit_licence_and_states_glibc() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(repo().join("release/agent-tarball.sh"))
        .arg("--bin")
        .arg(meterd_bin())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let tarball = PathBuf::from(String::from_utf8(run.stdout).unwrap().lines().next().unwrap());
    let name = tarball.file_name().unwrap().to_str().unwrap().strip_suffix(".tar.gz").unwrap().to_string();
    assert!(name.starts_with(&format!("meterd-{}-", workspace_version())), "{name}");
    let ok = Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(out.path()).status().unwrap();
    assert!(ok.success());
    let dir = out.path().join(&name);
    for file in [
        "meterd",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "operations.md",
        "meterd.toml",
        "systemd/meterd.service",
        "systemd/meterd.env",
        "BUILD-INFO",
    ] {
        assert!(dir.join(file).is_file(), "{name}.tar.gz has no {file}");
    }
    // The packed binary runs, and the example config it ships with is valid for it.
    let version = Command::new(dir.join("meterd")).arg("--version").output().unwrap();
    let expected = Command::new(meterd_bin()).arg("--version").output().unwrap();
    assert_eq!(version.stdout, expected.stdout);
    let check = Command::new(dir.join("meterd")).arg("check-config").arg(dir.join("meterd.toml")).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    let info = std::fs::read_to_string(dir.join("BUILD-INFO")).unwrap();
    let glibc = info.lines().find_map(|l| l.strip_prefix("glibc >= ")).expect("a glibc line");
    let (major, minor) = glibc.split_once(' ').unwrap().0.split_once('.').unwrap();
    assert_eq!(major, "2", "{info}");
    assert!(minor.parse::<u32>().unwrap() >= 17, "{info}");
    assert!(info.contains("libc.so.6"), "{info}");
}
