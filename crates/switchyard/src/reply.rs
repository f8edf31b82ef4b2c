//! What a command's one handler sends back: the result, and the channel it travels on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use switchyard_core::{CommandResponder, SendError, Topic};
use tokio::sync::oneshot;

pub use switchyard_core::CommandResult;

use crate::state::{BusInner, RUNNING};

/// Where a worker answers a command: the sender in this process, or the transport's
/// responder of a command from another process, answered by the worker itself (no hand-off
/// back to the task that received it).
pub(crate) enum CommandReply {
    /// A sender in this process waits on the channel.
    Local(oneshot::Sender<Result<CommandResult, SendError>>),
    /// A command from another process.
    Remote(RemoteReply),
}

impl From<oneshot::Sender<Result<CommandResult, SendError>>> for CommandReply {
    fn from(tx: oneshot::Sender<Result<CommandResult, SendError>>) -> Self {
        Self::Local(tx)
    }
}

impl CommandReply {
    /// Sends the result (a sender that gave up discards it).
    pub(crate) async fn answer(self, result: Result<CommandResult, SendError>) {
        match self {
            Self::Local(tx) => {
                let _ = tx.send(result);
            }
            Self::Remote(remote) => remote.answer(result).await,
        }
    }

    /// [`answer`](Self::answer) from code that cannot wait: a remote answer is sent from a
    /// task of its own.
    pub(crate) fn answer_now(self, result: Result<CommandResult, SendError>) {
        match self {
            Self::Local(tx) => {
                let _ = tx.send(result);
            }
            Self::Remote(remote) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(remote.answer(result));
                }
            }
        }
    }
}

/// The responder of one remote command, answered once: by the worker with the result, by
/// the task serving it with an early failure or at the deadline, whichever comes first.
pub(crate) struct RemoteSlot {
    responder: Mutex<Option<Box<dyn CommandResponder>>>,
    /// Set once the command is queued: from then on a reply dropped unanswered answers.
    queued: AtomicBool,
}

impl RemoteSlot {
    pub(crate) fn new(responder: Box<dyn CommandResponder>) -> Arc<Self> {
        Arc::new(Self {
            responder: Mutex::new(Some(responder)),
            queued: AtomicBool::new(false),
        })
    }

    /// The responder, unless the command was answered already.
    pub(crate) fn take(&self) -> Option<Box<dyn CommandResponder>> {
        self.responder.lock().take()
    }

    pub(crate) fn set_queued(&self) {
        self.queued.store(true, Ordering::Release);
    }
}

/// A remote command's reply as queued with the command.
pub(crate) struct RemoteReply {
    pub(crate) slot: Arc<RemoteSlot>,
    /// Dropped once answered (or dropped): wakes the task serving the command when it waits
    /// for the deadline. `None` without a deadline (nobody waits).
    pub(crate) _done: Option<oneshot::Sender<()>>,
    pub(crate) bus: Weak<BusInner>,
    pub(crate) topic: Topic,
    pub(crate) handler: smol_str::SmolStr,
}

impl RemoteReply {
    fn bus_running(&self) -> bool {
        self.bus
            .upgrade()
            .is_some_and(|bus| bus.state.load(Ordering::Acquire) == RUNNING)
    }

    async fn answer(self, result: Result<CommandResult, SendError>) {
        let Some(responder) = self.slot.take() else {
            return;
        };
        let result = match result {
            // Not handled because this bus is stopping: as for a command arriving now, this
            // process has no handler any more (a transport may hand the command to another
            // process: a durable command is redelivered).
            Err(SendError::NotProcessed(_)) if !self.bus_running() => Err(SendError::NoHandler {
                topic: self.topic.clone(),
            }),
            other => other,
        };
        if let Err(e) = responder.respond(result).await {
            tracing::warn!(handler = %self.handler, topic = %self.topic, error = %e, "could not answer a remote command");
        }
    }
}

impl Drop for RemoteReply {
    /// Dropped unanswered once queued (the handler stopped before answering): answered as a
    /// local sender would learn it, `NotProcessed`, or `NoHandler` when the bus is stopping
    /// (this process has no handler any more; a transport may hand the command to another).
    fn drop(&mut self) {
        if !self.slot.queued.load(Ordering::Acquire) {
            // Not queued: the serving task answers the failure to queue it.
            return;
        }
        let Some(responder) = self.slot.take() else {
            return;
        };
        let result = if self.bus_running() {
            Err(SendError::NotProcessed(
                "the handler stopped before answering".into(),
            ))
        } else {
            Err(SendError::NoHandler {
                topic: self.topic.clone(),
            })
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = responder.respond(result).await;
            });
        }
    }
}
