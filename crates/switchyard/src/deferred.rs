//! Hand-backs that are not attempts. A delivery that arrives before its `deliver-at` goes
//! back to the transport until it is due (`pump.rs`), and a handler may hand a delivery back
//! ([`HandBack`](switchyard_core::HandBack): e.g. a WebSocket group with no member connected
//! to this node). The log and JetStream count such a hand-back as a delivery, so without a
//! correction the handler's next call would see one attempt more and a failing message would
//! get one call fewer than `max_attempts` (review rev20). Each hand-back is noted here, per
//! subscription and message, and subtracted from the delivery's number when the message comes
//! back. Kept in the process: a delivery that another process receives (a group member
//! elsewhere), or one after a restart, is not corrected (it counts one attempt more, as
//! before); entries whose due time passed long ago are dropped, and the map is bounded.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use smol_str::SmolStr;
use switchyard_core::MessageId;

/// At most this many messages are tracked; beyond, a hand-back is not noted.
const MAX_TRACKED: usize = 100_000;
/// An entry still here this long after its due time belongs to a delivery that went elsewhere.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// Hand-backs per (subscription, message), with the message's due time (a handler's
/// hand-back: when it was made).
#[derive(Default)]
pub(crate) struct Deferred {
    map: Mutex<Entries>,
    /// Something was ever noted: until then a delivery need not look (no lock per delivery).
    noted: AtomicBool,
}

impl Deferred {
    /// Notes that `sub` handed `id` back because it is due only at `due` (or, for a
    /// handler's hand-back, at `due`: now).
    pub(crate) fn note(&self, sub: &SmolStr, id: &MessageId, due: SystemTime) {
        self.noted.store(true, Ordering::Relaxed);
        let mut map = self.map.lock();
        if !room(&mut map) {
            return;
        }
        map.entry((sub.clone(), id.clone())).or_insert((0, due)).0 += 1;
    }

    /// Sets how many of the deliveries of `id` to `sub` so far were not attempts (a
    /// handler's hand-back, made at `at`): all of them, counted against the transport's
    /// number, so earlier hand-backs already taken are counted again.
    pub(crate) fn set(&self, sub: &SmolStr, id: &MessageId, count: u32, at: SystemTime) {
        self.noted.store(true, Ordering::Relaxed);
        let key = (sub.clone(), id.clone());
        let mut map = self.map.lock();
        if !map.contains_key(&key) && !room(&mut map) {
            return;
        }
        map.insert(key, (count, at));
    }

    /// Whether any hand-back was ever noted.
    pub(crate) fn any(&self) -> bool {
        self.noted.load(Ordering::Relaxed)
    }

    /// How many times `sub` handed `id` back (forgotten now: the message is back).
    pub(crate) fn take(&self, sub: &SmolStr, id: &MessageId) -> u32 {
        let mut map = self.map.lock();
        if map.is_empty() {
            return 0;
        }
        map.remove(&(sub.clone(), id.clone())).map_or(0, |(n, _)| n)
    }
}

type Entries = HashMap<(SmolStr, MessageId), (u32, SystemTime)>;

/// Whether `map` has room for one more entry, after dropping the stale ones when it is full.
fn room(map: &mut Entries) -> bool {
    if map.len() < MAX_TRACKED {
        return true;
    }
    let now = SystemTime::now();
    map.retain(|_, (_, due)| due.checked_add(STALE_AFTER).is_some_and(|t| t > now));
    map.len() < MAX_TRACKED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_subscription_and_forgets_once_taken() {
        let d = Deferred::default();
        let id = MessageId::new();
        let (a, b) = (SmolStr::new("a"), SmolStr::new("b"));
        let due = SystemTime::now() + Duration::from_secs(5);
        d.note(&a, &id, due);
        d.note(&a, &id, due);
        d.note(&b, &id, due);
        assert_eq!(d.take(&a, &id), 2);
        assert_eq!(d.take(&a, &id), 0);
        assert_eq!(d.take(&b, &id), 1);
    }
}
