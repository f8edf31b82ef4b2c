use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use switchyard_core::{DeadLetter, DeadLetterSink, MessageId};

use super::index::Index;
use super::{DeadLetterFilter, DeadLetterQueue, DlqWriteError};
use crate::metrics::record;

/// A bounded in-memory dead-letter queue; when full, the oldest entry is evicted and counted.
#[derive(Debug)]
pub struct InMemoryDeadLetterQueue {
    index: Mutex<Index>,
    total: AtomicU64,
}

impl InMemoryDeadLetterQueue {
    /// A queue holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            index: Mutex::new(Index::new(Some(capacity))),
            total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock()
    }

    /// Entries ever received (replacements and evicted ones included).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl Default for InMemoryDeadLetterQueue {
    /// 10 000 entries.
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl DeadLetterSink for InMemoryDeadLetterQueue {
    fn put(&self, letter: DeadLetter) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut index = self.lock();
        let evicted = index.insert(letter);
        if !evicted.is_empty() {
            record::dlq_evicted(evicted.len() as u64);
        }
        record::dlq_size(index.len());
    }
}

impl DeadLetterQueue for InMemoryDeadLetterQueue {
    fn list(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        self.lock().list(filter)
    }

    fn get(&self, id: MessageId) -> Option<DeadLetter> {
        self.lock().get(id).cloned()
    }

    fn remove(&self, id: MessageId) -> Result<bool, DlqWriteError> {
        let mut index = self.lock();
        let removed = index.remove(id).is_some();
        record::dlq_size(index.len());
        Ok(removed)
    }

    fn purge(&self, filter: &DeadLetterFilter) -> Result<usize, DlqWriteError> {
        let mut index = self.lock();
        let ids = index.matching_ids(filter);
        for id in &ids {
            index.remove(*id);
        }
        record::dlq_size(index.len());
        Ok(ids.len())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn evicted(&self) -> u64 {
        self.lock().evicted
    }
}
