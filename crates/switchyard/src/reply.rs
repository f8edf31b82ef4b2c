//! What a command's one handler sends back: the result, and the channel it travels on.

use std::any::{Any, TypeId};
use std::cell::Cell;

use smol_str::SmolStr;
use switchyard_core::{Envelope, SendError};
use tokio::sync::oneshot;

use crate::remote_reply::RemoteReply;

pub use switchyard_core::CommandResult;

/// A typed handler's output handed to a typed sender in this process as it is, not encoded:
/// an `Option<O>` in its box ([`box_output`]), `Some` until the sender takes the output out
/// ([`take_output`]) and keeps the emptied box for the next output of its type.
pub(crate) type TypedValue = Box<dyn Any + Send>;

/// The largest boxed output (`Option<O>`, in bytes) whose emptied box a thread keeps.
const KEPT_OUTPUT_UP_TO: usize = 256;

thread_local! {
    /// The emptied box of the last typed output a sender on this thread took: the next
    /// output of the same type boxed on this thread goes in it (an inline command's handler
    /// runs on its sender's thread), so a typed round trip neither allocates nor frees one.
    static KEPT_OUTPUT: Cell<Option<TypedValue>> = const { Cell::new(None) };
}

/// Boxes a handler's `output` for its typed sender: in this thread's kept box when that is
/// one of its type.
#[inline]
pub(crate) fn box_output<O: Send + 'static>(output: O) -> TypedValue {
    if let Some(mut kept) = KEPT_OUTPUT.try_with(Cell::take).ok().flatten() {
        match kept.downcast_mut::<Option<O>>() {
            Some(slot) => {
                *slot = Some(output);
                return kept;
            }
            // Another type's: left for the sender of that type.
            None => {
                let _ = KEPT_OUTPUT.try_with(|k| k.set(Some(kept)));
            }
        }
    }
    Box::new(Some(output))
}

/// The output in `boxed` (made by [`box_output`]), if it is an `O`; the emptied box is kept
/// on this thread for the next output of its type.
#[inline]
pub(crate) fn take_output<O: Send + 'static>(mut boxed: TypedValue) -> Option<O> {
    let output = boxed.downcast_mut::<Option<O>>()?.take();
    if size_of::<Option<O>>() <= KEPT_OUTPUT_UP_TO {
        let _ = KEPT_OUTPUT.try_with(|k| k.set(Some(boxed)));
    }
    output
}

/// The type a typed sender waits for (`TypeId::of::<C::Output>`), as a function pointer: one
/// word in every queue entry rather than a 16-byte `TypeId`.
pub(crate) type WantedType = fn() -> TypeId;

/// What a worker sends back for a handled command: the reply as the handler boxed it (or its
/// typed output, for a typed sender in this process) and the attempts it took. The sender
/// knows the handler's name, so it is not sent; the channel carries a few words instead of a
/// whole [`CommandResult`] with its envelope inline, which every move through the channel
/// and the waiting futures would copy.
pub(crate) struct Answer {
    pub(crate) reply: Option<Box<Envelope>>,
    pub(crate) typed: Option<TypedValue>,
    pub(crate) attempts: u32,
}

impl Answer {
    /// The public result, for the handler named `handler` (a typed output, which only a
    /// typed sender asks for, is dropped).
    #[inline(always)] // built in the caller's place: the reply is copied once, out of its box
    pub(crate) fn into_result(self, handler: SmolStr) -> CommandResult {
        CommandResult {
            // Out of its box, which is kept for this thread's next reply.
            reply: self.reply.map(switchyard_core::Outcome::unbox),
            handler,
            attempts: self.attempts,
        }
    }
}

/// What travels back on a command's channel.
pub(crate) type Answered = Result<Answer, SendError>;

/// The channel a worker answers a command on (none for a command run on its sender's task,
/// which takes the answer back from the handling itself), and the output type its sender
/// takes without encoding (a typed `send` in this process), if any.
pub(crate) struct CommandReply {
    to: ReplyTo,
    pub(crate) typed: Option<WantedType>,
}

/// Where the answer goes.
enum ReplyTo {
    /// A sender in this process waits on the channel.
    Local(oneshot::Sender<Answered>),
    /// A command from another process: the worker answers through the transport itself.
    Remote(Box<RemoteReply>),
    /// A command run on its sender's task (`inline.rs`): the answer is handed back by
    /// [`CommandReply::send`].
    Kept,
}

impl CommandReply {
    /// A reply channel and its receiving end.
    pub(crate) fn channel(typed: Option<WantedType>) -> (Self, AnswerRx) {
        let (tx, rx) = oneshot::channel();
        let to = ReplyTo::Local(tx);
        (Self { to, typed }, rx)
    }

    /// The reply to a command from another process, answered through the transport.
    pub(crate) fn remote(reply: RemoteReply) -> Self {
        Self {
            to: ReplyTo::Remote(Box::new(reply)),
            typed: None,
        }
    }

    /// No channel: the answer is handed back by [`send`](Self::send) (`inline.rs`).
    pub(crate) fn kept(typed: Option<WantedType>) -> Self {
        Self {
            to: ReplyTo::Kept,
            typed,
        }
    }

    /// For a command from another process with a deadline, queued: `done` completes once the
    /// worker answered (or dropped) it, so the pump stops watching the deadline.
    pub(crate) fn set_done(&mut self, done: oneshot::Sender<()>) {
        if let ReplyTo::Remote(remote) = &mut self.to {
            remote.done = Some(done);
        }
    }

    /// Sends the answer; a sender that gave up (deadline passed) discards it. A kept reply's
    /// answer is returned.
    #[inline]
    pub(crate) fn send(self, answer: Answered) -> Option<Answered> {
        match self.to {
            ReplyTo::Local(tx) => {
                let _ = tx.send(answer);
                None
            }
            ReplyTo::Remote(remote) => {
                remote.send(answer);
                None
            }
            ReplyTo::Kept => Some(answer),
        }
    }
}

/// The sender's end of [`CommandReply`].
pub(crate) type AnswerRx = oneshot::Receiver<Answered>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The address of the box an output is in.
    fn addr(boxed: &TypedValue) -> *const () {
        std::ptr::from_ref::<dyn Any + Send>(&**boxed).cast::<()>()
    }

    #[test]
    fn an_output_goes_in_the_box_the_last_one_of_its_type_left_on_the_thread() {
        let first = box_output(7u64);
        let at = addr(&first);
        assert_eq!(take_output::<u64>(first), Some(7));
        // Another type meanwhile neither takes nor drops the kept box.
        let other = box_output(String::from("x"));
        assert_ne!(addr(&other), at);
        drop(other);
        let second = box_output(8u64);
        assert_eq!(addr(&second), at, "the kept box is reused");
        assert_eq!(take_output::<u64>(second), Some(8));
    }

    #[test]
    fn an_output_is_only_taken_as_its_own_type() {
        let boxed = box_output(5u32);
        assert_eq!(take_output::<u64>(boxed), None);
        let boxed = box_output(5u32);
        assert_eq!(take_output::<u32>(boxed), Some(5));
        // The kept box is a u32's: a u64 gets a box of its own, and its value.
        let boxed = box_output(9u64);
        assert_eq!(take_output::<u64>(boxed), Some(9));
    }
}
