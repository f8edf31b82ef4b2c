//! What a handler tells the bus about one message.

use std::time::Duration;

use crate::envelope::Envelope;

/// The result of handling one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the message is settled.
    Ack,
    /// Try again later (after `after`, or the subscription's retry delay). Counts as an attempt;
    /// when attempts run out the message is dead-lettered.
    Retry {
        /// How long to wait before the next attempt.
        after: Option<Duration>,
    },
    /// Permanently refused: the message goes to the dead-letter queue with this reason.
    Reject {
        /// Why the handler refused it.
        reason: String,
    },
    /// Done, with a reply for the sender of a command or request.
    ///
    /// Boxed, so an `Outcome` (and `Result<Outcome, BoxError>`) stays four words: middleware
    /// moves the result of every call through its layers, and most calls end in `Ack`.
    Reply(Box<Envelope>),
}

impl Outcome {
    /// A retry with the subscription's default delay.
    pub fn retry() -> Self {
        Self::Retry { after: None }
    }

    /// A reply carrying `envelope` (see [`Envelope::reply`]).
    pub fn reply(envelope: Envelope) -> Self {
        Self::Reply(Box::new(envelope))
    }

    /// A rejection with a reason.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject {
            reason: reason.into(),
        }
    }
}
