//! A full disk must never cost the store. On a real small filesystem (a tmpfs this test mounts; CI runs as
//! root), as an operator's bad day goes: usage recorded while another process fills the disk to the last byte,
//! the agent SIGKILLed, started again and again while the disk is still full (systemd's `Restart=always`), then
//! started after space was freed. Every run must reopen with every acknowledged event exactly once. A second
//! test shows the reserve at work: ingest refused with RESOURCE_EXHAUSTED before the disk is full, resumed
//! without a restart once space is freed.
//!
//! tmpfs is a real kernel filesystem: ENOSPC comes from the same write path as on ext4 or xfs (no LD_PRELOAD,
//! no fault injection), and statvfs reports what the agent would see. `METERD_DISK_SEED` / `METERD_DISK_RUNS`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meterd_proto::v1;
use meterd_tests::crash::{
    Acked, Attempted, Load, assert_all_acknowledged_present, assert_in_shared_ledger, keys_and_quantities, load,
    random_event, retry_all,
};
use meterd_tests::{Agent, meterd_bin};
use rand::{Rng, SeedableRng};

const FS_MIB: u64 = 48;

/// A tmpfs of `FS_MIB` mounted on a fresh directory; unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount() -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_MIB}m,mode=0755",), "meterd-test"])
            .arg(dir.path())
            .status()
            .expect("run mount (the test needs root)");
        assert!(ok.success(), "mounting a tmpfs failed: this test needs root (CI runs as root)");
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a ballast file until the filesystem is full (ENOSPC); returns its path.
    fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.path().join(name);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("ballast: {e}"),
            }
        }
        // The last partial blocks too.
        for size in [4096usize, 512, 1] {
            while f.write_all(&vec![0u8; size]).is_ok() {}
        }
        path
    }

    fn free_bytes(&self) -> u64 {
        meterd::store::space::space_of(self.path()).unwrap().free_bytes
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn config(data: &Path, min_free: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
min_free = "{min_free}"
cache_mb = 16
[products.app]
identity = "license"
dimensions = ["api_calls", "gb_hours"]
"#,
        data.display()
    )
}

/// Runs `meterd run` and expects it to exit (not to start): returns its exit code and stderr.
fn start_must_fail(config_path: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(meterd_bin())
        .args(["run", "--config"])
        .arg(config_path)
        .env("METERD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("meterd started on a full disk (or hung) instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!stdout.contains("meterd ready"), "meterd started on a full disk: {stdout}");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_filled_to_the_last_byte_and_restarted_on_a_full_disk_reopens_intact() {
    let seed: u64 = std::env::var("METERD_DISK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261129);
    let runs: usize = std::env::var("METERD_DISK_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    eprintln!("disk-full test seed={seed} runs={runs} (METERD_DISK_SEED replays it)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for run in 0..runs {
        let fs = SmallFs::mount();
        let data = fs.path().join("data");
        // A small reserve, so the agent itself keeps writing until the ballast takes the last bytes.
        let mut agent = Agent::start(&config(&data, "1MiB")).unwrap();
        let config_path = agent.config_path.clone();
        let acked: Acked = Default::default();
        let attempted: Attempted = Default::default();
        let shape = Load { callers: 8, batch_every: 2, batch_size: 50, past_share: 0.0 };
        let load = tokio::spawn(load(agent.target(), acked.clone(), attempted.clone(), run, seed, shape));
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        // Another process fills the filesystem while the agent writes.
        let ballast = fs.fill("ballast");
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        agent.kill9();
        load.await.unwrap();
        // Restart loop on the still-full disk: every start refuses before touching the store.
        let starts = rng.random_range(1..=4);
        for _ in 0..starts {
            let (code, stderr) = start_must_fail(&config_path);
            assert_eq!(code, Some(1), "run {run}: {stderr}");
            assert!(stderr.contains("disk nearly full"), "run {run}: the refusal must say why: {stderr}");
        }
        std::fs::remove_file(&ballast).unwrap();
        let agent = agent.restart().unwrap_or_else(|e| panic!("run {run}: start after freeing space failed: {e}"));
        let client = agent.client().await.unwrap();
        assert_all_acknowledged_present(&client, &acked, &format!("run {run}")).await;
        // What was never acknowledged is retried; every event then counts exactly once.
        let (_, expected_total, n) = retry_all(&client, &attempted).await;
        let totals = client.admin().report(v1::ReportRequest {}).await.unwrap().into_inner().totals.unwrap();
        let recorded = meterd::domain::quantity::Micros::parse_event(&totals.recorded).unwrap().0;
        assert_eq!(recorded, expected_total, "run {run}: recorded != the sum of {n} distinct events");
        eprintln!(
            "run {run}: {} acknowledged, {n} attempted, {starts} starts refused on the full disk, reopened intact",
            acked.lock().unwrap().len()
        );
        drop(agent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stops_at_the_reserve_and_resumes_when_space_is_freed_without_a_restart() {
    let fs = SmallFs::mount();
    let data = fs.path().join("data");
    let agent = Agent::start(&config(&data, "8MiB")).unwrap();
    let client = agent.client().await.unwrap();
    // Most of the filesystem is taken by something else; what is left above the reserve fills quickly.
    let ballast = fs.fill("ballast");
    let ballast_file = std::fs::OpenOptions::new().write(true).open(&ballast).unwrap();
    let keep = std::fs::metadata(&ballast).unwrap().len() - 14 * 1024 * 1024;
    ballast_file.set_len(keep).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let acked: Acked = Default::default();
    let mut refused = None;
    for b in 0..10_000 {
        let events: Vec<_> = (0..200).map(|i| random_event(&mut rng, format!("r-{b}-{i}"), None)).collect();
        match client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events: events.clone() }).await {
            Ok(r) => {
                for (ev, res) in events.into_iter().zip(r.into_inner().results) {
                    let Some(v1::event_result::Outcome::Receipt(rc)) = res.outcome else { panic!("{res:?}") };
                    acked.lock().unwrap().push((ev, rc));
                }
            }
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("ingest never stopped although the disk filled up");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("disk nearly full") && status.message().contains("reserve"), "{status:?}");
    assert!(fs.free_bytes() > 0, "the reserve must stop ingest before the disk is full");
    let s = client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert!(s.disk_full && s.disk_reserve_bytes == 8 << 20, "{s:?}");
    // Reads go on.
    client.admin().report(v1::ReportRequest {}).await.unwrap();

    // Space comes back: the very next call is taken, no restart.
    ballast_file.set_len(0).unwrap();
    let ev = random_event(&mut rng, "after".into(), None);
    let r = client.metering().record_usage(v1::RecordUsageRequest { event: Some(ev.clone()) }).await.unwrap();
    acked.lock().unwrap().push((ev, r.into_inner().receipt.unwrap()));
    assert!(!client.admin().status(v1::StatusRequest {}).await.unwrap().into_inner().disk_full);
    assert_all_acknowledged_present(&client, &acked, "after freeing space").await;
    eprintln!("{} events acknowledged before the reserve stopped ingest", acked.lock().unwrap().len() - 1);
}

/// A fleet spool (`ack = "local"`) on a disk filled to the last byte, with no reserve (`min_free = "0"`), so that
/// its writes themselves fail with ENOSPC — in the outbox file, the dedupe segment or the redo log — while
/// callers keep calling. A failed group must leave the outbox's sequences contiguous (its sequences go to the
/// next group), or the next start refuses the spool as damaged. Per run: load, fill, more load on the full disk,
/// SIGKILL, free the space, restart with forwarding on; then every acknowledged event must reach PostgreSQL, and
/// everything attempted, retried, counts once. `METERD_DISK_SEED` / `METERD_DISK_RUNS` (half the runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_whose_writes_fail_on_a_full_disk_reopens_whole_and_forwards_every_acknowledged_event() {
    let seed: u64 = std::env::var("METERD_DISK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261201);
    let runs: usize = std::env::var("METERD_DISK_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(20) / 2;
    eprintln!("spool disk-full test seed={seed} runs={runs} (METERD_DISK_SEED replays it)");
    let pg = meterd_fleet::test_postgres::TestPostgres::start().expect("a throwaway PostgreSQL");
    let db = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let fleet = |run: usize, interval: &str| {
        format!(
            "[fleet]\ndatabase_url = \"{}\"\nnode_id = \"spool-{run}\"\nforward_interval = \"{interval}\"\n\
             down_after = \"300s\"\n",
            pg.url()
        )
    };
    for run in 0..runs {
        let fs = SmallFs::mount();
        let data = fs.path().join("data");
        // Forwarding held back while the disk fills: the outbox stays in its files, so the restart reads (and
        // checks) every block the failed groups came between.
        let mut agent = Agent::start(&(config(&data, "0") + &fleet(run, "60s"))).unwrap();
        let (acked, attempted): (Acked, Attempted) = Default::default();
        let shape = Load { callers: 8, batch_every: 3, batch_size: 20, past_share: 0.0 };
        let first = tokio::spawn(load(agent.target(), acked.clone(), attempted.clone(), run * 1000, seed, shape));
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        let ballast = fs.fill("ballast");
        // 1-3 rounds of callers on the full disk (a round ends once each of its callers had a call fail); then, in
        // three runs of four, the space comes back — soon, before a checkpoint fails too and the store refuses
        // every write until a restart — while a last round calls on until the kill: a write that failed must not
        // cost the ones that follow it in the same process.
        let rounds_full = rng.random_range(1..=3);
        let mut round = 1;
        while round <= rounds_full {
            load(agent.target(), acked.clone(), attempted.clone(), run * 1000 + round, seed, shape).await;
            round += 1;
        }
        std::fs::remove_file(&ballast).unwrap();
        if run % 4 != 3 {
            let last =
                tokio::spawn(load(agent.target(), acked.clone(), attempted.clone(), run * 1000 + round, seed, shape));
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
            agent.kill9();
            last.await.unwrap();
        } else {
            agent.kill9();
        }
        first.await.unwrap();
        std::fs::write(&agent.config_path, config(&data, "0") + &fleet(run, "100ms")).unwrap();
        let agent = agent.restart().unwrap_or_else(|e| {
            let du = Command::new("du").arg("-ak").arg(fs.path()).output().unwrap();
            panic!("run {run}: start after freeing space failed: {e}\n{}", String::from_utf8_lossy(&du.stdout))
        });
        let want = keys_and_quantities(acked.lock().unwrap().iter().map(|(e, _)| e));
        assert_in_shared_ledger(&db, &want, &format!("run {run}, acknowledged")).await;
        let client = agent.client().await.unwrap();
        assert_all_acknowledged_present(&client, &acked, &format!("run {run}")).await;
        let (_, _, n) = retry_all(&client, &attempted).await;
        let all = keys_and_quantities(attempted.lock().unwrap().iter());
        assert_in_shared_ledger(&db, &all, &format!("run {run}, retried")).await;
        eprintln!(
            "run {run}: {} acknowledged, {n} attempted in {round} rounds, all in the shared ledger once",
            want.len()
        );
        drop(agent);
    }
}
