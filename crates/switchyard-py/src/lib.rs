//! # switchyard-py
//!
//! The native half of the `switchyard` Python package: `switchyard._switchyard`. The Python
//! package (`python/switchyard`) builds the asyncio API on it; see `docs/python.md`.
//!
//! - [`bus::NativeBus`]: a `switchyard::Bus` (in memory, or on a transport) whose Python
//!   handlers are ordinary bus handlers on the Rust side.
//! - [`inbox`]: how tokio threads hand work to the event loop without the GIL.
//! - [`ops`]: operations Python awaits (polled once in place, else spawned on tokio).
//! - [`transport::NativeTransport`]: the embedded log and NATS JetStream.
//! - [`testing`]: Rust components to run beside Python ones (tests, mixed examples).
#![forbid(unsafe_code)]

pub mod bus;
pub mod envelope;
mod errors;
pub mod inbox;
pub mod ops;
pub mod testing;
pub mod transport;

use pyo3::prelude::*;

/// The native module `switchyard._switchyard`.
#[pymodule]
fn _switchyard(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<bus::NativeBus>()?;
    m.add_class::<bus::PySession>()?;
    m.add_class::<bus::PyReply>()?;
    m.add_class::<bus::PyReplies>()?;
    m.add_class::<envelope::PyEnvelope>()?;
    m.add_class::<envelope::PyDeadLetter>()?;
    m.add_class::<transport::NativeTransport>()?;
    m.add_class::<testing::RustCounter>()?;
    let testing = PyModule::new(py, "testing")?;
    testing.add_function(wrap_pyfunction!(testing::rust_counter, &testing)?)?;
    testing.add_function(wrap_pyfunction!(testing::rust_echo_handler, &testing)?)?;
    testing.add_function(wrap_pyfunction!(testing::rust_publish, &testing)?)?;
    testing.add_function(wrap_pyfunction!(testing::rust_send, &testing)?)?;
    testing.add_function(wrap_pyfunction!(testing::new_message_id, &testing)?)?;
    m.add_submodule(&testing)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // A forked child (`multiprocessing`) must not continue its parent's run of message ids.
    let after_in_child = wrap_pyfunction!(forget_id_run, m)?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("after_in_child", after_in_child)?;
    py.import("os")?
        .call_method("register_at_fork", (), Some(&kwargs))?;
    Ok(())
}

/// Run in a forked child by `os.register_at_fork`: its next message id is a fresh draw
/// (`switchyard::id::forget_run`), and its buses run on a tokio runtime of its own (the
/// parent's worker threads do not exist in the child).
#[pyfunction]
fn forget_id_run() {
    switchyard::id::forget_run();
    ops::after_fork_in_child();
}
