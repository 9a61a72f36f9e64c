//! Running SDK futures for asyncio: the future runs on the shared tokio runtime and completes an
//! `asyncio.Future` of the caller's running loop through `loop.call_soon_threadsafe`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meterd_proto::sdk::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::{error, runtime};

type Convert<T> = fn(Python<'_>, T) -> PyResult<Py<PyAny>>;

/// Returns an awaitable for `fut`; `convert` turns its output into the Python result (holding the GIL).
pub fn spawn<'py, T, F>(py: Python<'py>, fut: F, convert: Convert<T>) -> PyResult<Bound<'py, PyAny>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_future = event_loop.call_method0("create_future")?;
    let (event_loop_ref, future_ref) = (event_loop.unbind(), py_future.clone().unbind());
    runtime::get().spawn(async move {
        let outcome = fut.await;
        let Some(_guard) = CompletionGuard::enter() else { return };
        Python::attach(|py| {
            let (value, exception) = match outcome.map_err(|e| error::to_py(py, &e)).and_then(|v| convert(py, v)) {
                Ok(v) => (v, py.None()),
                Err(e) => (py.None(), e.into_value(py).into_any()),
            };
            let resolve = resolver(py);
            // Fails only when the loop is closed: nobody is waiting any more.
            let _ = event_loop_ref.call_method1(py, "call_soon_threadsafe", (resolve, future_ref, value, exception));
        });
    });
    Ok(py_future)
}

// Completions attach to the interpreter from runtime threads. `call_soon_threadsafe` releases the GIL while it
// wakes the loop, so the loop can finish and the interpreter start finalizing while a runtime thread still has to
// take the GIL back — and a thread that does so during finalization is killed mid-Rust-frame. At exit (an
// `atexit` hook registered by the module) no new completion may attach, and those under way are waited for.
static ATTACHED: AtomicUsize = AtomicUsize::new(0);
static EXITING: AtomicBool = AtomicBool::new(false);

struct CompletionGuard;

impl CompletionGuard {
    fn enter() -> Option<Self> {
        ATTACHED.fetch_add(1, Ordering::SeqCst);
        if EXITING.load(Ordering::SeqCst) {
            ATTACHED.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(CompletionGuard)
    }
}

impl Drop for CompletionGuard {
    fn drop(&mut self) {
        ATTACHED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `atexit` hook: stop completions from attaching and let those under way finish (at most 2 s).
#[pyfunction]
pub fn _quiesce_at_exit(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let until = Instant::now() + Duration::from_secs(2);
        while ATTACHED.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// An awaitable that is already done with `value` (for `__aenter__`/`__aexit__`).
pub fn ready<'py>(py: Python<'py>, value: Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let fut = event_loop.call_method0("create_future")?;
    fut.call_method1("set_result", (value,))?;
    Ok(fut)
}

fn resolver(py: Python<'_>) -> &Py<PyAny> {
    static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    RESOLVE.get_or_init(py, || wrap_pyfunction!(_resolve_future, py).expect("resolver function").into_any().unbind())
}

/// Completes `future` unless it was cancelled meanwhile (runs on the event loop's thread).
#[pyfunction]
pub fn _resolve_future(future: &Bound<'_, PyAny>, value: Py<PyAny>, exception: Py<PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if exception.is_none(future.py()) {
        future.call_method1("set_result", (value,))?;
    } else {
        future.call_method1("set_exception", (exception,))?;
    }
    Ok(())
}
