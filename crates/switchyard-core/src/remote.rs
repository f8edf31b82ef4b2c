//! Commands and requests across processes: an optional capability of a transport.
//!
//! A transport that can carry commands to a handler in another process (NATS: core
//! request/reply with a queue group per command topic) answers
//! [`Subscriber::remote_commands`](crate::Subscriber::remote_commands) with a
//! [`RemoteCommands`]; the others keep the default, `None`, and their commands stay in
//! process. The bus stays transport-agnostic: it sends a command it has no local handler for
//! through [`RemoteCommands::send`], and serves each command handler it registers through
//! [`RemoteCommands::serve`].

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use smol_str::SmolStr;

use crate::envelope::Envelope;
use crate::error::{SendError, SubscribeError, TransportError};
use crate::topic::Topic;
use crate::transport::BoxFuture;

/// What the one handler of a command produced.
#[derive(Debug, Clone)]
pub struct CommandResult {
    /// The reply envelope, or `None` when the handler acknowledged without replying.
    pub reply: Option<Envelope>,
    /// Name of the handler that produced it.
    pub handler: SmolStr,
    /// Attempts it took: the bus's, or those of a retry layer inside the handler (the
    /// resilience stack's), which notes them ([`delivered::note_attempts`](crate::delivered::note_attempts)).
    pub attempts: u32,
}

/// A transport's way of carrying commands to handlers in other processes.
pub trait RemoteCommands: Send + Sync + 'static {
    /// Sends `command` to one of the processes serving its topic and waits for the result,
    /// at most `deadline` (or the transport's own bound when `None`, so a vanished handler
    /// process never leaves the caller waiting forever). Fails fast with
    /// [`SendError::NoHandler`] when no process serves the topic.
    fn send(
        &self,
        command: Envelope,
        deadline: Option<Duration>,
    ) -> BoxFuture<'_, Result<CommandResult, SendError>>;

    /// Serves the commands of `topic` sent from any process, sharing them with every other
    /// process serving it (each command goes to one). The interest is in place when this
    /// returns; dropping the stream withdraws it.
    fn serve<'a>(
        &'a self,
        topic: &'a Topic,
    ) -> BoxFuture<'a, Result<IncomingCommands, SubscribeError>>;
}

/// The commands one [`RemoteCommands::serve`] call receives.
pub type IncomingCommands = Pin<Box<dyn Stream<Item = IncomingCommand> + Send>>;

/// The transport side of answering one remote command. Implemented by each transport.
pub trait CommandResponder: Send + 'static {
    /// Sends the result back to the sender.
    fn respond(
        self: Box<Self>,
        result: Result<CommandResult, SendError>,
    ) -> BoxFuture<'static, Result<(), TransportError>>;
}

/// One command from another process, waiting for its result.
pub struct IncomingCommand {
    /// The command.
    pub envelope: Envelope,
    /// What is left of the sender's deadline when it arrived, if it set one: the receiving
    /// bus answers `SendError::Timeout` once it is up, and shows it to the handler
    /// (`DeliveryInfo::deadline`, unless the transport already set that on the envelope).
    /// `None`: the bus waits for the handler's result however long it takes (commands sent
    /// without a deadline, and durable commands, which are settled only once handled).
    pub deadline: Option<Duration>,
    responder: Box<dyn CommandResponder>,
}

impl IncomingCommand {
    /// A command answered through `responder`.
    pub fn new(
        envelope: Envelope,
        deadline: Option<Duration>,
        responder: Box<dyn CommandResponder>,
    ) -> Self {
        Self {
            envelope,
            deadline,
            responder,
        }
    }

    /// Sends the result back to the sender.
    pub async fn respond(
        self,
        result: Result<CommandResult, SendError>,
    ) -> Result<(), TransportError> {
        self.responder.respond(result).await
    }

    /// The command, its deadline and its responder, to answer after handling.
    pub fn into_parts(self) -> (Envelope, Option<Duration>, Box<dyn CommandResponder>) {
        (self.envelope, self.deadline, self.responder)
    }
}

impl fmt::Debug for IncomingCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingCommand")
            .field("envelope", &self.envelope)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
