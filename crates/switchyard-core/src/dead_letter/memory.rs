//! [`InMemoryDeadLetters`]: the one in-memory dead-letter store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use smol_str::SmolStr;

use super::{DeadLetter, DeadLetterFilter, DeadLetterSink};
use crate::envelope::MessageId;

/// A bounded in-memory dead-letter store: entries in arrival order, one per message and
/// handler (a message dead-lettered again by the same handler, say after a failed replay,
/// replaces its older entry; the copies two subscriptions gave up on are two entries); when
/// full, the oldest entry is evicted and counted.
///
/// It is the bus's default sink ([`DeadLetterSink`]), the pipeline runner's, and, through
/// `switchyard_middleware::dlq::DeadLetterQueue` (implemented there), a store that can be
/// browsed, purged and replayed from. [`list`](Self::list) returns everything; with a
/// [`DeadLetterFilter`], use [`select`](Self::select).
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
    entries: Mutex<Entries>,
    total: AtomicU64,
}

/// How much the store may hold. Issue #17's byte bound belongs here, next to the entry count,
/// and is enforced in [`Entries::make_room`].
#[derive(Debug, Clone, Copy, Default)]
struct Bounds {
    /// At most this many entries (`None`: unbounded).
    entries: Option<usize>,
}

/// Entries in insertion order, one per (message id, handler).
#[derive(Debug, Default)]
struct Entries {
    by_seq: BTreeMap<u64, DeadLetter>,
    /// Per message id: the handler and sequence number of each of its entries.
    seq_of: HashMap<MessageId, Vec<(Option<SmolStr>, u64)>>,
    next: u64,
    bounds: Bounds,
    evicted: u64,
}

impl Entries {
    /// Inserts (replacing the entry of the same message and handler); returns the entries
    /// evicted to make room.
    fn insert(&mut self, letter: DeadLetter) -> Vec<DeadLetter> {
        let id = letter.envelope.id;
        let handler = letter.handler.clone();
        if let Some(seq) = self.unlink(id, |(h, _)| *h == handler) {
            self.by_seq.remove(&seq);
        }
        let evicted = self.make_room();
        self.next += 1;
        self.by_seq.insert(self.next, letter);
        self.seq_of
            .entry(id)
            .or_default()
            .push((handler, self.next));
        evicted
    }

    /// Forgets the first entry of `id` that `which` picks (from its handler and sequence
    /// number); returns its sequence number. The entry itself stays in `by_seq`.
    fn unlink(
        &mut self,
        id: MessageId,
        which: impl Fn(&(Option<SmolStr>, u64)) -> bool,
    ) -> Option<u64> {
        let seqs = self.seq_of.get_mut(&id)?;
        let at = seqs.iter().position(which)?;
        let (_, seq) = seqs.swap_remove(at);
        if seqs.is_empty() {
            self.seq_of.remove(&id);
        }
        Some(seq)
    }

    /// Evicts the oldest entries until one more fits in the bounds.
    fn make_room(&mut self) -> Vec<DeadLetter> {
        let mut evicted = Vec::new();
        while self
            .bounds
            .entries
            .is_some_and(|cap| self.by_seq.len() >= cap)
        {
            let Some((seq, oldest)) = self.by_seq.pop_first() else {
                break;
            };
            self.unlink(oldest.envelope.id, |(_, s)| *s == seq);
            self.evicted += 1;
            evicted.push(oldest);
        }
        evicted
    }

    /// Removes every entry of `id`, oldest first.
    fn take(&mut self, id: MessageId) -> Vec<DeadLetter> {
        let mut seqs = self.seq_of.remove(&id).unwrap_or_default();
        seqs.sort_unstable_by_key(|(_, seq)| *seq);
        seqs.iter()
            .filter_map(|(_, seq)| self.by_seq.remove(seq))
            .collect()
    }

    /// The newest entry of `id`.
    fn get(&self, id: MessageId) -> Option<&DeadLetter> {
        let seq = self.seq_of.get(&id)?.iter().map(|(_, seq)| *seq).max()?;
        self.by_seq.get(&seq)
    }

    fn matching(&self, filter: &DeadLetterFilter) -> impl Iterator<Item = &DeadLetter> {
        self.by_seq.values().filter(move |l| filter.matches(l))
    }
}

impl InMemoryDeadLetters {
    /// A store holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self::with_bounds(Bounds {
            entries: Some(capacity.max(1)),
        })
    }

    /// A store without a bound (for a view whose bound is kept elsewhere, like the file
    /// queue's journal).
    pub fn unbounded() -> Self {
        Self::with_bounds(Bounds::default())
    }

    fn with_bounds(bounds: Bounds) -> Self {
        Self {
            entries: Mutex::new(Entries {
                bounds,
                ..Entries::default()
            }),
            total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock()
    }

    /// Stores `letter` like [`put`](DeadLetterSink::put) and returns the entries evicted to
    /// make room for it (for a store that mirrors its changes elsewhere).
    pub fn insert(&self, letter: DeadLetter) -> Vec<DeadLetter> {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(letter)
    }

    /// A copy of every entry, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.lock().by_seq.values().cloned().collect()
    }

    /// A copy of the entries matching `filter`, oldest first (at most `filter.limit`).
    pub fn select(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        self.lock()
            .matching(filter)
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    /// The newest entry of one message id, if present.
    pub fn get(&self, id: MessageId) -> Option<DeadLetter> {
        self.lock().get(id).cloned()
    }

    /// Removes and returns every entry of one message id (one per handler that gave up on
    /// it), oldest first.
    pub fn take(&self, id: MessageId) -> Vec<DeadLetter> {
        self.lock().take(id)
    }

    /// Removes and returns the one entry of message `id` that `handler` gave up on.
    pub fn take_one(&self, id: MessageId, handler: Option<&str>) -> Option<DeadLetter> {
        let mut entries = self.lock();
        let seq = entries.unlink(id, |(h, _)| h.as_deref() == handler)?;
        entries.by_seq.remove(&seq)
    }

    /// Removes every entry matching `filter` (its `limit` is ignored) and returns them,
    /// oldest first.
    pub fn take_matching(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        let mut entries = self.lock();
        let seqs: Vec<u64> = entries
            .by_seq
            .iter()
            .filter(|(_, l)| filter.matches(l))
            .map(|(seq, _)| *seq)
            .collect();
        let mut taken = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(letter) = entries.by_seq.remove(&seq) {
                entries.unlink(letter.envelope.id, |(_, s)| *s == seq);
                taken.push(letter);
            }
        }
        taken
    }

    /// Removes and returns every entry, oldest first.
    pub fn drain(&self) -> Vec<DeadLetter> {
        let mut entries = self.lock();
        entries.seq_of.clear();
        std::mem::take(&mut entries.by_seq).into_values().collect()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().by_seq.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted because the store was full.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// Entries ever received (replacements and evicted ones included).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl Default for InMemoryDeadLetters {
    /// 10 000 entries.
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl DeadLetterSink for InMemoryDeadLetters {
    fn put(&self, letter: DeadLetter) {
        self.insert(letter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeadLetterReason, Envelope, Topic};

    fn letter(topic: &str, handler: &str) -> DeadLetter {
        let env = Envelope::new(Topic::new(topic).expect("topic"), "x");
        DeadLetter::new(env, DeadLetterReason::HandlerFailed, "boom").with_handler(handler)
    }

    #[test]
    fn the_same_message_and_handler_again_replaces_its_entry_at_the_back() {
        let store = InMemoryDeadLetters::new(10);
        let first = letter("a.b", "h");
        store.put(first.clone());
        store.put(letter("a.c", "h"));
        let mut again = first.clone();
        again.error = "again".into();
        store.put(again);
        let list = store.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].envelope.id, first.envelope.id);
        assert_eq!(list[1].error, "again");
        assert_eq!(store.total(), 3);
    }

    #[test]
    fn copies_another_handler_gave_up_on_are_kept() {
        let store = InMemoryDeadLetters::new(10);
        let high = letter("a.b", "high");
        let low = high.clone().with_handler("low");
        store.put(high.clone());
        store.put(low);
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.get(high.envelope.id).and_then(|l| l.handler),
            Some("low".into()),
            "get returns the newest"
        );
        let taken = store.take(high.envelope.id);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].handler.as_deref(), Some("high"), "oldest first");
        assert!(store.is_empty());
    }

    #[test]
    fn eviction_reports_ids_and_counts() {
        let store = InMemoryDeadLetters::new(2);
        let (a, b, c) = (letter("a.a", "h"), letter("a.b", "h"), letter("a.c", "h"));
        assert!(store.insert(a.clone()).is_empty());
        assert!(store.insert(b).is_empty());
        let evicted = store.insert(c);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].envelope.id, a.envelope.id);
        assert_eq!((store.len(), store.evicted()), (2, 1));
        let unbounded = InMemoryDeadLetters::unbounded();
        for _ in 0..100 {
            unbounded.put(letter("a.a", "h"));
        }
        assert_eq!((unbounded.len(), unbounded.evicted()), (100, 0));
    }

    #[test]
    fn select_take_and_drain() {
        let store = InMemoryDeadLetters::new(10);
        for i in 0..6 {
            store.put(letter(if i % 2 == 0 { "billing.x" } else { "mail.x" }, "h"));
        }
        let billing = DeadLetterFilter::new().topic("billing.#".parse().expect("pattern"));
        assert_eq!(store.select(&billing).len(), 3);
        assert_eq!(store.select(&billing.clone().limit(2)).len(), 2);
        let one = store.list()[1].envelope.id;
        assert!(store.get(one).is_some());
        assert_eq!(store.take(one).len(), 1);
        assert!(store.take(one).is_empty());
        let two = store.list()[1].clone();
        assert!(store.take_one(two.envelope.id, Some("other")).is_none());
        assert_eq!(store.take_one(two.envelope.id, Some("h")), Some(two));
        assert_eq!(store.take_matching(&billing).len(), 2);
        assert!(store.select(&billing).is_empty());
        assert_eq!(store.drain().len(), 2);
        assert!(store.is_empty());
    }
}
