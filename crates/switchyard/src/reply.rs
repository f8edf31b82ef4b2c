//! What a command's one handler sends back: the result, and the channel it travels on.

use switchyard_core::SendError;
use tokio::sync::oneshot;

pub use switchyard_core::CommandResult;

/// The channel a worker answers a command on.
pub(crate) type CommandReply = oneshot::Sender<Result<CommandResult, SendError>>;
