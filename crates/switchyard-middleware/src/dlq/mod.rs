//! The dead-letter queue: browse, inspect, replay and purge messages the bus gave up on.
//!
//! [`DeadLetterQueue`] extends `switchyard_core::DeadLetterSink` (what the bus calls with
//! `put`) with the operations people need afterwards: [`list`](DeadLetterQueue::list) with a
//! [`DeadLetterFilter`] (topic pattern, reason, error text, handler, time range),
//! [`get`](DeadLetterQueue::get) one by message id, [`remove`](DeadLetterQueue::remove),
//! [`purge`](DeadLetterQueue::purge), and replay through a [`Replayer`].
//!
//! Entries are keyed by message id: when the same message is dead-lettered again (say a
//! replay failed again), the newer entry replaces the older one, so a message is never in the
//! queue twice.
//!
//! Two implementations:
//! - [`InMemoryDeadLetters`] (`switchyard_core`'s, the one in-memory store, also the bus's
//!   default sink): bounded; when full the oldest entry is evicted and counted;
//! - [`FileDeadLetterQueue`]: an append-only JSON-lines journal (`put` and `remove` records)
//!   replayed into memory on open, so it survives a restart; compacted on open when mostly
//!   garbage, or on demand.
//!
//! Replay re-publishes each selected entry through a [`Republish`] target (the bus, or a
//! transport through [`PublisherRepublish`]) with the same message id, a fresh delivery count
//! and a [`REPLAYED_FROM`] header (plus [`REPLAY_COUNT`]); the entry is removed once the
//! publish is accepted (unless [`Replayer::keep_entries`]). Because the id is kept, a handler
//! behind the dedup layer handles a replayed message at most once even if it is replayed
//! twice.
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
pub use switchyard_core::{DeadLetterFilter, InMemoryDeadLetters};

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
    /// The entry of one message.
    fn get(&self, id: &MessageId) -> Option<DeadLetter>;
    /// Removes one entry; `Ok(false)` when it was not there.
    fn remove(&self, id: &MessageId) -> Result<bool, DlqWriteError>;
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
    fn get(&self, id: &MessageId) -> Option<DeadLetter> {
        (**self).get(id)
    }
    fn remove(&self, id: &MessageId) -> Result<bool, DlqWriteError> {
        (**self).remove(id)
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
