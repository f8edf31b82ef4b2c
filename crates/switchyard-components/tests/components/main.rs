//! Integration tests of the component model (issue [components]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod alerts;
mod builtins;
mod contexts;
mod declarations;
mod enforcement;
mod error_handler;
mod export;
mod no_leak;
mod noticed_stop36;
mod review_rev11;
mod review_rev32;
mod review_rev42;
mod review_rev6;
mod rules;
mod traces;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{Message, Pattern};
use switchyard_components::{ComponentSpec, Role};

/// Longest wait for an expected event.
pub const WAIT: Duration = Duration::from_secs(10);

/// A small payload used across tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// A number.
    pub n: u64,
}

impl Message for Note {
    const TOPIC: &'static str = "test.note.event";
}

/// A spec with these subscriptions and publications.
pub fn spec(name: &str, role: Role, domain: &str, subs: &[&str], pubs: &[&str]) -> ComponentSpec {
    let mut s = ComponentSpec::new(name, role, domain);
    s.subscribes = subs.iter().map(|p| Pattern::new(p).unwrap()).collect();
    s.publishes = pubs.iter().map(|p| Pattern::new(p).unwrap()).collect();
    s
}
