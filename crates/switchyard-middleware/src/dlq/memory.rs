//! The core in-memory store, [`InMemoryDeadLetters`], as a browsable [`DeadLetterQueue`].

use switchyard_core::{DeadLetter, DeadLetterFilter, InMemoryDeadLetters, MessageId};

use super::{DeadLetterQueue, DlqWriteError};

impl DeadLetterQueue for InMemoryDeadLetters {
    fn list(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        self.select(filter)
    }

    fn get(&self, id: &MessageId) -> Option<DeadLetter> {
        InMemoryDeadLetters::get(self, id)
    }

    fn remove(&self, id: &MessageId) -> Result<bool, DlqWriteError> {
        Ok(!self.take(id).is_empty())
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
