//! The tokio runtime every client of this process shares, rebuilt after `fork()`.
//!
//! A forked child (gunicorn/uwsgi pre-fork workers) inherits the parent's memory but none of its threads, so the
//! parent's runtime is dead weight there: its workers and I/O driver do not exist. Every use checks the process
//! id; in a new process the old runtime is leaked on purpose (dropping it would wait for threads that will never
//! answer) and a fresh one is built. Connections are handled the same way in `client.rs`.

use std::sync::{Arc, Mutex};

use tokio::runtime::Runtime;

static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

pub fn get() -> Arc<Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, rt)) = slot.as_ref()
        && *owner == pid
    {
        return rt.clone();
    }
    if let Some(inherited) = slot.take() {
        std::mem::forget(inherited);
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 4);
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("meterd-sdk")
            .enable_all()
            .build()
            .expect("cannot start the meterd client runtime"),
    );
    *slot = Some((pid, rt.clone()));
    rt
}
