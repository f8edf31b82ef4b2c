//! The conformance suite against the memory transport and the embedded log, and the bus suite
//! on the in-process bus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod faulty;
mod in_process;
mod log;
mod memory;
