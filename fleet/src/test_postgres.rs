//! A real, throwaway PostgreSQL server for tests and benchmarks: `initdb` into a temporary directory, `pg_ctl
//! start` on a free loopback port, stopped and deleted on drop. No mocks: fleet tests run against the same engine
//! sellers run (RDS, Aurora), from Debian's `postgresql` package.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: the server then runs as the `postgres` system user
//! (created by the Debian package) through `runuser`, and the directory is handed to that user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "PostgreSQL server binaries not found (looked for initdb in $METERD_PG_BINDIR, `pg_config --bindir` and \
         /usr/lib/postgresql/*/bin): install Debian's `postgresql` package"
    )]
    NotInstalled,
    #[error("{step}: {detail}")]
    Failed { step: &'static str, detail: String },
}

fn failed(step: &'static str, detail: impl std::fmt::Display) -> HarnessError {
    HarnessError::Failed { step, detail: detail.to_string() }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn bindir() -> Result<PathBuf, HarnessError> {
    let has_initdb = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("METERD_PG_BINDIR").map(PathBuf::from) {
        return if has_initdb(&d) { Ok(d) } else { Err(HarnessError::NotInstalled) };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&d) {
            return Ok(d);
        }
    }
    // Debian keeps the server binaries out of PATH; the newest major version wins.
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| has_initdb(d))
        .collect();
    found.sort();
    found.pop().map(|(_, d)| d).ok_or(HarnessError::NotInstalled)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the server's user: `postgres` through `runuser` when we are root, ourselves otherwise.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(step: &'static str, mut cmd: Command) -> Result<(), HarnessError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| failed(step, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(step, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))))
    }
}

fn free_port() -> Result<u16, HarnessError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed("pick a port", e))?;
    Ok(l.local_addr().map_err(|e| failed("pick a port", e))?.port())
}

/// A running throwaway server. The database `meterd` exists; the superuser `meterd` connects without a
/// password over loopback.
pub struct TestPostgres {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
    /// Extra server options (TLS settings).
    options: String,
}

impl TestPostgres {
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(None)
    }

    /// A server that also accepts TLS, with this certificate chain and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<Self, HarnessError> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Result<Self, HarnessError> {
        let bindir = bindir()?;
        let dir = tempfile::Builder::new().prefix("meterd-pg-").tempdir().map_err(|e| failed("temp dir", e))?;
        if is_root() {
            run("chown the data dir to postgres", {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(dir.path());
                c
            })?;
        }
        let data = dir.path().join("data");
        run("initdb", {
            let mut c = as_server_user(&bindir.join("initdb"));
            c.arg("-D").arg(&data).args(["-U", "meterd", "--auth=trust", "-E", "UTF8", "--locale=C"]);
            c
        })?;
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert_path, cert).map_err(|e| failed("write server.crt", e))?;
            std::fs::write(&key_path, key).map_err(|e| failed("write server.key", e))?;
            use std::os::unix::fs::PermissionsExt;
            // The server refuses a key others can read.
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| failed("chmod server.key", e))?;
            if is_root() {
                run("chown the TLS files to postgres", {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&cert_path).arg(&key_path);
                    c
                })?;
            }
            options =
                format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert_path.display(), key_path.display());
        }
        let mut pg = TestPostgres { bindir, dir, port: 0, running: false, options };
        // A port picked now can be taken before the server binds it: try a few.
        let mut last = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.pg_ctl_start() {
                Ok(()) => {
                    pg.running = true;
                    pg.create_database()?;
                    return Ok(pg);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| failed("pg_ctl start", "no attempt")))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) -> Result<(), HarnessError> {
        // The socket directory is the temp dir itself (the default /var/run/postgresql needs root to create).
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200{}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        run("pg_ctl start", {
            let mut c = as_server_user(&self.bindir.join("pg_ctl"));
            c.arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-o", &options, "-w", "-t", "60", "start"]);
            c
        })
    }

    fn create_database(&self) -> Result<(), HarnessError> {
        let psql = self.bindir.join("psql");
        let program = if psql.is_file() { psql } else { PathBuf::from("psql") };
        run("create database meterd", {
            let mut c = Command::new(program);
            c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "meterd", "-d", "postgres", "-q"])
                .args(["-c", "CREATE DATABASE meterd"]);
            c
        })
    }

    /// `postgres://meterd@127.0.0.1:PORT/meterd`
    pub fn url(&self) -> String {
        format!("postgres://meterd@127.0.0.1:{}/meterd", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Makes `role` authenticate with its password (SCRAM), over TLS only, as RDS does for IAM tokens: the
    /// rule goes before initdb's `trust` lines, then the server reloads its configuration.
    pub fn require_password_over_tls(&self, role: &str) -> Result<(), HarnessError> {
        let hba = self.data().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).map_err(|e| failed("read pg_hba.conf", e))?;
        let rules = format!(
            "hostssl all {role} 127.0.0.1/32 scram-sha-256\nhost all {role} 127.0.0.1/32 reject\n\
             host all {role} ::1/128 reject\n"
        );
        std::fs::write(&hba, format!("{rules}{old}")).map_err(|e| failed("write pg_hba.conf", e))?;
        run("pg_ctl reload", {
            let mut c = as_server_user(&self.bindir.join("pg_ctl"));
            c.arg("-D").arg(self.data()).arg("reload");
            c
        })
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server: `fast` lets it finish cleanly; otherwise `immediate` (crash-like, recovery at the next
    /// start).
    pub fn stop(&mut self, fast: bool) -> Result<(), HarnessError> {
        if !self.running {
            return Ok(());
        }
        run("pg_ctl stop", {
            let mut c = as_server_user(&self.bindir.join("pg_ctl"));
            c.arg("-D").arg(self.data()).args(["-m", if fast { "fast" } else { "immediate" }, "-w", "stop"]);
            c
        })?;
        self.running = false;
        Ok(())
    }

    /// Starts the server again on the same port (after `stop`).
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.pg_ctl_start() {
                Ok(()) => {
                    self.running = true;
                    return Ok(());
                }
                // The port can linger a moment after an immediate stop.
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// A restart as an operator (or a managed failover) would do it: in-flight sessions are cut.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop(false)?;
        self.start_again()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self.stop(false);
    }
}
