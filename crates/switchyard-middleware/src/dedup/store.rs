use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use smol_str::SmolStr;
use switchyard_core::MessageId;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What identifies a message for deduplication.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DedupKey {
    /// The message id.
    Id(MessageId),
    /// Any text (an idempotency key, a business id).
    Key(SmolStr),
}

impl From<&str> for DedupKey {
    fn from(s: &str) -> Self {
        Self::Key(SmolStr::new(s))
    }
}

impl From<MessageId> for DedupKey {
    fn from(id: MessageId) -> Self {
        Self::Id(id)
    }
}

enum Entry {
    /// Being handled; `waited` when a copy is waiting for the outcome.
    InFlight { waited: bool },
    /// Handled successfully; remembered until `expires`.
    Seen { expires: Instant, seq: u64 },
}

pub(crate) enum Check {
    /// First copy: handle it (the key is now in flight).
    Proceed,
    /// Already handled within the TTL.
    Duplicate,
    /// Another copy is being handled; wait for [`Store::notified`], then check again.
    Wait,
}

struct Keys {
    map: HashMap<DedupKey, Entry, foldhash::fast::RandomState>,
    order: VecDeque<(u64, DedupKey)>,
    seq: u64,
    duplicates: u64,
    evicted: u64,
}

pub(crate) struct Store {
    ttl: Duration,
    capacity: usize,
    keys: Mutex<Keys>,
    /// Woken when an attempt that a copy waits for ends.
    ended: Notify,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupStore")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            keys: Mutex::new(Keys {
                map: HashMap::default(),
                order: VecDeque::new(),
                seq: 0,
                duplicates: 0,
                evicted: 0,
            }),
            ended: Notify::new(),
        }
    }

    /// Call before [`Store::check`]; await it when the check says [`Check::Wait`].
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.ended.notified()
    }

    fn lock(&self) -> MutexGuard<'_, Keys> {
        self.keys.lock()
    }

    /// Drops expired keys from the front of the insertion order (one lookup when nothing
    /// expired).
    fn expire(keys: &mut Keys, now: Instant) {
        while let Some((seq, key)) = keys.order.front() {
            let live = match keys.map.get(key) {
                Some(Entry::Seen { expires, seq: s }) if s == seq => *expires > now,
                // Stale order entry (key forgotten, re-seen or in flight again).
                _ => false,
            };
            if live {
                break;
            }
            if let Some((seq, key)) = keys.order.pop_front() {
                Self::remove_seen(keys, key, seq);
            }
        }
    }

    /// Removes `key` if it is still the seen entry numbered `seq`; true when removed.
    fn remove_seen(keys: &mut Keys, key: DedupKey, seq: u64) -> bool {
        match keys.map.entry(key) {
            MapEntry::Occupied(o) if matches!(o.get(), Entry::Seen { seq: s, .. } if *s == seq) => {
                o.remove();
                true
            }
            _ => false,
        }
    }

    pub(crate) fn check(&self, key: &DedupKey) -> Check {
        let now = Instant::now();
        let mut keys = self.lock();
        Self::expire(&mut keys, now);
        let check = match keys.map.entry(key.clone()) {
            MapEntry::Occupied(mut o) => match o.get_mut() {
                Entry::Seen { expires, .. } if *expires > now => Check::Duplicate,
                Entry::InFlight { waited } => {
                    *waited = true;
                    Check::Wait
                }
                expired => {
                    *expired = Entry::InFlight { waited: false };
                    Check::Proceed
                }
            },
            MapEntry::Vacant(v) => {
                v.insert(Entry::InFlight { waited: false });
                Check::Proceed
            }
        };
        if matches!(check, Check::Duplicate) {
            keys.duplicates += 1;
        }
        check
    }

    /// Ends the in-flight attempt for `key`: remembered on success, forgotten otherwise.
    pub(crate) fn finish(&self, key: &DedupKey, success: bool) {
        let now = Instant::now();
        let mut keys = self.lock();
        keys.seq += 1;
        let seq = keys.seq;
        let expires = crate::clock::deadline(now, self.ttl);
        let waited = match keys.map.get_mut(key) {
            Some(entry @ Entry::InFlight { .. }) => {
                let waited = matches!(entry, Entry::InFlight { waited: true });
                if success {
                    *entry = Entry::Seen { expires, seq };
                }
                waited
            }
            Some(_) => false,
            None => {
                if success {
                    keys.map.insert(key.clone(), Entry::Seen { expires, seq });
                }
                false
            }
        };
        if waited {
            // Waiters re-check under the lock, so waking them before the update is done is safe.
            self.ended.notify_waiters();
        }
        if !success {
            keys.map.remove(key);
            return;
        }
        keys.order.push_back((seq, key.clone()));
        Self::expire(&mut keys, now);
        while keys.map.len() > self.capacity {
            let Some((seq, key)) = keys.order.pop_front() else {
                break;
            };
            if Self::remove_seen(&mut keys, key, seq) {
                keys.evicted += 1;
            }
        }
    }
}

/// A cheap-clone handle to one dedup key store.
#[derive(Debug, Clone)]
pub struct DedupHandle {
    store: Arc<Store>,
}

impl DedupHandle {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Duplicates acked without calling the handler.
    pub fn duplicates(&self) -> u64 {
        self.store.lock().duplicates
    }

    /// Seen keys evicted because the store was full.
    pub fn evicted(&self) -> u64 {
        self.store.lock().evicted
    }

    /// Keys held now (seen and in flight; expired keys may linger until the next check).
    pub fn len(&self) -> usize {
        self.store.lock().map.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `key` was handled successfully and has not expired.
    pub fn contains(&self, key: &DedupKey) -> bool {
        let now = Instant::now();
        matches!(self.store.lock().map.get(key), Some(Entry::Seen { expires, .. }) if *expires > now)
    }

    /// Forgets one seen key, so the next copy is handled again.
    pub fn forget(&self, key: &DedupKey) -> bool {
        let mut keys = self.store.lock();
        if matches!(keys.map.get(key), Some(Entry::Seen { .. })) {
            keys.map.remove(key);
            true
        } else {
            false
        }
    }

    /// Forgets every seen key (in-flight ones stay).
    pub fn clear(&self) {
        let mut keys = self.store.lock();
        keys.map.retain(|_, e| matches!(e, Entry::InFlight { .. }));
        keys.order.clear();
    }
}
