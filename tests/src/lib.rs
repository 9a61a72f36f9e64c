//! Harness for end-to-end tests and benchmarks: runs the real `meterd` binary on a real data dir.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `meterd` binary under test: `$METERD_BIN`, else the one next to this test executable's profile dir.
pub fn meterd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("METERD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("meterd");
    assert!(bin.exists(), "{} not found: run `cargo build -p meterd` first or set METERD_BIN", bin.display());
    bin
}

/// A config for one product `app` (license identity) listening on an ephemeral loopback port.
pub fn basic_config(data_dir: &Path, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[storage]
data_dir = "{}"

[products.app]
identity = "license"
dimensions = ["api_calls", "gb_hours"]

{extra}
"#,
        data_dir.display()
    )
}

/// A running `meterd run` process.
pub struct Agent {
    child: Option<Child>,
    pub tcp: Option<String>,
    pub unix: Option<PathBuf>,
    pub config_path: PathBuf,
    _config_dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `meterd run --config` with `config` and waits for its ready line.
    pub fn start(config: &str) -> anyhow::Result<Self> {
        let config_dir = tempfile::tempdir()?;
        let config_path = config_dir.path().join("meterd.toml");
        std::fs::write(&config_path, config)?;
        Self::start_with(&config_path, config_dir, &[])
    }

    fn start_with(config_path: &Path, config_dir: tempfile::TempDir, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(meterd_bin());
        cmd.arg("run").arg("--config").arg(config_path).stdout(Stdio::piped()).stderr(Stdio::inherit());
        cmd.env("METERD_LOG", std::env::var("METERD_LOG").unwrap_or_else(|_| "warn".into()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            // Keep draining so the agent never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait()?;
                anyhow::bail!("meterd did not become ready (exit: {status})");
            }
        };
        let field =
            |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string));
        Ok(Agent {
            tcp: field("tcp"),
            unix: field("unix").map(PathBuf::from),
            child: Some(child),
            config_path: config_path.to_path_buf(),
            _config_dir: config_dir,
        })
    }

    /// Starts again with the same config file (after a kill or stop).
    pub fn restart(mut self) -> anyhow::Result<Self> {
        assert!(self.child.is_none(), "stop or kill the agent first");
        let dir = std::mem::replace(&mut self._config_dir, tempfile::tempdir()?);
        Self::start_with(&self.config_path.clone(), dir, &[])
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn target(&self) -> String {
        self.tcp.clone().expect("tcp listener")
    }

    pub async fn client(&self) -> anyhow::Result<meterd_proto::client::Client> {
        Ok(meterd_proto::client::Client::connect(&self.target(), Duration::from_secs(5)).await?)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        let mut c = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                anyhow::bail!("meterd did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}
