//! What a command's one handler sends back: the result, and the channel it travels on.

use smol_str::SmolStr;
use switchyard_core::{Envelope, SendError};
use tokio::sync::oneshot;

/// What the one handler of a command produced.
#[derive(Debug, Clone)]
pub struct CommandResult {
    /// The reply envelope, or `None` when the handler acknowledged without replying.
    pub reply: Option<Envelope>,
    /// Name of the handler that produced it.
    pub handler: SmolStr,
    /// Attempts it took.
    pub attempts: u32,
}

/// The channel a worker answers a command on.
pub(crate) type CommandReply = oneshot::Sender<Result<CommandResult, SendError>>;
