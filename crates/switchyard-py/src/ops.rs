//! Operations Python awaits: run on tokio, finished through the inbox.
//!
//! An operation that can finish at once (a publish into a queue with room) is polled once on
//! the calling thread and never leaves it. One that has to wait is spawned on the runtime; its
//! result comes back as an [`Item::Done`](crate::inbox::Item::Done) with the token Python
//! holds, and Python resolves its `asyncio.Future` on the loop thread. A cancelled await
//! forgets the operation ([`Inbox::cancel`]); the task runs on and its result is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::task::{Context, Poll};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use switchyard::{
    Bus, CloseError, CommandResult, MessageId, PublishError, SendError, ShutdownReport, WaitReport,
};

use crate::errors;
use crate::inbox::{Inbox, Item};

/// Set in a forked child (`after_fork_in_child`): the runtime built before the fork has no
/// worker threads there (fork copies only the forking thread), so nothing spawned on it
/// would ever run.
static FORKED: AtomicBool = AtomicBool::new(false);

/// The runtime of a forked child, built on its first use there (leaked: it lives as long
/// as the process, as pyo3-async-runtimes' static one does).
static CHILD_RUNTIME: Mutex<Option<&'static tokio::runtime::Runtime>> = Mutex::new(None);

/// The tokio runtime every bus of this process runs on: pyo3-async-runtimes' shared one,
/// or, in a process forked from one that used it, a runtime of the child's own.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    if !FORKED.load(Ordering::Acquire) {
        return pyo3_async_runtimes::tokio::get_runtime();
    }
    child_runtime()
}

#[cold]
fn child_runtime() -> &'static tokio::runtime::Runtime {
    let mut slot = CHILD_RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(rt) = *slot {
        return rt;
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchyard-tokio")
        .build()
    {
        Ok(rt) => {
            let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
            *slot = Some(rt);
            rt
        }
        // No threads to be had: the inherited runtime is all there is (nothing better to
        // hand back; the caller's operation then waits, as before this fallback existed).
        Err(_) => pyo3_async_runtimes::tokio::get_runtime(),
    }
}

/// Whether this process was forked from one that had loaded the package.
pub(crate) fn forked() -> bool {
    FORKED.load(Ordering::Acquire)
}

/// Run in a forked child (the package's `os.register_at_fork` hook): the next
/// [`runtime`] call builds a runtime with threads of this process. The parent's runtime
/// (and a runtime this process inherited from a fork of a fork) is left alone, never
/// dropped: its threads do not exist here, and dropping it would wait for them.
pub(crate) fn after_fork_in_child() {
    // Only the forking thread exists now; a lock another parent thread held at the fork
    // would never be released, so try once and otherwise keep the slot (a runtime the
    // parent built after its own fork: then a later fork of this child cannot recover it).
    match CHILD_RUNTIME.try_lock() {
        Ok(mut slot) => *slot = None,
        Err(TryLockError::Poisoned(p)) => *p.into_inner() = None,
        Err(TryLockError::WouldBlock) => {}
    }
    FORKED.store(true, Ordering::Release);
}

/// The result of an operation, converted to Python on the loop thread. Moved once per
/// operation (boxed in the inbox), so the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Done {
    /// A publish that had to wait for room.
    Published(Result<(), PublishError>),
    /// A delayed publish, accepted: its message id.
    Scheduled(Result<MessageId, PublishError>),
    /// A publish that waited for every handler.
    Waited(Result<WaitReport, PublishError>),
    /// A command or request: the reply payload.
    Sent(Result<CommandResult, SendError>),
    /// A session started.
    Session(Result<switchyard::Session, PublishError>, Bus, Arc<Inbox>),
    /// A session ended (its ended event published).
    SessionEnded(Result<(), PublishError>),
    /// `shutdown` finished.
    Shutdown(Result<ShutdownReport, CloseError>),
    /// `run_until_idle` returned.
    Idle,
    /// A count (test helpers), or an error text raised as `SwitchyardError`.
    Count(Result<u64, String>),
}

fn ok(v: Bound<'_, PyAny>) -> (bool, Py<PyAny>) {
    (true, v.unbind())
}

fn err(py: Python<'_>, e: PyErr) -> (bool, Py<PyAny>) {
    (false, e.into_value(py).into_any())
}

fn ids<'py>(py: Python<'py>, ids: &[MessageId]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, ids.iter().map(|i| i.to_string()))
}

impl Done {
    /// `(True, value)` or `(False, exception instance)`.
    pub(crate) fn into_py(self, py: Python<'_>) -> PyResult<(bool, Py<PyAny>)> {
        Ok(match self {
            Done::Published(Ok(())) | Done::SessionEnded(Ok(())) | Done::Idle => {
                ok(py.None().into_bound(py))
            }
            Done::Published(Err(e)) | Done::SessionEnded(Err(e)) => {
                err(py, errors::publish_error(py, e))
            }
            Done::Scheduled(Ok(id)) => ok(id.to_string().into_pyobject(py)?.into_any()),
            Done::Scheduled(Err(e)) => err(py, errors::publish_error(py, e)),
            Done::Waited(Ok(report)) => {
                let failures = PyList::empty(py);
                for f in report.failures {
                    let e = errors::send_error(py, f.error).into_value(py);
                    failures.append((f.subscription, e))?;
                }
                let t = PyTuple::new(
                    py,
                    [
                        report.handled.into_pyobject(py)?.into_any(),
                        report.filtered.into_pyobject(py)?.into_any(),
                        failures.into_any(),
                    ],
                )?;
                ok(t.into_any())
            }
            Done::Waited(Err(e)) => err(py, errors::publish_error(py, e)),
            Done::Sent(Ok(result)) => match result.reply {
                Some(reply) => ok(PyBytes::new(py, &reply.payload).into_any()),
                None => ok(py.None().into_bound(py)),
            },
            Done::Sent(Err(e)) => err(py, errors::send_error(py, e)),
            Done::Session(Ok(session), bus, inbox) => {
                let s = crate::bus::PySession::new(session, bus, inbox);
                ok(Bound::new(py, s)?.into_any())
            }
            Done::Session(Err(e), _, _) => err(py, errors::publish_error(py, e)),
            Done::Shutdown(Ok(report)) => {
                let t = PyTuple::new(
                    py,
                    [
                        report.drained.into_pyobject(py)?.into_any(),
                        ids(py, &report.left)?.into_any(),
                        ids(py, &report.nacked)?.into_any(),
                    ],
                )?;
                ok(t.into_any())
            }
            Done::Shutdown(Err(e)) => err(py, errors::close_error(py, e)),
            Done::Count(Ok(n)) => ok(n.into_pyobject(py)?.into_any()),
            Done::Count(Err(text)) => err(py, errors::raise(py, "SwitchyardError", text, &[])),
        })
    }
}

/// What Python gets back from an operation: finished now, or a token to await.
pub(crate) enum Started {
    /// Finished on the calling thread.
    Now(Box<Done>),
    /// Running on tokio; the result arrives in the inbox under this token.
    Later(u64),
}

/// Spawns `fut` and reports its result to the inbox under a fresh token, unless Python
/// stopped awaiting it meanwhile.
pub(crate) fn spawn<F>(inbox: &Arc<Inbox>, fut: F) -> u64
where
    F: Future<Output = Done> + Send + 'static,
{
    let token = inbox.token();
    let reporter = inbox.clone();
    inbox.track_spawn(token, runtime(), async move {
        let result = fut.await;
        // Not tracked any more: the await was cancelled meanwhile, nobody wants the result.
        if reporter.untrack(token) {
            reporter.push(Item::Done {
                token,
                result: Box::new(result),
            });
        }
    });
    token
}

/// Polls `fut` once on the calling thread (inside the runtime, so its timers work); when it
/// cannot finish yet, hands the already-started future to tokio.
pub(crate) fn start<F>(inbox: &Arc<Inbox>, fut: F) -> Started
where
    F: Future<Output = Done> + Send + 'static,
{
    let _entered = runtime().enter();
    let mut fut: Pin<Box<F>> = Box::pin(fut);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(done) => Started::Now(Box::new(done)),
        // Polled again by the task with a real waker, which re-registers it.
        Poll::Pending => Started::Later(spawn(inbox, fut)),
    }
}
