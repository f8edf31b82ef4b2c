//! What a command's one handler sends back: the result, and the channel it travels on.

use smol_str::SmolStr;
use switchyard_core::{Envelope, SendError};
use tokio::sync::oneshot;

pub use switchyard_core::CommandResult;

/// What a worker sends back for a handled command: the reply as the handler boxed it and
/// the attempts it took. The sender knows the handler's name, so it is not sent; the channel
/// carries two words instead of a whole [`CommandResult`] with its envelope inline, which
/// every move through the channel and the waiting futures would copy.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) reply: Option<Box<Envelope>>,
    pub(crate) attempts: u32,
}

impl Answer {
    /// The public result, for the handler named `handler`.
    pub(crate) fn into_result(self, handler: SmolStr) -> CommandResult {
        CommandResult {
            reply: self.reply.map(|r| *r),
            handler,
            attempts: self.attempts,
        }
    }
}

/// What travels back on a command's channel.
pub(crate) type Answered = Result<Answer, SendError>;

/// The channel a worker answers a command on.
pub(crate) type CommandReply = oneshot::Sender<Answered>;

/// The sender's end of [`CommandReply`].
pub(crate) type AnswerRx = oneshot::Receiver<Answered>;
