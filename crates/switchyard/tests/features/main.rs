//! Integration tests of the bus features of issue [bus-features]: publish-and-wait, delayed
//! delivery, handler priority groups, sessions, filters, registry, lifecycle events, batching.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod batching;
mod delayed;
mod failure_reports;
mod filters;
mod priority_groups;
mod sessions;
mod wait;

use serde::{Deserialize, Serialize};
use switchyard::{Command, Kind, Message};

/// An event used across tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// A number.
    pub n: u64,
}
impl Message for Tick {
    const TOPIC: &'static str = "clock.tick";
}

/// A command used across tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Whoami;
impl Message for Whoami {
    const TOPIC: &'static str = "id.whoami";
    const KIND: Kind = Kind::Command;
}
impl Command for Whoami {
    type Output = String;
}

/// Longest wait for an expected event.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(5);
