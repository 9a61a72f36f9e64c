//! Invariant 1 under a power loss, not just a process crash: "an OK reply means the event is on disk".
//!
//! kill -9 keeps the kernel's page cache, so it cannot tell a real barrier (fsync/fdatasync) from a write that
//! only reached the cache. Here the data dir lives on `meterd-lazyfs`, a FUSE filesystem that keeps every write
//! and directory operation in memory and, on `power_loss()`, drops everything not made durable by an fsync —
//! the way Jepsen tests databases with LazyFS. Each run: concurrent callers (single events and batches),
//! repacks or seals in flight, SIGKILL at a random moment, power loss, restart; every acknowledged event must
//! still be there with its original receipt and every start must be clean. The control runs the same loop with
//! the page cache kept (a plain kill -9): the harness itself must lose nothing.
//!
//! Needs root and /dev/fuse (CI has both). `METERD_POWER_SEED` replays a run, `METERD_POWER_RUNS` sets how many.

use std::time::Duration;

use meterd_lazyfs::LazyFs;
use meterd_proto::v1;
use meterd_tests::crash::{Acked, Attempted, Load, assert_all_acknowledged_present, load, random_event, retry_all};
use meterd_tests::{Agent, basic_config};
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Crash {
    /// SIGKILL, then drop every write not fsynced.
    PowerLoss,
    /// SIGKILL only: the page cache survives (the control).
    KillOnly,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

struct Mounted {
    // Field order matters: the agent must die before the filesystem under it is unmounted.
    agent: Option<Agent>,
    fs: LazyFs,
    _mnt: tempfile::TempDir,
}

fn mount() -> Mounted {
    let mnt = tempfile::tempdir().unwrap();
    let fs = LazyFs::mount(mnt.path()).expect("mount lazyfs (needs root and /dev/fuse)");
    Mounted { agent: None, fs, _mnt: mnt }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_power_loss() {
    let runs = env_or("METERD_POWER_RUNS", 20);
    crash_loop(Crash::PowerLoss, runs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_kill_only_on_the_same_filesystem_loses_nothing() {
    crash_loop(Crash::KillOnly, 5).await;
}

/// The idle case: one batch acknowledged, the power goes at once (before sled's 500 ms background sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_acknowledged_just_before_the_power_goes_survives() {
    let mut m = mount();
    let data = m.fs.path().join("data");
    m.agent = Some(Agent::start(&basic_config(&data, "")).unwrap());
    let client = m.agent.as_ref().unwrap().client().await.unwrap();
    // Let the store's own start-up writes settle first, so the only unsynced writes are the batch's.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let events: Vec<_> = (0..100).map(|i| random_event(&mut rng, format!("idle-{i}"), None)).collect();
    let acked = record_batch(&client, events).await;
    m.agent.as_mut().unwrap().kill9();
    let dropped = m.fs.power_loss().unwrap();
    eprintln!("power loss right after the reply dropped {dropped:?}");
    let agent = m.agent.take().unwrap().restart().expect("a clean start after the power loss");
    assert_all_acknowledged_present(&agent.client().await.unwrap(), &acked, "idle").await;
    m.agent = Some(agent);
}

async fn crash_loop(crash: Crash, runs: usize) {
    let seed: u64 = env_or("METERD_POWER_SEED", 20261129);
    eprintln!("power-loss test ({crash:?}) seed={seed} runs={runs} (METERD_POWER_SEED replays it)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut m = mount();
    let data = m.fs.path().join("data");
    m.agent = Some(Agent::start(&basic_config(&data, "")).unwrap());
    let acked: Acked = Default::default();
    let attempted: Attempted = Default::default();
    let (mut bytes_dropped, mut entries_reverted) = (0u64, 0u64);
    // A fifth of the events land an hour or two back, so `Admin.Flush` has hours to seal (and later ones are late).
    let shape = Load { past_share: 0.2, ..Load::default() };

    for run in 0..runs {
        let target = m.agent.as_ref().unwrap().target();
        let load = tokio::spawn(load(target.clone(), acked.clone(), attempted.clone(), run, seed, shape));
        // Maintenance in flight when the power goes: repacks (generation switches), seals, or neither.
        let side = match run % 3 {
            1 => Some((
                "repacks",
                tokio::spawn(meterd_tests::crash::until_killed(target, |c| async move {
                    c.admin().repack(v1::RepackRequest {}).await.is_ok()
                })),
            )),
            2 => Some((
                "seals",
                tokio::spawn(meterd_tests::crash::until_killed(target, |c| async move {
                    c.admin().flush(v1::FlushRequest {}).await.is_ok()
                })),
            )),
            _ => None,
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        m.agent.as_mut().unwrap().kill9();
        load.await.unwrap();
        let side = match side {
            Some((what, h)) => format!(", {} {what} finished", h.await.unwrap()),
            None => String::new(),
        };
        match crash {
            Crash::PowerLoss => {
                let d = m.fs.power_loss().unwrap();
                bytes_dropped += d.bytes_lost;
                entries_reverted += d.entries_reverted;
                eprintln!("run {run}: power loss dropped {d:?}{side}");
            }
            Crash::KillOnly => {
                m.fs.remount_keep_all().unwrap();
                eprintln!("run {run}: kill only{side}");
            }
        }
        // Every start must be clean: the agent opens the store that was there, or says why not and stops.
        let agent = m.agent.take().unwrap().restart().unwrap_or_else(|e| panic!("run {run}: start failed: {e}"));
        let client = agent.client().await.unwrap();
        m.agent = Some(agent);
        assert_all_acknowledged_present(&client, &acked, &format!("run {run} ({crash:?})")).await;
        eprintln!("run {run}: {} acknowledged so far, all intact", acked.lock().unwrap().len());
    }
    eprintln!("{runs} runs: {bytes_dropped} unsynced bytes and {entries_reverted} directory entries dropped in all");

    // Clients retry what was never acknowledged; afterwards the ledger counts every event exactly once.
    let agent = m.agent.as_mut().unwrap();
    let client = agent.client().await.unwrap();
    let (_, expected_total, attempted_n) = retry_all(&client, &attempted).await;
    let report = client.admin().report(v1::ReportRequest {}).await.unwrap().into_inner();
    let totals = report.totals.unwrap();
    let recorded = meterd::domain::quantity::Micros::parse_event(&totals.recorded).unwrap().0;
    assert_eq!(recorded, expected_total, "recorded usage != the sum of {attempted_n} distinct events");
    assert!(totals.reconciled, "{totals:?}");
    assert_eq!(agent.terminate().unwrap(), Some(0), "SIGTERM must exit 0");
}

/// A device whose syncs hang leaves an agent that is up but takes no usage and sends nothing. The store's watchdog
/// must end it (exit code 70) once a sync has hung for `storage.stuck_after`, so its supervisor restarts it; the
/// restarted agent has every event acknowledged before. The control: idle and ordinary syncs never trip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_stuck_on_a_hung_sync_ends_the_agent_for_its_supervisor() {
    let mut m = mount();
    let data = m.fs.path().join("data");
    let config = basic_config(&data, "").replace("[storage]\n", "[storage]\nstuck_after = \"5s\"\n");
    assert!(config.contains("stuck_after"));
    m.agent = Some(Agent::start(&config).unwrap());
    let client = m.agent.as_ref().unwrap().client().await.unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let events: Vec<_> = (0..20).map(|i| random_event(&mut rng, format!("before-{i}"), None)).collect();
    let acked = record_batch(&client, events).await;
    // Longer than stuck_after, with checkpoints and an idle writer: not stuck. (5 s, not less: on a loaded host
    // this filesystem's one session thread can keep a healthy sync waiting for a second or two.)
    assert!(m.agent.as_mut().unwrap().wait_exit(Duration::from_secs(7)).unwrap().is_none(), "exited while healthy");

    m.fs.stall_syncs(true);
    // Lets the syncs go on every way out of this test: a process whose thread waits in a stalled sync cannot be
    // reaped, so the agent's drop (kill -9 and wait) would wait for good.
    let _release = ReleaseSyncs(&m.fs);
    let stalled_at = std::time::Instant::now();
    let hung = {
        let client = client.clone();
        let event = random_event(&mut rng, "during".into(), None);
        tokio::spawn(async move { client.metering().record_usage(v1::RecordUsageRequest { event: Some(event) }).await })
    };
    let pid = m.agent.as_ref().unwrap().pid();
    assert!(
        tokio::task::block_in_place(|| main_thread_exited(pid, Duration::from_secs(60))),
        "the agent is still up 60 s into a hung sync"
    );
    let after = stalled_at.elapsed();
    // Not before stuck_after (less a little: a checkpoint already under way when the stall began counts from its
    // own start).
    assert!(after >= Duration::from_secs(4), "exited {after:?} into the stall, before stuck_after");
    // Its exit waits for the thread still in the stalled sync; let that sync go and the exit completes.
    m.fs.stall_syncs(false);
    let status = m.agent.as_mut().unwrap().wait_exit(Duration::from_secs(30)).unwrap().expect("the exit completes");
    assert_eq!(status.code(), Some(70), "{status:?}");
    assert!(hung.await.unwrap().is_err(), "the call made during the stall was never acknowledged");

    let agent = m.agent.take().unwrap().restart().expect("a clean start after the stuck exit");
    assert_all_acknowledged_present(&agent.client().await.unwrap(), &acked, "stuck").await;
    m.agent = Some(agent);
}

struct ReleaseSyncs<'a>(&'a LazyFs);

impl Drop for ReleaseSyncs<'_> {
    fn drop(&mut self) {
        self.0.stall_syncs(false);
    }
}

/// Whether the process's main thread exited within `within`. A process that exits while one of its threads waits
/// on a stalled FUSE request stays a zombie until that request is answered, so its exit cannot be waited for yet.
fn main_thread_exited(pid: u32, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
        // The state follows the parenthesised command name.
        if stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()) == Some('Z') {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Records `events` in one batch; each must be acknowledged, and is kept with its receipt.
async fn record_batch(client: &meterd_proto::client::Client, events: Vec<v1::UsageEvent>) -> Acked {
    let r = client.metering().record_usage_batch(v1::RecordUsageBatchRequest { events: events.clone() }).await.unwrap();
    let acked: Acked = Default::default();
    for (ev, res) in events.into_iter().zip(r.into_inner().results) {
        let Some(v1::event_result::Outcome::Receipt(rc)) = res.outcome else { panic!("{res:?}") };
        acked.lock().unwrap().push((ev, rc));
    }
    acked
}

/// The same loop for a fleet node's spool (`ack = "local"`): what it acknowledged must survive the power loss in
/// its outbox files, not only in its dedupe window, and reach the shared ledger (a real PostgreSQL, not on the
/// lazy filesystem) exactly once. Checked in PostgreSQL itself: every acknowledged key there with its quantity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spools_acknowledged_events_survive_power_loss_and_reach_the_shared_ledger() {
    let runs = env_or("METERD_POWER_RUNS", 20) * 2 / 5;
    let seed: u64 = env_or("METERD_POWER_SEED", 20261201);
    eprintln!("spool power-loss test seed={seed} runs={runs} (METERD_POWER_SEED replays it)");
    let pg = meterd_fleet::test_postgres::TestPostgres::start().expect("a throwaway PostgreSQL");
    let fleet = format!(
        "[fleet]\ndatabase_url = \"{}\"\nnode_id = \"spool-0\"\nforward_interval = \"100ms\"\nforward_batch = 300\n",
        pg.url()
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut m = mount();
    let data = m.fs.path().join("data");
    m.agent = Some(Agent::start(&basic_config(&data, &fleet)).unwrap());
    let (acked, attempted): (Acked, Attempted) = Default::default();
    // Batches of 300 fill whole outbox blocks and more; single callers add small ones.
    let shape = Load { callers: 4, batch_every: 2, batch_size: 300, past_share: 0.0 };
    let mut bytes_dropped = 0;
    for run in 0..runs {
        let target = m.agent.as_ref().unwrap().target();
        let load = tokio::spawn(load(target, acked.clone(), attempted.clone(), run, seed, shape));
        // Long enough, often, for the redo log to fill a file and a checkpoint to delete it: then only the outbox
        // files' own sync keeps what that file held.
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..4_000))).await;
        m.agent.as_mut().unwrap().kill9();
        load.await.unwrap();
        let d = m.fs.power_loss().unwrap();
        bytes_dropped += d.bytes_lost;
        eprintln!("run {run}: power loss dropped {d:?}");
        let agent = m.agent.take().unwrap().restart().unwrap_or_else(|e| panic!("run {run}: start failed: {e}"));
        m.agent = Some(agent);
    }
    assert!(bytes_dropped > 0, "the power losses dropped nothing: the test would not see a missing barrier");
    // The forwarder drains the spool into the shared ledger: every acknowledged key, with its quantity.
    let want = meterd_tests::crash::keys_and_quantities(acked.lock().unwrap().iter().map(|(e, _)| e));
    let db = meterd_fleet::connect_plain(&pg.url()).await.unwrap();
    meterd_tests::crash::assert_in_shared_ledger(&db, &want, "spool").await;
    // And the spool still knows each of them (its dedupe window survived too).
    assert_all_acknowledged_present(&m.agent.as_ref().unwrap().client().await.unwrap(), &acked, "spool").await;
    eprintln!(
        "{runs} runs: {} acknowledged, all in the shared ledger; {bytes_dropped} unsynced bytes dropped",
        want.len()
    );
    assert_eq!(m.agent.as_mut().unwrap().terminate().unwrap(), Some(0), "SIGTERM must exit 0");
}
