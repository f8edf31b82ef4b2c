//! Where the transport's own dead letters go: the configured sink, or, with none, an
//! in-memory store of the transport's own ([`NatsTransport::dead_letters`]), so that a
//! message the transport gives up on is never dropped with only a warning.

use super::*;

impl NatsTransport {
    /// The transport's own dead-letter store: where the messages it dead-letters (after
    /// `max_deliver` deliveries, or stored under a subject that is not a topic) go when the
    /// config names no sink ([`NatsConfig::with_dead_letters`]), to be browsed
    /// ([`InMemoryDeadLetters::list`], `select`) and taken. `None` when a sink is configured.
    ///
    /// It holds [`InMemoryDeadLetters::default`] (10 000 letters, 64 MiB; the oldest is
    /// evicted with a warning past that), shared by the clones of this transport, and lives
    /// as long as they do: a letter's error text names the stream and sequence of its
    /// message, which stays in the stream (terminated, not deleted) until retention removes
    /// it.
    pub fn dead_letters(&self) -> Option<Arc<InMemoryDeadLetters>> {
        self.inner.dead_letters.own_store()
    }
}

impl Inner {
    /// Hands one dead letter to the configured sink, or to the transport's own store when
    /// there is none, and counts it.
    pub(super) fn dead_letter(&self, letter: DeadLetter) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        for old in self.dead_letters.put(letter) {
            tracing::warn!(
                id = %old.envelope.id,
                error = %old.error,
                "NATS dead-letter store full: its oldest letter was evicted (the message stays in its stream until retention removes it)"
            );
        }
    }
}
