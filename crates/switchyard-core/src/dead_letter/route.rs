//! Where a transport's own dead letters go: the configured sink, or, with none, an in-memory
//! store of the transport's own, so a message it gives up on is never dropped.

use std::sync::Arc;

use super::{DeadLetter, DeadLetterSink, InMemoryDeadLetters};

/// The dead-letter routing a transport (the log, NATS) shares: each letter goes to the
/// configured sink when there is one, else to an [`InMemoryDeadLetters`] of the transport's
/// own ([`InMemoryDeadLetters::default`]: 10 000 letters, 64 MiB), which its owner exposes
/// through [`own_store`](Self::own_store).
///
/// ```
/// use std::sync::Arc;
/// use switchyard_core::{DeadLetter, DeadLetterReason, DeadLetterRoute, Envelope, Topic};
///
/// let route = DeadLetterRoute::new(None);
/// let letter = DeadLetter::new(
///     Envelope::new(Topic::new("a.b")?, "x"),
///     DeadLetterReason::MaxDeliveries,
///     "gave up",
/// );
/// assert!(route.put(letter).is_empty(), "nothing evicted");
/// assert_eq!(route.own_store().map(|s| s.len()), Some(1));
/// # Ok::<(), switchyard_core::TopicError>(())
/// ```
#[derive(Clone)]
pub struct DeadLetterRoute {
    sink: Option<Arc<dyn DeadLetterSink>>,
    own: Arc<InMemoryDeadLetters>,
}

impl std::fmt::Debug for DeadLetterRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterRoute")
            .field("sink", &self.sink.is_some())
            .field("own", &self.own.len())
            .finish()
    }
}

impl DeadLetterRoute {
    /// Routes to `sink`, or, when it is `None`, to a fresh store of the owner's own.
    pub fn new(sink: Option<Arc<dyn DeadLetterSink>>) -> Self {
        Self {
            sink,
            own: Arc::new(InMemoryDeadLetters::default()),
        }
    }

    /// The owner's own store, where letters go when no sink is configured; `None` when a
    /// sink is configured.
    pub fn own_store(&self) -> Option<Arc<InMemoryDeadLetters>> {
        self.sink.is_none().then(|| self.own.clone())
    }

    /// Hands `letter` to the sink, or to the own store when there is none; returns the
    /// letters the own store evicted to make room for it (for the owner to log), always
    /// empty with a sink.
    pub fn put(&self, letter: DeadLetter) -> Vec<DeadLetter> {
        match &self.sink {
            Some(sink) => {
                sink.put(letter);
                Vec::new()
            }
            None => self.own.insert(letter),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{DeadLetterReason, Envelope, Topic};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<DeadLetter>>);

    impl DeadLetterSink for Recorder {
        fn put(&self, letter: DeadLetter) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(letter);
        }
    }

    fn letter() -> DeadLetter {
        let topic = Topic::new("a.b").unwrap_or_else(|e| panic!("{e}"));
        DeadLetter::new(
            Envelope::new(topic, "x"),
            DeadLetterReason::MaxDeliveries,
            "e",
        )
    }

    #[test]
    fn with_a_sink_letters_go_there_and_there_is_no_own_store() {
        let sink = Arc::new(Recorder::default());
        let route = DeadLetterRoute::new(Some(sink.clone()));
        assert!(route.put(letter()).is_empty());
        assert!(route.own_store().is_none());
        assert_eq!(sink.0.lock().map(|v| v.len()).unwrap_or(0), 1);
    }

    #[test]
    fn without_a_sink_letters_go_to_the_own_store_shared_by_clones() {
        let route = DeadLetterRoute::new(None);
        let clone = route.clone();
        let l = letter();
        assert!(clone.put(l.clone()).is_empty());
        assert_eq!(
            route.own_store().map(|s| s.get(&l.envelope.id)),
            Some(Some(l))
        );
    }
}
