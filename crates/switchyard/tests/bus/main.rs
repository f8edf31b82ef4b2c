//! Integration tests of the in-process bus. Each module covers one behaviour of issue [core].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod backoff;
mod backpressure;
mod causation;
mod close_twice;
mod commands;
mod failures;
mod inline;
mod limits;
mod local;
mod ordering;
mod prefetch;
mod routing;
mod shutdown;
mod stress;

use serde::{Deserialize, Serialize};
use switchyard::{Command, Kind, Message};

/// A small event used across tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// A number.
    pub n: u64,
}
impl Message for Ping {
    const TOPIC: &'static str = "test.ping";
}

/// A command doubling its input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Double {
    /// The input.
    pub n: u64,
}
impl Message for Double {
    const TOPIC: &'static str = "math.double";
    const KIND: Kind = Kind::Command;
}
impl Command for Double {
    type Output = u64;
}

/// Longest wait for an expected event.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(5);
