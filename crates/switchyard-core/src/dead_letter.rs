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

/// A bounded in-memory dead-letter store, bounded in entries and in bytes; when either bound
/// is passed, the oldest entries are evicted and counted ([`evicted`](Self::evicted),
/// [`evicted_bytes`](Self::evicted_bytes)). A letter's size is its payload, headers, topic
/// and error text ([`DeadLetter::size`]). The newest letter is always kept, so the store holds
/// at most `max_bytes` plus one letter (which the bus's `max_message_bytes` bounds).
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
    store: Mutex<Store>,
    capacity: usize,
    max_bytes: usize,
    evicted: AtomicU64,
    evicted_bytes: AtomicU64,
    total: AtomicU64,
}

/// The entries and their total size, under one lock.
#[derive(Debug, Default)]
struct Store {
    entries: VecDeque<DeadLetter>,
    bytes: usize,
}

/// The default byte bound of [`InMemoryDeadLetters`]: 64 MiB.
pub const DEFAULT_DEAD_LETTER_BYTES: usize = 64 * 1024 * 1024;

impl DeadLetter {
    /// What this letter weighs in a store: payload, header names and values, topic and
    /// error text, in bytes.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .envelope
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        self.envelope.payload.len()
            + headers
            + self.envelope.topic.as_str().len()
            + self.error.len()
    }
}

impl InMemoryDeadLetters {
    /// A store holding at most `capacity` entries (at least 1) and
    /// [`DEFAULT_DEAD_LETTER_BYTES`].
    pub fn new(capacity: usize) -> Self {
        Self::bounded(capacity, DEFAULT_DEAD_LETTER_BYTES)
    }

    /// A store holding at most `capacity` entries (at least 1) and `max_bytes` bytes (see
    /// [`DeadLetter::size`]).
    ///
    /// ```
    /// use switchyard_core::{DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, InMemoryDeadLetters, Topic};
    /// let dlq = InMemoryDeadLetters::bounded(100, 2_500);
    /// for _ in 0..3 {
    ///     let env = Envelope::new(Topic::new("a.b")?, vec![0u8; 1_000]);
    ///     dlq.put(DeadLetter::new(env, DeadLetterReason::Rejected, "no"));
    /// }
    /// assert_eq!(dlq.len(), 2, "a third 1 kB letter would pass 2.5 kB");
    /// assert_eq!(dlq.evicted(), 1);
    /// assert!(dlq.bytes() <= 2_500);
    /// # Ok::<(), switchyard_core::TopicError>(())
    /// ```
    pub fn bounded(capacity: usize, max_bytes: usize) -> Self {
        Self {
            store: Mutex::new(Store::default()),
            capacity: capacity.max(1),
            max_bytes,
            evicted: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Store> {
        self.store.lock()
    }

    /// A copy of every entry, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.lock().entries.iter().cloned().collect()
    }

    /// The entry for one message id, if present.
    pub fn get(&self, id: MessageId) -> Option<DeadLetter> {
        self.lock()
            .entries
            .iter()
            .find(|l| l.envelope.id == id)
            .cloned()
    }

    /// Removes and returns every entry.
    pub fn drain(&self) -> Vec<DeadLetter> {
        let mut store = self.lock();
        store.bytes = 0;
        store.entries.drain(..).collect()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Bytes held now (the sum of [`DeadLetter::size`]).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes of the entries evicted because a bound was passed.
    pub fn evicted_bytes(&self) -> u64 {
        self.evicted_bytes.load(Ordering::Relaxed)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted because the store was full (in entries or in bytes).
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
        let size = letter.size();
        let mut store = self.lock();
        while !store.entries.is_empty()
            && (store.entries.len() >= self.capacity || store.bytes + size > self.max_bytes)
        {
            if let Some(old) = store.entries.pop_front() {
                let old_size = old.size();
                store.bytes -= old_size;
                self.evicted.fetch_add(1, Ordering::Relaxed);
                self.evicted_bytes
                    .fetch_add(old_size as u64, Ordering::Relaxed);
            }
        }
        store.bytes += size;
        store.entries.push_back(letter);
    }
}

impl<T: DeadLetterSink> DeadLetterSink for std::sync::Arc<T> {
    fn put(&self, letter: DeadLetter) {
        (**self).put(letter)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Topic;

    fn letter(payload: usize) -> DeadLetter {
        let env = Envelope::new(Topic::new("a.b").unwrap(), vec![0u8; payload]);
        DeadLetter::new(env, DeadLetterReason::HandlerFailed, "boom")
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_and_counts_what_went() {
        let one = letter(1_000).size();
        let dlq = InMemoryDeadLetters::bounded(1_000, 3 * one);
        for _ in 0..10 {
            dlq.put(letter(1_000));
            assert!(dlq.bytes() <= 3 * one, "{} > {}", dlq.bytes(), 3 * one);
        }
        assert_eq!(dlq.len(), 3);
        assert_eq!(dlq.total(), 10);
        assert_eq!(dlq.evicted(), 7);
        assert_eq!(dlq.evicted_bytes(), 7 * one as u64);
        assert_eq!(dlq.bytes(), 3 * one);
        dlq.drain();
        assert_eq!((dlq.len(), dlq.bytes()), (0, 0));
    }

    #[test]
    fn a_letter_larger_than_the_bound_is_kept_alone() {
        let dlq = InMemoryDeadLetters::bounded(10, 500);
        dlq.put(letter(100));
        dlq.put(letter(100));
        dlq.put(letter(5_000));
        assert_eq!(
            dlq.len(),
            1,
            "the newest letter stays, everything older goes"
        );
        assert_eq!(dlq.list()[0].envelope.payload.len(), 5_000);
        assert_eq!(dlq.evicted(), 2);
        // The next small one pushes the big one out.
        dlq.put(letter(100));
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq.list()[0].envelope.payload.len(), 100);
    }

    #[test]
    fn the_entry_bound_still_applies_and_the_default_is_sixty_four_mib() {
        let dlq = InMemoryDeadLetters::new(2);
        assert_eq!(dlq.max_bytes(), DEFAULT_DEAD_LETTER_BYTES);
        for _ in 0..5 {
            dlq.put(letter(1));
        }
        assert_eq!((dlq.len(), dlq.evicted()), (2, 3));
        assert_eq!(dlq.bytes(), 2 * letter(1).size());
    }
}
