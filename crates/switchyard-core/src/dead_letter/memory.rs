//! [`InMemoryDeadLetters`]: the one in-memory dead-letter store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use smol_str::SmolStr;

use super::{DEFAULT_DEAD_LETTER_BYTES, DeadLetter, DeadLetterFilter, DeadLetterSink};
use crate::envelope::MessageId;

/// The key of one entry of a store: which entry, not which message. A message
/// dead-lettered again (say by the replay of its entry) gets a new entry with a new key, even
/// when it replaces the older entry of the same message and handler, so removing by key
/// ([`InMemoryDeadLetters::take_keys`]) never removes an entry added after the key was read.
/// Keys are not reused within a store's life; they are not kept across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeadLetterKey(u64);

/// A bounded in-memory dead-letter store: entries in arrival order, one per message and
/// handler (a message dead-lettered again by the same handler, say after a failed replay,
/// replaces its older entry; the copies two subscriptions gave up on are two entries),
/// bounded in entries and in bytes; when either bound is passed, the oldest entries are
/// evicted and counted ([`evicted`](Self::evicted), [`evicted_bytes`](Self::evicted_bytes)).
/// A letter's size is its payload, headers, topic and error text ([`DeadLetter::size`]).
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

/// How much the store may hold; enforced in [`Entries::make_room`].
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// At most this many entries (`None`: unbounded).
    entries: Option<usize>,
    /// At most this many bytes ([`DeadLetter::size`]), the newest letter aside.
    bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            entries: None,
            bytes: usize::MAX,
        }
    }
}

/// Entries in insertion order, one per (message id, handler).
#[derive(Debug, Default)]
struct Entries {
    by_seq: BTreeMap<u64, DeadLetter>,
    /// Per message id: the handler and sequence number of each of its entries.
    seq_of: HashMap<MessageId, Vec<(Option<SmolStr>, u64)>>,
    next: u64,
    bounds: Bounds,
    /// The sum of the entries' [`DeadLetter::size`].
    bytes: usize,
    evicted: u64,
    evicted_bytes: u64,
}

impl Entries {
    /// Inserts (replacing the entry of the same message and handler); returns the entries
    /// evicted to make room.
    fn insert(&mut self, letter: DeadLetter) -> Vec<DeadLetter> {
        let id = letter.envelope.id.clone();
        let handler = letter.handler.clone();
        if let Some(seq) = self.unlink(&id, |(h, _)| *h == handler) {
            self.remove_seq(seq);
        }
        let evicted = self.make_room(letter.size());
        self.next += 1;
        self.bytes = self.bytes.saturating_add(letter.size());
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
        id: &MessageId,
        which: impl Fn(&(Option<SmolStr>, u64)) -> bool,
    ) -> Option<u64> {
        let seqs = self.seq_of.get_mut(id)?;
        let at = seqs.iter().position(which)?;
        let (_, seq) = seqs.swap_remove(at);
        if seqs.is_empty() {
            self.seq_of.remove(id);
        }
        Some(seq)
    }

    /// Removes the entry with sequence number `seq` from `by_seq` and its size from `bytes`
    /// (the caller unlinks it from `seq_of`).
    fn remove_seq(&mut self, seq: u64) -> Option<DeadLetter> {
        let letter = self.by_seq.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(letter.size());
        Some(letter)
    }

    /// Removes the entries with these sequence numbers (those still there) from both
    /// indexes and returns them, in the order given.
    fn take_seqs(&mut self, seqs: impl IntoIterator<Item = u64>) -> Vec<DeadLetter> {
        let mut taken = Vec::new();
        for seq in seqs {
            if let Some(letter) = self.remove_seq(seq) {
                self.unlink(&letter.envelope.id, |(_, s)| *s == seq);
                taken.push(letter);
            }
        }
        taken
    }

    /// Evicts the oldest entries until one more, of `size` bytes, fits in the bounds (an empty
    /// store takes any letter: the newest is always kept).
    fn make_room(&mut self, size: usize) -> Vec<DeadLetter> {
        let mut evicted = Vec::new();
        while !self.by_seq.is_empty()
            && (self
                .bounds
                .entries
                .is_some_and(|cap| self.by_seq.len() >= cap)
                || self.bytes.saturating_add(size) > self.bounds.bytes)
        {
            let Some(&seq) = self.by_seq.keys().next() else {
                break;
            };
            let Some(oldest) = self.remove_seq(seq) else {
                break;
            };
            self.unlink(&oldest.envelope.id, |(_, s)| *s == seq);
            self.evicted += 1;
            self.evicted_bytes = self.evicted_bytes.saturating_add(oldest.size() as u64);
            evicted.push(oldest);
        }
        evicted
    }

    /// Removes every entry of `id`, oldest first.
    fn take(&mut self, id: &MessageId) -> Vec<DeadLetter> {
        let mut seqs = self.seq_of.remove(id).unwrap_or_default();
        seqs.sort_unstable_by_key(|(_, seq)| *seq);
        seqs.iter()
            .filter_map(|(_, seq)| self.remove_seq(*seq))
            .collect()
    }

    /// The newest entry of `id`.
    fn get(&self, id: &MessageId) -> Option<&DeadLetter> {
        let seq = self.seq_of.get(id)?.iter().map(|(_, seq)| *seq).max()?;
        self.by_seq.get(&seq)
    }

    fn matching(&self, filter: &DeadLetterFilter) -> impl Iterator<Item = &DeadLetter> {
        self.by_seq.values().filter(move |l| filter.matches(l))
    }
}

impl InMemoryDeadLetters {
    /// A store holding at most `capacity` entries (at least 1) and
    /// [`DEFAULT_DEAD_LETTER_BYTES`].
    pub fn new(capacity: usize) -> Self {
        Self::bounded(capacity, DEFAULT_DEAD_LETTER_BYTES)
    }

    /// A store holding at most `capacity` entries (at least 1) and `max_bytes` bytes (see
    /// [`DeadLetter::size`]; `usize::MAX`: no byte bound). The newest letter is always kept,
    /// so it holds at most `max_bytes` plus one letter (which the bus's `max_message_bytes`
    /// bounds).
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
        Self::with_bounds(Bounds {
            entries: Some(capacity.max(1)),
            bytes: max_bytes,
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

    /// Like [`select`](Self::select), each entry with its [`DeadLetterKey`].
    pub fn select_keyed(&self, filter: &DeadLetterFilter) -> Vec<(DeadLetterKey, DeadLetter)> {
        self.lock()
            .by_seq
            .iter()
            .filter(|(_, l)| filter.matches(l))
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|(seq, l)| (DeadLetterKey(*seq), l.clone()))
            .collect()
    }

    /// Every entry of one message id (one per handler that gave up on it) with its key,
    /// oldest first.
    pub fn entries_of(&self, id: &MessageId) -> Vec<(DeadLetterKey, DeadLetter)> {
        let entries = self.lock();
        let mut seqs: Vec<u64> = entries
            .seq_of
            .get(id)
            .map(|v| v.iter().map(|(_, seq)| *seq).collect())
            .unwrap_or_default();
        seqs.sort_unstable();
        seqs.into_iter()
            .filter_map(|seq| Some((DeadLetterKey(seq), entries.by_seq.get(&seq)?.clone())))
            .collect()
    }

    /// Removes the entries with these keys and returns them, oldest first. A key whose entry
    /// is gone (removed, evicted, or replaced by a newer entry of the same message and
    /// handler) is skipped: entries added after the keys were read are never removed.
    pub fn take_keys(&self, keys: &[DeadLetterKey]) -> Vec<DeadLetter> {
        let mut seqs: Vec<u64> = keys.iter().map(|k| k.0).collect();
        seqs.sort_unstable();
        seqs.dedup();
        self.lock().take_seqs(seqs)
    }

    /// The newest entry of one message id, if present.
    pub fn get(&self, id: &MessageId) -> Option<DeadLetter> {
        self.lock().get(id).cloned()
    }

    /// Removes and returns every entry of one message id (one per handler that gave up on
    /// it), oldest first.
    pub fn take(&self, id: &MessageId) -> Vec<DeadLetter> {
        self.lock().take(id)
    }

    /// Removes and returns the one entry of message `id` that `handler` gave up on.
    pub fn take_one(&self, id: &MessageId, handler: Option<&str>) -> Option<DeadLetter> {
        let mut entries = self.lock();
        let seq = entries.unlink(id, |(h, _)| h.as_deref() == handler)?;
        entries.remove_seq(seq)
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
        entries.take_seqs(seqs)
    }

    /// Removes and returns every entry, oldest first.
    pub fn drain(&self) -> Vec<DeadLetter> {
        let mut entries = self.lock();
        entries.seq_of.clear();
        entries.bytes = 0;
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

    /// Bytes held now (the sum of [`DeadLetter::size`]).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The byte bound (`usize::MAX` when there is none).
    pub fn max_bytes(&self) -> usize {
        self.lock().bounds.bytes
    }

    /// Entries evicted because the store was full (in entries or in bytes).
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// Bytes of the entries evicted because a bound was passed.
    pub fn evicted_bytes(&self) -> u64 {
        self.lock().evicted_bytes
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
            store.get(&high.envelope.id).and_then(|l| l.handler),
            Some("low".into()),
            "get returns the newest"
        );
        let taken = store.take(&high.envelope.id);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].handler.as_deref(), Some("high"), "oldest first");
        assert!(store.is_empty());
    }

    #[test]
    fn taking_by_key_leaves_an_entry_added_after_the_keys_were_read() {
        let store = InMemoryDeadLetters::new(10);
        let first = letter("a.b", "h");
        let id = first.envelope.id.clone();
        store.put(first.clone());
        store.put(first.clone().with_handler("other"));
        let keys: Vec<DeadLetterKey> = store.entries_of(&id).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            store.select_keyed(&DeadLetterFilter::new()).len(),
            2,
            "the same entries through select_keyed"
        );
        // Dead-lettered again by `h` (a replay failing again): replaces h's entry, new key.
        let mut again = first;
        again.error = "again".into();
        store.put(again);
        let taken = store.take_keys(&keys);
        assert_eq!(
            taken.len(),
            1,
            "only `other`'s entry is still the one listed"
        );
        assert_eq!(taken[0].handler.as_deref(), Some("other"));
        let left = store.list();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].error, "again");
        assert!(
            store.take_keys(&keys).is_empty(),
            "taking twice takes nothing"
        );
        assert_eq!(store.bytes(), left[0].size());
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
        let one = store.list()[1].envelope.id.clone();
        assert!(store.get(&one).is_some());
        assert_eq!(store.take(&one).len(), 1);
        assert!(store.take(&one).is_empty());
        let two = store.list()[1].clone();
        assert!(store.take_one(&two.envelope.id, Some("other")).is_none());
        assert_eq!(store.take_one(&two.envelope.id, Some("h")), Some(two));
        assert_eq!(store.take_matching(&billing).len(), 2);
        assert!(store.select(&billing).is_empty());
        assert_eq!(store.drain().len(), 2);
        assert!(store.is_empty());
    }

    fn sized(payload: usize) -> DeadLetter {
        let env = Envelope::new(Topic::new("a.b").expect("topic"), vec![0u8; payload]);
        DeadLetter::new(env, DeadLetterReason::HandlerFailed, "boom")
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_and_counts_what_went() {
        let one = sized(1_000).size();
        let dlq = InMemoryDeadLetters::bounded(1_000, 3 * one);
        for _ in 0..10 {
            dlq.put(sized(1_000));
            assert!(dlq.bytes() <= 3 * one, "{} > {}", dlq.bytes(), 3 * one);
        }
        assert_eq!(dlq.len(), 3);
        assert_eq!(dlq.total(), 10);
        assert_eq!(dlq.evicted(), 7);
        assert_eq!(dlq.evicted_bytes(), 7 * one as u64);
        assert_eq!(dlq.bytes(), 3 * one);
        let first = dlq.list()[0].envelope.id.clone();
        dlq.take(&first);
        assert_eq!(dlq.bytes(), 2 * one, "taking an entry gives its bytes back");
        dlq.drain();
        assert_eq!((dlq.len(), dlq.bytes()), (0, 0));
    }

    #[test]
    fn a_letter_larger_than_the_bound_is_kept_alone() {
        let dlq = InMemoryDeadLetters::bounded(10, 500);
        dlq.put(sized(100));
        dlq.put(sized(100));
        dlq.put(sized(5_000));
        assert_eq!(
            dlq.len(),
            1,
            "the newest letter stays, everything older goes"
        );
        assert_eq!(dlq.list()[0].envelope.payload.len(), 5_000);
        assert_eq!(dlq.evicted(), 2);
        // The next small one pushes the big one out.
        dlq.put(sized(100));
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq.list()[0].envelope.payload.len(), 100);
    }

    #[test]
    fn the_entry_bound_still_applies_and_the_default_is_sixty_four_mib() {
        let dlq = InMemoryDeadLetters::new(2);
        assert_eq!(dlq.max_bytes(), DEFAULT_DEAD_LETTER_BYTES);
        for _ in 0..5 {
            dlq.put(sized(1));
        }
        assert_eq!((dlq.len(), dlq.evicted()), (2, 3));
        assert_eq!(dlq.bytes(), 2 * sized(1).size());
        let replaced = dlq.list()[0].clone();
        dlq.put(replaced);
        assert_eq!(
            dlq.bytes(),
            2 * sized(1).size(),
            "a replaced entry's bytes are not counted twice"
        );
    }
}
