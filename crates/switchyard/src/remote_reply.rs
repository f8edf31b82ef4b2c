//! The answer to a command from another process, sent by the worker that handled it.
//!
//! A command a transport receives for a handler here is queued with its transport
//! responder; the worker answers it itself once the handler is done (subscription -> pump ->
//! worker -> connection, no hand-off back to the pump). The task that received it answers
//! only what fails before the command is queued, and `timeout` when the command's deadline
//! passes first: the responder sits in a [`RemoteSlot`] shared by both, answered once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use smol_str::SmolStr;
use switchyard_core::{
    BoxFuture, CommandResponder, CommandResult, SendError, Topic, TransportError,
};
use tokio::sync::oneshot;

use crate::reply::Answered;
use crate::state::{BusInner, RUNNING};

/// The responder of one remote command, answered once: by the worker with the result (or by
/// the queue entry dropped unanswered), or by the task that received the command, whichever
/// comes first.
pub(crate) struct RemoteSlot(Mutex<SlotState>);

struct SlotState {
    responder: Option<Box<dyn CommandResponder>>,
    /// Set once the command is queued: from then on a reply dropped unanswered answers
    /// (before, the receiving task answers why it could not be queued).
    queued: bool,
}

impl RemoteSlot {
    pub(crate) fn new(responder: Box<dyn CommandResponder>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(SlotState {
            responder: Some(responder),
            queued: false,
        })))
    }

    /// The responder, unless the command was answered already.
    pub(crate) fn take(&self) -> Option<Box<dyn CommandResponder>> {
        self.0.lock().responder.take()
    }

    /// The command is in the handler's queue.
    pub(crate) fn set_queued(&self) {
        self.0.lock().queued = true;
    }

    /// The responder, if the command was queued and not answered yet.
    fn take_queued(&self) -> Option<Box<dyn CommandResponder>> {
        let mut state = self.0.lock();
        if state.queued {
            state.responder.take()
        } else {
            None
        }
    }
}

/// A remote command's reply, as queued with the command.
pub(crate) struct RemoteReply {
    pub(crate) slot: Arc<RemoteSlot>,
    /// Dropped once answered (or dropped unanswered): wakes the receiving task when it waits
    /// for the command's deadline. `None` without a deadline (nobody waits).
    pub(crate) done: Option<oneshot::Sender<()>>,
    pub(crate) bus: Weak<BusInner>,
    pub(crate) topic: Topic,
    pub(crate) handler: SmolStr,
}

impl RemoteReply {
    /// Sends the worker's answer (as the reply envelope: a typed output is for senders in
    /// this process only).
    pub(crate) fn send(mut self, answer: Answered) {
        if let Some(responder) = self.slot.take() {
            let result = answer.map(|a| a.into_result(self.handler.clone()));
            self.respond(responder, result);
        }
    }

    fn respond(
        &mut self,
        responder: Box<dyn CommandResponder>,
        result: Result<CommandResult, SendError>,
    ) {
        let result = match result {
            // Not handled because this bus is stopping: as for a command arriving now, this
            // process has no handler any more (a transport may hand the command to another
            // process: a durable command is redelivered).
            Err(SendError::NotProcessed(_)) if !self.bus_running() => Err(SendError::NoHandler {
                topic: self.topic.clone(),
            }),
            other => other,
        };
        respond_soon(
            responder.respond(result),
            self.handler.clone(),
            self.topic.clone(),
        );
        self.done = None;
    }

    fn bus_running(&self) -> bool {
        self.bus
            .upgrade()
            .is_some_and(|bus| bus.state.load(Ordering::Acquire) == RUNNING)
    }
}

impl Drop for RemoteReply {
    /// Dropped unanswered once queued (the handler stopped before answering): answered as a
    /// sender in this process learns it, `NotProcessed`, or `NoHandler` when the bus is
    /// stopping.
    fn drop(&mut self) {
        if let Some(responder) = self.slot.take_queued() {
            self.respond(
                responder,
                Err(SendError::NotProcessed(
                    "the handler stopped before answering".into(),
                )),
            );
        }
    }
}

/// Runs a responder's answer: at once, on the calling task, as far as it goes without
/// waiting (for NATS core request/reply: the reply handed to the connection), and the rest,
/// if anything is left to wait for (a durable command's settling), on a task of its own, so
/// the worker is not held up.
pub(crate) fn respond_soon(
    mut answer: BoxFuture<'static, Result<(), TransportError>>,
    handler: SmolStr,
    topic: Topic,
) {
    let warn = move |e: TransportError| {
        tracing::warn!(%handler, %topic, error = %e, "could not answer a remote command");
    };
    // A future may be polled with any waker; one that is not ready is polled again below
    // with its task's, and registers that one.
    match answer
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => warn(e),
        Poll::Pending => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = answer.await {
                        warn(e);
                    }
                });
            }
        }
    }
}
