//! Stuck store work ends the process.
//!
//! A writer pass, a group's fsync or a checkpoint that never returns leaves an agent that is up but takes no usage
//! and sends nothing: callers time out, hours go unsealed, and nothing says why. Two ways it happens: a device
//! whose syncs hang, and sled 0.34.7 deadlocking its own I/O pool (one was found, see `Store::outbox_remove`).
//! Neither cures itself in-process, but a restart does: everything acknowledged is in the redo log, and a
//! restart is exactly the kill -9 the crash tests prove safe. So a watchdog thread looks at the store's workers
//! once a second and, when one has been on the same piece of work for longer than `storage.stuck_after`, logs
//! what was stuck and exits with [`STUCK_EXIT_CODE`] for the supervisor (systemd's `Restart=always`, a
//! Kubernetes restart policy) to start it again. A repack is exempt: it copies the whole store, however long
//! that takes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// The exit code of an agent that found its store stuck (EX_SOFTWARE).
pub const STUCK_EXIT_CODE: i32 = 70;

/// `storage.stuck_after`'s default, and the limit of a store opened without options (tools, tests): a fsync on a
/// healthy device never takes minutes, and a false trip costs one restart, which loses nothing.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(600);

/// How often the watchdog looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The store's workers the watchdog watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Worker {
    /// One pass of the writer over the commands it took.
    Writer,
    /// One fsync of the redo log for the groups waiting on it (the replies wait for it).
    Flusher,
    /// One checkpoint: sled's and the dedupe segments' syncs.
    Checkpoint,
}

pub const WORKERS: [Worker; 3] = [Worker::Writer, Worker::Flusher, Worker::Checkpoint];

impl Worker {
    /// What it is on, for the log.
    pub fn name(self) -> &'static str {
        match self {
            Worker::Writer => "writer pass",
            Worker::Flusher => "redo log fsync",
            Worker::Checkpoint => "checkpoint",
        }
    }

    /// Its label value in `meterd_store_busy_seconds`.
    pub fn label(self) -> &'static str {
        match self {
            Worker::Writer => "writer",
            Worker::Flusher => "flusher",
            Worker::Checkpoint => "checkpoint",
        }
    }
}

/// When each worker started the work it is on (milliseconds since the watch began, plus one; 0 = idle).
pub struct Watch {
    began: Instant,
    busy_since: [AtomicU64; WORKERS.len()],
}

impl Default for Watch {
    fn default() -> Self {
        Watch { began: Instant::now(), busy_since: Default::default() }
    }
}

/// Marks its worker busy until dropped.
pub struct Busy<'a> {
    watch: &'a Watch,
    worker: Worker,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.watch.idle(self.worker);
    }
}

impl Watch {
    fn now(&self) -> u64 {
        self.began.elapsed().as_millis() as u64 + 1
    }

    /// `worker` starts a piece of work; it is done when the returned guard is dropped.
    pub fn busy(&self, worker: Worker) -> Busy<'_> {
        self.busy_since[worker as usize].store(self.now(), Ordering::Relaxed);
        Busy { watch: self, worker }
    }

    /// `worker` is no longer watched for the rest of its work (a repack).
    pub fn idle(&self, worker: Worker) {
        self.busy_since[worker as usize].store(0, Ordering::Relaxed);
    }

    /// How long `worker` has been on its current piece of work (zero when idle).
    pub fn busy_for(&self, worker: Worker) -> Duration {
        match self.busy_since[worker as usize].load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(self.now().saturating_sub(since)),
        }
    }

    /// The worker that has been on one piece of work the longest, if for longer than `limit`.
    pub fn stuck(&self, limit: Duration) -> Option<(Worker, Duration)> {
        WORKERS.iter().map(|&w| (w, self.busy_for(w))).filter(|&(_, busy)| busy > limit).max_by_key(|&(_, busy)| busy)
    }
}

/// Looks at `watch` every second until every sender of `stop` is gone (the store closed: it ends at once, so a
/// close does not wait for its next look); calls `on_stuck` (once) when a worker has been on one piece of work for
/// longer than `limit`. The agent's `on_stuck` exits the process ([`exit_stuck`]).
pub fn spawn_watchdog(
    watch: Arc<Watch>,
    limit: Duration,
    stop: mpsc::Receiver<()>,
    on_stuck: impl FnOnce(Worker, Duration) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("meterd-watchdog".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(LOOK_EVERY.min(limit)) {
                if let Some((worker, busy)) = watch.stuck(limit) {
                    on_stuck(worker, busy);
                    return;
                }
            }
        })
        .expect("spawn watchdog thread")
}

/// What the agent does with a stuck store: says so, and exits for its supervisor to restart it.
pub fn exit_stuck(worker: Worker, busy: Duration) {
    tracing::error!(
        worker = worker.name(),
        seconds = busy.as_secs(),
        "the store's {} has not finished in {} s (a hung device sync or a deadlock in sled): exiting with code {} \
         so the supervisor restarts the agent; every acknowledged event is in the redo log",
        worker.name(),
        busy.as_secs(),
        STUCK_EXIT_CODE
    );
    // Also straight to stderr: a tool or test that opened the store may have no log subscriber.
    eprintln!(
        "meterd: the store's {} is stuck ({} s); exiting with code {STUCK_EXIT_CODE}",
        worker.name(),
        busy.as_secs()
    );
    std::process::exit(STUCK_EXIT_CODE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn only_work_longer_than_the_limit_is_stuck_and_the_longest_is_named() {
        let watch = Watch::default();
        assert_eq!(watch.stuck(Duration::ZERO), None, "idle workers are never stuck");
        assert_eq!(watch.busy_for(Worker::Writer), Duration::ZERO);
        let writer = watch.busy(Worker::Writer);
        std::thread::sleep(Duration::from_millis(30));
        let _flusher = watch.busy(Worker::Flusher);
        assert_eq!(watch.stuck(Duration::from_secs(60)).map(|s| s.0), None);
        assert_eq!(watch.stuck(Duration::from_millis(10)).map(|s| s.0), Some(Worker::Writer), "the longest");
        assert!(watch.busy_for(Worker::Writer) >= Duration::from_millis(30));
        drop(writer);
        assert_eq!(watch.busy_for(Worker::Writer), Duration::ZERO, "done: idle again");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(watch.stuck(Duration::from_millis(10)).map(|s| s.0), Some(Worker::Flusher));
        watch.idle(Worker::Flusher);
        assert_eq!(watch.stuck(Duration::ZERO), None, "a repack marks its worker idle");
    }

    #[test]
    fn the_watchdog_reports_a_stuck_worker_once_and_stays_quiet_otherwise() {
        let watch = Arc::new(Watch::default());
        let (_running, stop) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let dog = spawn_watchdog(watch.clone(), Duration::from_secs(1), stop, move |w, busy| {
            log.lock().unwrap().push((w, busy));
        });
        // Short pieces of work, again and again, for longer than the limit: never stuck.
        let until = Instant::now() + Duration::from_millis(1_500);
        while Instant::now() < until {
            let b = watch.busy(Worker::Checkpoint);
            std::thread::sleep(Duration::from_millis(5));
            drop(b);
            std::thread::sleep(Duration::from_millis(15));
        }
        assert!(seen.lock().unwrap().is_empty(), "short work is not stuck");
        let _stuck = watch.busy(Worker::Writer);
        dog.join().unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, Worker::Writer);
        assert!(seen[0].1 > Duration::from_secs(1));
    }

    #[test]
    fn a_closed_store_ends_the_watchdog() {
        let watch = Arc::new(Watch::default());
        let (running, stop) = mpsc::channel::<()>();
        let dog = spawn_watchdog(watch, Duration::from_secs(600), stop, |_, _| panic!("nothing was stuck"));
        drop(running);
        dog.join().unwrap();
    }
}
