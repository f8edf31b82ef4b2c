//! The core in-memory store, [`InMemoryDeadLetters`], as a browsable [`DeadLetterQueue`].

use switchyard_core::{
    DeadLetter, DeadLetterFilter, DeadLetterKey, InMemoryDeadLetters, MessageId,
};

use super::{DeadLetterQueue, DlqWriteError};

impl DeadLetterQueue for InMemoryDeadLetters {
    fn list(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        self.select(filter)
    }

    fn entries(&self, filter: &DeadLetterFilter) -> Vec<(DeadLetterKey, DeadLetter)> {
        self.select_keyed(filter)
    }

    fn get(&self, id: &MessageId) -> Option<DeadLetter> {
        InMemoryDeadLetters::get(self, id)
    }

    fn entries_of(&self, id: &MessageId) -> Vec<(DeadLetterKey, DeadLetter)> {
        InMemoryDeadLetters::entries_of(self, id)
    }

    fn remove(&self, id: &MessageId) -> Result<bool, DlqWriteError> {
        Ok(!self.take(id).is_empty())
    }

    fn remove_entries(&self, keys: &[DeadLetterKey]) -> Result<usize, DlqWriteError> {
        Ok(self.take_keys(keys).len())
    }

    fn purge(&self, filter: &DeadLetterFilter) -> Result<usize, DlqWriteError> {
        Ok(self.take_matching(filter).len())
    }

    fn len(&self) -> usize {
        InMemoryDeadLetters::len(self)
    }

    fn evicted(&self) -> u64 {
        InMemoryDeadLetters::evicted(self)
    }
}
