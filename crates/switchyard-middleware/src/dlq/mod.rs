//! The dead-letter queue: browse, inspect, replay and purge messages the bus gave up on.
//!
//! [`DeadLetterQueue`] extends `switchyard_core::DeadLetterSink` (what the bus calls with
//! `put`) with the operations people need afterwards: [`list`](DeadLetterQueue::list) with a
//! [`DeadLetterFilter`] (topic pattern, reason, error text, handler, time range),
//! [`get`](DeadLetterQueue::get) one by message id, [`remove`](DeadLetterQueue::remove),
//! [`purge`](DeadLetterQueue::purge), and replay through a [`Replayer`].
//!
//! The queue holds one entry per message and handler: when the same message is
//! dead-lettered again by the same handler (say a replay failed again), the newer entry
//! replaces the older one; when two subscriptions gave up on one message, it has two entries
//! (one id). Each entry has a [`DeadLetterKey`] (from [`entries`](DeadLetterQueue::entries)
//! and [`entries_of`](DeadLetterQueue::entries_of)): an entry that replaces another gets a
//! new key, and [`remove_entries`](DeadLetterQueue::remove_entries) removes exactly the
//! entries whose keys it is given, never one added after the keys were read.
//!
//! Two implementations:
//! - [`InMemoryDeadLetters`] (`switchyard_core`'s, the one in-memory store, also the bus's
//!   default sink): bounded; when full the oldest entry is evicted and counted;
//! - [`FileDeadLetterQueue`]: an append-only JSON-lines journal (`put` and `remove` records)
//!   replayed into memory on open, so it survives a restart; compacted on open when mostly
//!   garbage, or on demand.
//!
//! Replay re-publishes each selected message once through a [`Republish`] target (the bus,
//! or a transport through [`PublisherRepublish`]) with the same message id, a fresh delivery
//! count and a [`REPLAYED_FROM`] header (plus [`REPLAY_COUNT`]). A message with several
//! entries (several subscriptions gave up on it) is published once, and all the entries the
//! replay selected are removed once the publish is accepted (unless
//! [`Replayer::keep_entries`]); they are removed by key, so when the replayed message fails
//! again and is dead-lettered before the publish returns, its new entry stays in the queue.
//!
//! A replay is a publish to the message's topic: **every** subscription on that topic gets
//! the message again, including those that handled it fine the first time (not only the
//! ones that dead-lettered it). A handler behind the dedup layer handles it at most once
//! within the dedup window, because the id is kept; a handler without one must tolerate the
//! repeat (or the replay should be narrowed to a topic only the failing subscription reads).
//!
//! ```
//! use switchyard_core::{DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, PublishError, Topic};
//! use switchyard_middleware::dlq::{DeadLetterFilter, DeadLetterQueue, InMemoryDeadLetters, Replayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dlq = InMemoryDeadLetters::new(1000);
//! let env = Envelope::new(Topic::new("billing.charge")?, "{}");
//! dlq.put(DeadLetter::new(env, DeadLetterReason::HandlerFailed, "card service down").with_handler("charger"));
//! assert_eq!(DeadLetterQueue::list(&dlq, &DeadLetterFilter::new().topic("billing.#".parse()?)).len(), 1);
//!
//! let (tx, rx) = std::sync::mpsc::channel();
//! let republish = move |env: Envelope| {
//!     let sent = tx.send(env).map_err(|_| PublishError::ShuttingDown);
//!     async move { sent }
//! };
//! let report = Replayer::new(&dlq, &republish).all().await;
//! assert_eq!(report.replayed.len(), 1);
//! assert_eq!(rx.recv()?.header("replayed-from"), Some("charger"));
//! assert!(dlq.is_empty());
//! # Ok(()) }
//! ```

mod error;
mod file;
mod memory;
mod replay;

pub use error::{DlqWriteError, OpenDlqError, ReplayError};
pub use file::{FileDeadLetterQueue, FileDlqOptions};
pub use replay::{
    PublisherRepublish, REPLAY_COUNT, REPLAYED_FROM, ReplayFailure, ReplayReport, Replayer,
    Republish, replay_envelope,
};
pub use switchyard_core::{DeadLetterFilter, DeadLetterKey, InMemoryDeadLetters};

use switchyard_core::{DeadLetter, DeadLetterReason, DeadLetterSink, MessageId};

/// A dead-letter store people can browse and replay from. `put` (from
/// [`DeadLetterSink`]) is what the bus calls.
///
/// [`InMemoryDeadLetters`] has inherent methods of the same names; its inherent `list()`
/// takes no filter (everything), so call `DeadLetterQueue::list(&store, &filter)` (or its
/// inherent `select(&filter)`) on the concrete type.
pub trait DeadLetterQueue: DeadLetterSink {
    /// Entries matching `filter`, oldest first (at most `filter.limit`).
    fn list(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter>;
    /// Like [`list`](Self::list), each entry with its key.
    fn entries(&self, filter: &DeadLetterFilter) -> Vec<(DeadLetterKey, DeadLetter)>;
    /// The newest entry of one message (it has one per handler that gave up on it).
    fn get(&self, id: &MessageId) -> Option<DeadLetter>;
    /// Every entry of one message with its key, oldest first.
    fn entries_of(&self, id: &MessageId) -> Vec<(DeadLetterKey, DeadLetter)>;
    /// Removes every entry of one message; `Ok(false)` when there was none.
    fn remove(&self, id: &MessageId) -> Result<bool, DlqWriteError>;
    /// Removes exactly the entries with these keys; returns how many were still there. An
    /// entry added since the keys were read (a newer one replacing a listed one included)
    /// stays.
    fn remove_entries(&self, keys: &[DeadLetterKey]) -> Result<usize, DlqWriteError>;
    /// Removes every entry matching `filter` (its `limit` is ignored); returns how many.
    fn purge(&self, filter: &DeadLetterFilter) -> Result<usize, DlqWriteError>;
    /// Entries held now.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entries evicted because the queue was full.
    fn evicted(&self) -> u64;
}

impl<T: DeadLetterQueue> DeadLetterQueue for std::sync::Arc<T> {
    fn list(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        (**self).list(filter)
    }
    fn entries(&self, filter: &DeadLetterFilter) -> Vec<(DeadLetterKey, DeadLetter)> {
        (**self).entries(filter)
    }
    fn get(&self, id: &MessageId) -> Option<DeadLetter> {
        (**self).get(id)
    }
    fn entries_of(&self, id: &MessageId) -> Vec<(DeadLetterKey, DeadLetter)> {
        (**self).entries_of(id)
    }
    fn remove(&self, id: &MessageId) -> Result<bool, DlqWriteError> {
        (**self).remove(id)
    }
    fn remove_entries(&self, keys: &[DeadLetterKey]) -> Result<usize, DlqWriteError> {
        (**self).remove_entries(keys)
    }
    fn purge(&self, filter: &DeadLetterFilter) -> Result<usize, DlqWriteError> {
        (**self).purge(filter)
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn evicted(&self) -> u64 {
        (**self).evicted()
    }
}

/// The dead-letter reason for a handler error: [`DeadLetterReason::Panicked`] when a
/// [`PanicError`](crate::catch_panic::PanicError) is anywhere in the chain, otherwise
/// [`DeadLetterReason::HandlerFailed`].
pub fn failure_reason(err: &(dyn std::error::Error + 'static)) -> DeadLetterReason {
    let mut link = Some(err);
    while let Some(e) = link {
        if e.is::<crate::catch_panic::PanicError>() {
            return DeadLetterReason::Panicked;
        }
        link = e.source();
    }
    DeadLetterReason::HandlerFailed
}

/// The error and its sources joined with `": "`, skipping a source whose text the previous
/// link already contains (the text the dead letter's `error` field should hold).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut link = err.source();
    while let Some(e) = link {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        link = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use switchyard_core::{BoxError, Permanent};

    use super::*;
    use crate::catch_panic::PanicError;
    use crate::retry::RetryError;

    #[test]
    fn error_chain_skips_repeated_links() {
        let err: BoxError = Box::new(Permanent::new(RetryError::Exhausted {
            attempts: 2,
            source: "db down".into(),
        }));
        assert_eq!(
            error_chain(&*err),
            "permanent failure: gave up after 2 attempt(s): db down"
        );
        assert_eq!(failure_reason(&*err), DeadLetterReason::HandlerFailed);
    }

    #[test]
    fn panics_anywhere_in_the_chain_are_panics() {
        let err: BoxError = Box::new(Permanent::new(RetryError::Permanent {
            attempt: 1,
            source: Box::new(PanicError {
                message: "oops".into(),
            }),
        }));
        assert_eq!(failure_reason(&*err), DeadLetterReason::Panicked);
        assert!(error_chain(&*err).ends_with("handler panicked: oops"));
    }
}
