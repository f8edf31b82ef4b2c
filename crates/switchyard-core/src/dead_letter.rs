//! Where messages go when they cannot be handled: the dead-letter sink.
//!
//! Core holds the trait and a bounded in-memory implementation; `switchyard-middleware` adds
//! browsing, replay and a file-backed queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::envelope::{Envelope, MessageId};

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
    /// A dead letter for `envelope`, stamped now, with attempts and first attempt taken from the envelope.
    pub fn new(envelope: Envelope, reason: DeadLetterReason, error: impl Into<String>) -> Self {
        Self {
            attempts: envelope.delivery.attempt,
            first_attempt_at: envelope.delivery.first_delivered_at,
            envelope,
            reason,
            error: error.into(),
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

/// Receives dead letters. Must not block for long: it is called from bus workers.
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Stores one dead letter.
    fn put(&self, letter: DeadLetter);
}

/// A bounded in-memory dead-letter store; when full, the oldest entry is evicted and counted.
///
/// ```
/// use switchyard_core::{DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, InMemoryDeadLetters, Topic};
/// let dlq = InMemoryDeadLetters::new(2);
/// for _ in 0..3 {
///     let env = Envelope::new(Topic::new("a.b")?, "x");
///     dlq.put(DeadLetter::new(env, DeadLetterReason::Rejected, "no"));
/// }
/// assert_eq!(dlq.len(), 2);
/// assert_eq!(dlq.evicted(), 1);
/// # Ok::<(), switchyard_core::TopicError>(())
/// ```
#[derive(Debug)]
pub struct InMemoryDeadLetters {
    entries: Mutex<VecDeque<DeadLetter>>,
    capacity: usize,
    evicted: AtomicU64,
    total: AtomicU64,
}

impl InMemoryDeadLetters {
    /// A store holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            evicted: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, VecDeque<DeadLetter>> {
        self.entries.lock()
    }

    /// A copy of every entry, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.lock().iter().cloned().collect()
    }

    /// The entry for one message id, if present.
    pub fn get(&self, id: MessageId) -> Option<DeadLetter> {
        self.lock().iter().find(|l| l.envelope.id == id).cloned()
    }

    /// Removes and returns every entry.
    pub fn drain(&self) -> Vec<DeadLetter> {
        self.lock().drain(..).collect()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted because the store was full.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Entries ever received.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl Default for InMemoryDeadLetters {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl DeadLetterSink for InMemoryDeadLetters {
    fn put(&self, letter: DeadLetter) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut q = self.lock();
        if q.len() >= self.capacity {
            q.pop_front();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(letter);
    }
}

impl<T: DeadLetterSink> DeadLetterSink for std::sync::Arc<T> {
    fn put(&self, letter: DeadLetter) {
        (**self).put(letter)
    }
}
