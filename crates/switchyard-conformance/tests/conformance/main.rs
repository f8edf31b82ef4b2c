//! The conformance suite against the memory transport and the embedded log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod log;
mod memory;
