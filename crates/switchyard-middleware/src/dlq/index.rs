use std::collections::{BTreeMap, HashMap};

use switchyard_core::{DeadLetter, MessageId};

use super::DeadLetterFilter;

/// Entries in insertion order, one per message id, optionally bounded.
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_seq: BTreeMap<u64, DeadLetter>,
    seq_of: HashMap<MessageId, u64>,
    next: u64,
    capacity: Option<usize>,
    pub(crate) evicted: u64,
}

impl Index {
    pub(crate) fn new(capacity: Option<usize>) -> Self {
        Self {
            capacity: capacity.map(|c| c.max(1)),
            ..Self::default()
        }
    }

    /// Inserts (replacing an entry of the same message); returns the ids evicted to make room.
    pub(crate) fn insert(&mut self, letter: DeadLetter) -> Vec<MessageId> {
        let id = letter.envelope.id;
        if let Some(old) = self.seq_of.remove(&id) {
            self.by_seq.remove(&old);
        }
        let mut evicted = Vec::new();
        if let Some(cap) = self.capacity {
            while self.by_seq.len() >= cap {
                let Some((_, oldest)) = self.by_seq.pop_first() else {
                    break;
                };
                self.seq_of.remove(&oldest.envelope.id);
                self.evicted += 1;
                evicted.push(oldest.envelope.id);
            }
        }
        self.next += 1;
        self.by_seq.insert(self.next, letter);
        self.seq_of.insert(id, self.next);
        evicted
    }

    pub(crate) fn remove(&mut self, id: MessageId) -> Option<DeadLetter> {
        let seq = self.seq_of.remove(&id)?;
        self.by_seq.remove(&seq)
    }

    pub(crate) fn get(&self, id: MessageId) -> Option<&DeadLetter> {
        self.by_seq.get(self.seq_of.get(&id)?)
    }

    pub(crate) fn list(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        self.by_seq
            .values()
            .filter(|l| filter.matches(l))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    pub(crate) fn matching_ids(&self, filter: &DeadLetterFilter) -> Vec<MessageId> {
        self.by_seq
            .values()
            .filter(|l| filter.matches(l))
            .map(|l| l.envelope.id)
            .collect()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &DeadLetter> {
        self.by_seq.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_seq.len()
    }
}
