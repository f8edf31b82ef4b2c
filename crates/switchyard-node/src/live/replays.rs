//! What became of each replayed dead letter: `POST /v1/dlq/replay` registers the id of every
//! message it re-publishes, the node's handler wrap records each watched delivery's result
//! per subscription (handled, failed with its error, rejected with its reason, retry asked),
//! and the node's dead-letter sink records a watched message dead-lettered again. Scripts
//! and the dashboard read it from `GET /v1/dlq/replays?ids=...`; every recorded outcome is
//! also a `replay` event on `GET /v1/stream`.
//!
//! Bounded: the last [`KEEP`] replays are kept; each is watched for [`WATCH_FOR`] after it
//! was re-published (later deliveries of the same id are not its replay's outcome). When no
//! replay is being watched, a handler call costs one atomic load.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use switchyard::{BoxError, MessageId, Outcome};

/// Replays whose outcomes are kept.
pub(crate) const KEEP: usize = 1024;
/// How long after its re-publishing a replay's deliveries are recorded.
pub(crate) const WATCH_FOR: Duration = Duration::from_secs(300);
/// Outcomes kept per replay (a broadcast event has one per subscription).
const MAX_OUTCOMES: usize = 64;

/// One delivery of a replayed message, or its dead-lettering.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayOutcome {
    /// The subscription (handler) it concerns; for `dead_lettered`, the one that gave up
    /// (none when the bus or transport gave up before a handler).
    pub(crate) subscription: Option<String>,
    /// `handled`, `failed`, `rejected`, `retry` or `dead_lettered`.
    pub(crate) outcome: &'static str,
    /// The error or reason (none when handled).
    pub(crate) error: Option<String>,
    /// RFC 3339.
    pub(crate) at: String,
}

/// What is known about one replayed message.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayState {
    /// The message id (also its dead letter's id).
    pub(crate) id: String,
    /// `unknown` (not replayed by this node, or forgotten), `pending` (nothing recorded yet),
    /// `handled` (handled by every subscription that reported, none failed),
    /// `failed` (a subscription failed or rejected it; not dead-lettered, so far) or
    /// `dead_lettered` (it is in the dead-letter queue again).
    pub(crate) status: &'static str,
    /// Its topic (none when unknown).
    pub(crate) topic: Option<String>,
    /// When it was re-published, RFC 3339 (none when unknown).
    pub(crate) replayed_at: Option<String>,
    /// Every delivery and dead-lettering recorded, oldest first.
    pub(crate) outcomes: Vec<ReplayOutcome>,
}

struct Entry {
    topic: String,
    replayed_at: SystemTime,
    /// Deliveries are recorded until then.
    watch_until: Instant,
    outcomes: Vec<ReplayOutcome>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<MessageId, Entry>,
    /// Replay order, for eviction.
    order: VecDeque<MessageId>,
    /// The ends of the watches under way, oldest first (at most [`KEEP`]).
    watched: VecDeque<Instant>,
}

/// The replay tracker (one per node, in [`Live`](super::Live)).
#[derive(Default)]
pub(crate) struct Replays {
    /// Entries of `Inner::watched`: zero means no handler call needs to look.
    watching: AtomicUsize,
    inner: Mutex<Inner>,
}

impl Replays {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some replay is being watched (the handler wrap's fast check).
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.watching.load(Ordering::Acquire) != 0
    }

    /// Starts watching `id`, about to be re-published on `topic` (before it is, so that no
    /// delivery is missed). A second replay of the same id starts afresh.
    pub(crate) fn watch(&self, id: &MessageId, topic: &str) {
        let mut inner = self.lock();
        let until = Instant::now() + WATCH_FOR;
        let fresh = Entry {
            topic: topic.to_owned(),
            replayed_at: SystemTime::now(),
            watch_until: until,
            outcomes: Vec::new(),
        };
        if inner.entries.insert(id.clone(), fresh).is_none() {
            inner.order.push_back(id.clone());
            while inner.order.len() > KEEP {
                if let Some(old) = inner.order.pop_front() {
                    inner.entries.remove(&old);
                }
            }
        }
        inner.watched.push_back(until);
        if inner.watched.len() > KEEP {
            inner.watched.pop_front();
        }
        self.watching.store(inner.watched.len(), Ordering::Release);
    }

    /// Records what `subscription`'s handler made of a delivery of `id`, when `id` is
    /// watched. Returns the replay's state to announce.
    pub(crate) fn delivered(
        &self,
        id: &MessageId,
        subscription: &str,
        result: &Result<Outcome, BoxError>,
    ) -> Option<ReplayState> {
        let (outcome, error) = crate::trace::outcome_of(result);
        self.record(id, Some(subscription.to_owned()), outcome, error)
    }

    /// Records that `id` was dead-lettered again (by `handler`, with `error`), when watched.
    pub(crate) fn dead_lettered(
        &self,
        id: &MessageId,
        handler: Option<&str>,
        error: &str,
    ) -> Option<ReplayState> {
        if !self.active() {
            return None;
        }
        self.record(
            id,
            handler.map(str::to_owned),
            "dead_lettered",
            Some(error.to_owned()),
        )
    }

    fn record(
        &self,
        id: &MessageId,
        subscription: Option<String>,
        outcome: &'static str,
        error: Option<String>,
    ) -> Option<ReplayState> {
        let mut inner = self.lock();
        let now = Instant::now();
        while inner.watched.front().is_some_and(|until| *until <= now) {
            inner.watched.pop_front();
        }
        self.watching.store(inner.watched.len(), Ordering::Release);
        let entry = inner.entries.get_mut(id)?;
        if entry.watch_until <= now || entry.outcomes.len() >= MAX_OUTCOMES {
            return None;
        }
        entry.outcomes.push(ReplayOutcome {
            subscription,
            outcome,
            error,
            at: crate::wire::rfc3339(SystemTime::now()),
        });
        Some(json_of(id, entry))
    }

    /// What is known about `id`.
    pub(crate) fn get(&self, id: &MessageId) -> ReplayState {
        match self.lock().entries.get(id) {
            Some(entry) => json_of(id, entry),
            None => ReplayState {
                id: id.to_string(),
                status: "unknown",
                topic: None,
                replayed_at: None,
                outcomes: Vec::new(),
            },
        }
    }
}

fn json_of(id: &MessageId, entry: &Entry) -> ReplayState {
    let has = |o: &str| entry.outcomes.iter().any(|x| x.outcome == o);
    let status = if has("dead_lettered") {
        "dead_lettered"
    } else if has("failed") || has("rejected") || has("retry") {
        "failed"
    } else if has("handled") {
        "handled"
    } else {
        "pending"
    };
    ReplayState {
        id: id.to_string(),
        status,
        topic: Some(entry.topic.clone()),
        replayed_at: Some(crate::wire::rfc3339(entry.replayed_at)),
        outcomes: entry.outcomes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> MessageId {
        MessageId::from_u128(n)
    }

    #[test]
    fn nothing_is_recorded_for_an_id_not_watched() {
        let r = Replays::default();
        assert!(!r.active());
        assert!(r.delivered(&id(1), "a", &Ok(Outcome::Ack)).is_none());
        assert_eq!(r.get(&id(1)).status, "unknown");
        r.watch(&id(2), "t.x");
        assert!(r.active());
        assert!(r.delivered(&id(1), "a", &Ok(Outcome::Ack)).is_none());
        assert_eq!(r.get(&id(2)).status, "pending");
    }

    #[test]
    fn outcomes_make_the_status() {
        let r = Replays::default();
        r.watch(&id(1), "t.x");
        let s = r.delivered(&id(1), "a", &Ok(Outcome::Ack)).unwrap();
        assert_eq!((s.status, s.outcomes.len()), ("handled", 1));
        let s = r
            .delivered(&id(1), "b", &Err(BoxError::from("db down")))
            .unwrap();
        assert_eq!(s.status, "failed");
        assert_eq!(s.outcomes[1].error.as_deref(), Some("db down"));
        let s = r.dead_lettered(&id(1), Some("b"), "db down").unwrap();
        assert_eq!(s.status, "dead_lettered");
    }

    #[test]
    fn only_the_last_replays_are_kept() {
        let r = Replays::default();
        for n in 0..KEEP as u128 {
            r.watch(&id(n), "t.x");
        }
        assert_eq!(r.get(&id(0)).status, "pending");
        r.watch(&id(KEEP as u128), "t.x");
        assert_eq!(r.get(&id(0)).status, "unknown", "the oldest is forgotten");
        assert_eq!(r.get(&id(1)).status, "pending");
    }
}
