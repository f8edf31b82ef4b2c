//! Early hand-backs of delayed messages: a delivery that arrives before its `deliver-at` goes
//! back to the transport until it is due (`pump.rs`). The log and JetStream count that
//! hand-back as a delivery, so without a correction the handler's first call would see
//! attempt 2 and a failing message would get one call fewer than `max_attempts` (review rev20).
//! The pump notes each hand-back here, per subscription and message, and subtracts them from
//! the delivery's number when the message comes back due. Kept in the process: a due delivery
//! that another process receives (a group member elsewhere), or one after a restart, is not
//! corrected (it counts one attempt more, as before); entries whose due time passed long ago
//! are dropped, and the map is bounded.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use smol_str::SmolStr;
use switchyard_core::MessageId;

/// At most this many messages are tracked; beyond, a hand-back is not noted.
const MAX_TRACKED: usize = 100_000;
/// An entry still here this long after its due time belongs to a delivery that went elsewhere.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// Early hand-backs per (subscription, message), with the message's due time.
#[derive(Default)]
pub(crate) struct Deferred(Mutex<HashMap<(SmolStr, MessageId), (u32, SystemTime)>>);

impl Deferred {
    /// Notes that `sub` handed `id` back because it is due only at `due`.
    pub(crate) fn note(&self, sub: &SmolStr, id: &MessageId, due: SystemTime) {
        let mut map = self.0.lock();
        if map.len() >= MAX_TRACKED {
            let now = SystemTime::now();
            map.retain(|_, (_, due)| due.checked_add(STALE_AFTER).is_some_and(|t| t > now));
            if map.len() >= MAX_TRACKED {
                return;
            }
        }
        map.entry((sub.clone(), id.clone())).or_insert((0, due)).0 += 1;
    }

    /// How many times `sub` handed `id` back early (forgotten now: the message is due).
    pub(crate) fn take(&self, sub: &SmolStr, id: &MessageId) -> u32 {
        let mut map = self.0.lock();
        if map.is_empty() {
            return 0;
        }
        map.remove(&(sub.clone(), id.clone())).map_or(0, |(n, _)| n)
    }
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
