//! Where messages go when they cannot be handled: the dead-letter sink.
//!
//! Core holds the sink trait, the [`DeadLetterFilter`] and the one in-memory store,
//! [`InMemoryDeadLetters`] (what the bus, the pipeline and a node keep dead letters in when no
//! file is given); `switchyard-middleware` adds the browsable `DeadLetterQueue` trait (which
//! the in-memory store implements there), replay and a file-backed queue.

mod filter;
mod memory;
mod route;

pub use filter::DeadLetterFilter;
pub use memory::{DeadLetterKey, InMemoryDeadLetters};
pub use route::DeadLetterRoute;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::envelope::Envelope;

/// Header set on a replayed message: the handler that dead-lettered it (`unknown` when the
/// dead letter names none).
pub const REPLAYED_FROM: &str = "replayed-from";
/// Header set on a replayed message: how many times it has been replayed. A replay keeps the
/// message's id; transports that drop a repeated id as a duplicate (NATS JetStream's
/// duplicate window) tell a replay from a resend by this count.
pub const REPLAY_COUNT: &str = "replay-count";

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// The handler returned errors (or retries) until attempts ran out.
    HandlerFailed,
    /// The handler panicked on the last attempt.
    Panicked,
    /// The handler rejected the message.
    Rejected,
    /// The payload could not be decoded into the subscribed type.
    DecodeFailed,
    /// A full queue evicted it (drop-oldest policy).
    Dropped,
    /// The bus shut down before the message was handled.
    Shutdown,
    /// A transport redelivered it the maximum number of times.
    MaxDeliveries,
    /// Nobody could take it (e.g. its subscription was removed before it ran).
    Unroutable,
    /// Its sender's deadline (`delivery.deadline`: a request's, or what was left of one
    /// when it arrived from another process) passed while it waited in a queue: nobody
    /// waits for its result, so the handler was never called (attempts 0).
    Expired,
}

/// One dead-lettered message with the story of its failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original envelope, raw payload included.
    pub envelope: Envelope,
    /// Broad reason.
    pub reason: DeadLetterReason,
    /// The error chain or reason text.
    pub error: String,
    /// Subscription or handler that gave up on it.
    pub handler: Option<SmolStr>,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt started.
    pub first_attempt_at: Option<SystemTime>,
    /// When it was dead-lettered.
    pub dead_lettered_at: SystemTime,
}

impl DeadLetter {
    /// A dead letter for `envelope`, stamped now, with attempts and first attempt taken from
    /// the envelope (its sender's deadline, `delivery.deadline`, is cleared).
    ///
    /// A typed message the bus carried [unencoded](Envelope::set_unencoded) is encoded here:
    /// a dead letter always holds the message's bytes. Should that encoding fail, the letter
    /// keeps the empty payload (and the value, its only form) and its error says why. Once
    /// the letter has the bytes, the value the bus carried beside them is let go of: a store
    /// bounded by bytes ([`size`](Self::size)) does not weigh it, and a replay decodes.
    pub fn new(mut envelope: Envelope, reason: DeadLetterReason, error: impl Into<String>) -> Self {
        let mut error = error.into();
        // The sender's deadline (an instant of this process, never serialized) is not kept:
        // whoever sends the letter's envelope again sets a deadline of their own, and a
        // replayed request is not expired at once by its first sender's.
        envelope.delivery.deadline = None;
        match envelope.encode_payload() {
            Ok(()) => envelope.local.clear(),
            Err(e) => error = format!("{error} (and its payload could not be encoded: {e})"),
        }
        Self {
            attempts: envelope.delivery.attempt,
            first_attempt_at: envelope.delivery.first_delivered_at,
            envelope,
            reason,
            error,
            handler: None,
            dead_lettered_at: SystemTime::now(),
        }
    }

    /// Names the handler.
    pub fn with_handler(mut self, handler: impl Into<SmolStr>) -> Self {
        self.handler = Some(handler.into());
        self
    }
}

/// The default byte bound of [`InMemoryDeadLetters`]: 64 MiB.
pub const DEFAULT_DEAD_LETTER_BYTES: usize = 64 * 1024 * 1024;

impl DeadLetter {
    /// What this letter weighs in a store: payload, header names and values, topic and
    /// error text, in bytes.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .envelope
            .headers()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        self.envelope.payload.len()
            + headers
            + self.envelope.topic.as_str().len()
            + self.error.len()
    }
}

/// Receives dead letters. Must not block for long: it is called from bus workers.
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Stores one dead letter.
    fn put(&self, letter: DeadLetter);
}

impl<T: DeadLetterSink> DeadLetterSink for std::sync::Arc<T> {
    fn put(&self, letter: DeadLetter) {
        (**self).put(letter)
    }
}
