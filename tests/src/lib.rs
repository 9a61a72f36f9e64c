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

/// Spawns `cmd` and waits (30 s at most) for the first line it prints: the ready/banner line. Its output keeps
/// being drained so it never blocks on a full pipe.
fn spawn_until_first_line(mut cmd: Command) -> anyhow::Result<(Child, String)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => Ok((child, line)),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait()?;
            anyhow::bail!("{:?} printed no ready line (exit: {status})", cmd.get_args().collect::<Vec<_>>())
        }
    }
}

/// A fresh temporary directory under `root` for a benchmark's data, creating `root` first if needed (a
/// benchmark's `--data-root` may name a directory that does not exist yet).
pub fn bench_data_dir(root: &Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(root).map_err(|e| anyhow::anyhow!("--data-root {}: {e}", root.display()))?;
    Ok(tempfile::tempdir_in(root)?)
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

/// Marker in an env list: remove the test's own `AWS_*` variables first.
const CLEAR_AWS_ENV: &str = "\0clear-aws-env";

/// A running `meterd run` process.
pub struct Agent {
    child: Option<Child>,
    pub tcp: Option<String>,
    pub unix: Option<PathBuf>,
    /// The admin listener's address, when configured.
    pub admin: Option<String>,
    /// The marketplace listener's address, when configured.
    pub http: Option<String>,
    /// The embedded emulator's URL (`run --simulate`).
    pub emulator: Option<String>,
    pub config_path: PathBuf,
    /// Arguments after `run --config FILE` (kept for a restart).
    args: Vec<String>,
    _config_dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `meterd run --config` with `config` and waits for its ready line.
    pub fn start(config: &str) -> anyhow::Result<Self> {
        let config_dir = tempfile::tempdir()?;
        let config_path = config_dir.path().join("meterd.toml");
        std::fs::write(&config_path, config)?;
        Self::start_with(&config_path, config_dir, &[], Vec::new())
    }

    /// [`Agent::start`] with more arguments to `meterd run` (e.g. `--simulate --speed 1`).
    pub fn start_with_args(config: &str, args: &[&str]) -> anyhow::Result<Self> {
        let config_dir = tempfile::tempdir()?;
        let config_path = config_dir.path().join("meterd.toml");
        std::fs::write(&config_path, config)?;
        Self::start_with(&config_path, config_dir, &[], args.iter().map(|a| a.to_string()).collect())
    }

    /// [`Agent::start`] with `env` set and every `AWS_*` variable of the test's own environment removed, so the
    /// agent's AWS credential and Region chains see only what the test gives them.
    pub fn start_with_aws_env(config: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let config_dir = tempfile::tempdir()?;
        let config_path = config_dir.path().join("meterd.toml");
        std::fs::write(&config_path, config)?;
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push((CLEAR_AWS_ENV, ""));
        Self::start_with(&config_path, config_dir, &env, Vec::new())
    }

    fn start_with(
        config_path: &Path,
        config_dir: tempfile::TempDir,
        env: &[(&str, &str)],
        args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(meterd_bin());
        cmd.arg("run").arg("--config").arg(config_path).args(&args);
        cmd.env("METERD_LOG", std::env::var("METERD_LOG").unwrap_or_else(|_| "warn".into()));
        if env.iter().any(|(k, _)| *k == CLEAR_AWS_ENV) {
            for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("AWS_")) {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env.iter().filter(|(k, _)| *k != CLEAR_AWS_ENV) {
            cmd.env(k, v);
        }
        let (child, line) = spawn_until_first_line(cmd)?;
        let field =
            |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string));
        Ok(Agent {
            tcp: field("tcp"),
            unix: field("unix").map(PathBuf::from),
            admin: field("admin"),
            http: field("http"),
            emulator: field("emulator"),
            args,
            child: Some(child),
            config_path: config_path.to_path_buf(),
            _config_dir: config_dir,
        })
    }

    /// Starts again with the same config file (after a kill or stop).
    pub fn restart(mut self) -> anyhow::Result<Self> {
        assert!(self.child.is_none(), "stop or kill the agent first");
        let dir = std::mem::replace(&mut self._config_dir, tempfile::tempdir()?);
        let args = std::mem::take(&mut self.args);
        Self::start_with(&self.config_path.clone(), dir, &[], args)
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

    /// Waits up to `within` for the agent to exit by itself: its exit status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            let c = self.child.as_mut().expect("running");
            if let Some(status) = c.try_wait()? {
                self.child = None;
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        match self.wait_exit(Duration::from_secs(30))? {
            Some(status) => Ok(status.code()),
            None => {
                self.kill9();
                anyhow::bail!("meterd did not exit within 30 s of SIGTERM")
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The agent and the emulator in this process, sharing one manual clock: the real AWS SDK talks HTTP to
/// the emulator; the test moves time.
pub mod crash;

pub mod stack {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use meterd::clock::{ManualClock, SharedClock};
    use meterd::config::Config;
    use meterd::simulate::EmulatorClock;
    use meterd_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
    use meterd_proto::v1;

    pub const HOUR: i64 = 3_600_000;
    pub const ACCOUNT: &str = "111122223333";

    pub fn arn(n: usize) -> String {
        format!("arn:aws:license-manager::{ACCOUNT}:license:l-{n:04}")
    }

    pub struct Stack {
        pub clock: Arc<ManualClock>,
        pub emulator: Emulator,
        emu_handle: Option<EmulatorHandle>,
        pub target: String,
        /// The marketplace HTTP endpoints, when the config enables them.
        pub http: Option<std::net::SocketAddr>,
        /// The admin listener (`/metrics`), when the config enables it.
        pub admin: Option<std::net::SocketAddr>,
        pub client: meterd_proto::client::Client,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
        pub data: tempfile::TempDir,
    }

    /// Agent config: product `app` (license identity, dimensions given) submitting to `endpoint`.
    pub fn agent_toml(data: &std::path::Path, endpoint: &str, dimensions: &[&str], extra: &str) -> String {
        let dims: Vec<String> = dimensions.iter().map(|d| format!("{d:?}")).collect();
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
[pipeline]
{grace}
tick = "20ms"
{extra}
[accounts.emu]
region = "us-east-1"
endpoint_url = "{endpoint}"
test_credentials = true
calls_per_second = {rate}
call_timeout = "2s"
[products.app]
identity = "license"
product_code = "prod-code-app"
dimensions = [{}]
"#,
            data.display(),
            dims.join(", "),
            rate = std::env::var("METERD_TEST_CALLS_PER_SECOND").unwrap_or_else(|_| "8".into()),
            grace = if extra.contains("seal_grace") { "" } else { "seal_grace = \"1m\"" },
        )
    }

    impl Stack {
        /// Starts the emulator (product `prod-code-app`, customers given) and the agent at `start_ms`.
        pub async fn start(
            start_ms: i64,
            mut emu: EmulatorConfig,
            dimensions: &[&str],
            emulator_dimensions: &[&str],
            customers: usize,
            pipeline_extra: &str,
        ) -> anyhow::Result<Self> {
            let clock = ManualClock::new(start_ms);
            let shared: SharedClock = clock.clone();
            emu.products.push(meterd_emulator::EmuProduct {
                product_code: "prod-code-app".into(),
                dimensions: emulator_dimensions.iter().map(|s| s.to_string()).collect(),
            });
            for n in 0..customers {
                emu.customers.push(meterd_emulator::EmuCustomer::licensed("prod-code-app", ACCOUNT, &arn(n)));
            }
            if emu.rate_limit_per_sec == 0.0 {
                emu.rate_limit_per_sec = 10.0;
            }
            // Always: every end-to-end run also checks meterd sends license records as the other AWS SDKs do.
            emu.strict_wire = true;
            if emu.submission_window_secs == 0 {
                emu.submission_window_secs = 24 * 3600;
            }
            let emulator = Emulator::new(emu, Arc::new(EmulatorClock(shared.clone())));
            let emu_handle = emulator.start(tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
            let data = tempfile::tempdir()?;
            let text = agent_toml(&data.path().join("data"), &emu_handle.endpoint_url(), dimensions, pipeline_extra);
            let config = Config::from_toml_with_env(&text, std::path::Path::new("test.toml"), |_| None)?;
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let join = tokio::spawn(meterd::app::run(
                config,
                shared,
                None,
                move |r| {
                    let _ = ready_tx.send((r.tcp.expect("tcp"), r.http, r.admin));
                },
                async move {
                    let _ = stop_rx.await;
                },
            ));
            let (addr, http, admin) = tokio::time::timeout(Duration::from_secs(20), ready_rx).await??;
            let target = addr.to_string();
            let client = meterd_proto::client::Client::connect(&target, Duration::from_secs(5)).await?;
            Ok(Stack {
                clock,
                emulator,
                emu_handle: Some(emu_handle),
                target,
                http,
                admin,
                client,
                stop: Some(stop),
                join: Some(join),
                data,
            })
        }

        pub async fn record(
            &self,
            key: &str,
            customer: usize,
            dimension: &str,
            quantity: &str,
            at_ms: i64,
        ) -> Result<v1::Receipt, tonic::Status> {
            let ev = event(key, customer, dimension, quantity, at_ms);
            Ok(self
                .client
                .metering()
                .record_usage(v1::RecordUsageRequest { event: Some(ev) })
                .await?
                .into_inner()
                .receipt
                .unwrap())
        }

        /// Another system (a second agent, another meterer of the product) bills `quantity` for `customer`'s
        /// hour straight at the emulator, as AWS would see it: meterd's own record for that key then gets
        /// DuplicateRecord. Returns the emulator's answer body.
        pub async fn bill_elsewhere(&self, customer: usize, dimension: &str, quantity: u64, hour_ms: i64) -> String {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let addr = self.emu_handle.as_ref().expect("emulator running").addr();
            let body = serde_json::json!({"UsageRecords": [{
                "Timestamp": hour_ms / 1000, "CustomerAWSAccountId": ACCOUNT, "LicenseArn": arn(customer),
                "Dimension": dimension, "Quantity": quantity,
            }]})
            .to_string();
            let req = format!(
                "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.1\r\n\
                 X-Amz-Target: AWSMPMeteringService.BatchMeterUsage\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the emulator");
            s.write_all(req.as_bytes()).await.expect("write");
            let mut buf = String::new();
            s.read_to_string(&mut buf).await.expect("read");
            buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
        }

        pub async fn report(&self) -> v1::ReportResponse {
            self.client.admin().report(v1::ReportRequest {}).await.expect("report").into_inner()
        }

        /// Polls the report until `done` holds (real-time bound only against hangs).
        pub async fn wait_for(
            &self,
            what: &str,
            timeout: Duration,
            mut done: impl FnMut(&v1::ReportResponse) -> bool,
        ) -> v1::ReportResponse {
            let start = Instant::now();
            loop {
                let r = self.report().await;
                if done(&r) {
                    return r;
                }
                if start.elapsed() > timeout {
                    panic!("timed out waiting for {what}; last report totals: {:?}", r.totals);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }

        /// Moves the clock forward in steps, letting the pipeline run between them.
        pub async fn advance(&self, total_ms: i64, step_ms: i64) {
            let mut moved = 0;
            while moved < total_ms {
                let s = step_ms.min(total_ms - moved);
                self.clock.advance(s);
                moved += s;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }

        pub async fn stop(mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            if let Some(j) = self.join.take() {
                j.await.expect("agent task").expect("agent exits cleanly");
            }
            if let Some(h) = self.emu_handle.take() {
                h.shutdown().await;
            }
        }
    }

    impl Stack {
        /// Where the emulator listens (for a second client sharing its quota).
        pub fn emulator_addr(&self) -> Option<std::net::SocketAddr> {
            self.emu_handle.as_ref().map(|h| h.addr())
        }
    }

    /// A raw HTTP/1.1 POST (the marketplace endpoints take forms and JSON); returns (status, headers, body).
    pub async fn http_post(
        addr: std::net::SocketAddr,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, String, String) {
        http_post_with(addr, path, content_type, &[], body).await
    }

    /// [`http_post`] with extra headers.
    pub async fn http_post_with(
        addr: std::net::SocketAddr,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String, String) {
        http_send(addr, "POST", path, content_type, headers, body).await
    }

    /// A raw HTTP/1.1 PUT of a JSON body (the emulator's `/_emulator/customers`); returns (status, body).
    pub async fn http_put_json(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
        let (status, _, body) = http_send(addr, "PUT", path, "application/json", &[], body).await;
        (status, body)
    }

    async fn http_send(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.expect("read");
        let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, head.to_string(), body.to_string())
    }

    /// Prometheus text as sample (name with labels) → value.
    pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN))))
            .collect()
    }

    /// A raw HTTP/1.1 GET; returns (status, body).
    pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.expect("read");
        let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
    }

    pub fn event(key: &str, customer: usize, dimension: &str, quantity: &str, at_ms: i64) -> v1::UsageEvent {
        v1::UsageEvent {
            idempotency_key: key.into(),
            customer: Some(v1::Customer {
                identity: Some(v1::customer::Identity::AwsAccount(v1::AwsCustomer {
                    customer_aws_account_id: ACCOUNT.into(),
                    license_arn: arn(customer),
                })),
            }),
            dimension: dimension.into(),
            quantity: quantity.into(),
            timestamp: Some(meterd_proto::Timestamp { seconds: at_ms.div_euclid(1000), nanos: 0 }),
            tags: Default::default(),
            product: String::new(),
        }
    }
}

/// `meterd emulator` as its own process, as sellers run it.
pub struct EmulatorProcess {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl EmulatorProcess {
    pub fn start(config_toml: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("emulator.toml");
        std::fs::write(&path, config_toml)?;
        let mut cmd = Command::new(meterd_bin());
        cmd.args(["emulator", "--listen", "127.0.0.1:0", "--config"]).arg(&path).env("METERD_LOG", "warn");
        let (child, line) = spawn_until_first_line(cmd)?;
        let url = line.rsplit(' ').next().unwrap_or_default().to_string();
        anyhow::ensure!(url.starts_with("http://"), "unexpected emulator banner {line:?}");
        Ok(Self { child, url, _dir: dir })
    }

    /// GET on the inspection API (`/_emulator/...`), parsed as JSON.
    pub fn inspect(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        use std::io::{Read, Write};
        let hostport = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(hostport)?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let (head, body) = buf.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP body"))?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "inspection {path}: {head}");
        Ok(serde_json::from_str(body)?)
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bench_data_dir_creates_a_missing_root() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("not/yet/there");
        let dir = super::bench_data_dir(&root).unwrap();
        assert!(dir.path().is_dir() && dir.path().starts_with(&root));
    }
}
