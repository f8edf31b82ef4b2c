//! Lifecycle events the bus publishes for observers when
//! [`BusBuilder::lifecycle_events`](crate::BusBuilder::lifecycle_events) is on.

use serde::{Deserialize, Serialize};
use switchyard_core::Message;

/// A command or request handler started working on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStarted {
    /// The command's message id.
    pub command_id: String,
    /// The command's topic.
    pub topic: String,
    /// The handler's name.
    pub handler: String,
}
impl Message for CommandStarted {
    const TOPIC: &'static str = "switchyard.command.started";
}

/// A command or request handler finished (successfully or not, after all attempts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFinished {
    /// The command's message id.
    pub command_id: String,
    /// The command's topic.
    pub topic: String,
    /// The handler's name.
    pub handler: String,
    /// True when the handler acknowledged or replied.
    pub ok: bool,
    /// The last error, when it failed.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Time from the first attempt to the end, in microseconds.
    pub duration_us: u64,
}
impl Message for CommandFinished {
    const TOPIC: &'static str = "switchyard.command.finished";
}
