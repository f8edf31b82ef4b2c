use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Count, sum and maximum of a set of durations, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DurationStats {
    /// Observations.
    pub count: u64,
    /// Sum of all observations, seconds.
    pub sum_seconds: f64,
    /// Largest observation, seconds.
    pub max_seconds: f64,
}

impl DurationStats {
    /// Mean in seconds (0 when empty).
    pub fn mean_seconds(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_seconds / self.count as f64
        }
    }
}

/// Counts of one (topic label, handler) pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandlerStats {
    /// Topic label.
    pub topic: String,
    /// Handler name.
    pub handler: String,
    /// Calls.
    pub delivered: u64,
    /// `Ack` or `Reply`.
    pub acked: u64,
    /// Retries: attempts the stack's retry made again after a failed one (or one that asked
    /// for `Retry`), plus calls that ended `Retry` (a metrics layer with no retry inside it,
    /// whose `Retry` the bus or an outer retry acts on). Under the default stack, where no
    /// call ends `Retry`, the re-attempts.
    pub retried: u64,
    /// `Reject` outcomes.
    pub rejected: u64,
    /// Errors, a hand-back excepted.
    pub failed: u64,
    /// Calls that handed their message back to the transport
    /// ([`HandBack`](switchyard_core::HandBack) anywhere in the error's chain: "not mine, give
    /// it back"): neither a success nor a failure of the handler.
    #[serde(default)]
    pub handed_back: u64,
    /// Calls running now.
    pub in_flight: u64,
    /// Handler call time.
    pub duration: DurationStats,
    /// From `envelope.timestamp` to the end of the call.
    pub end_to_end: DurationStats,
}

/// A JSON-friendly picture of every handler's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// When it was taken.
    pub taken_at: SystemTime,
    /// One row per (topic label, handler), sorted.
    pub handlers: Vec<HandlerStats>,
}

impl MetricsSnapshot {
    /// The snapshot as JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain numbers and strings cannot fail; fall back to an empty object.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The row of one topic label and handler.
    pub fn get(&self, topic: &str, handler: &str) -> Option<&HandlerStats> {
        self.handlers
            .iter()
            .find(|h| h.topic == topic && h.handler == handler)
    }
}

/// Shards a thread can own, per counter set (plus one shared by every other thread).
const OWNED_SHARDS: usize = 8;

/// One shard of a counter set: everything a call adds up, on its own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Id of the thread that owns this shard (it alone writes it), 0 while nobody does.
    owner: AtomicU64,
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    /// Re-attempts by the stack's retry (not calls that ended: kept apart from `retried`).
    reattempts: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    handed_back: AtomicU64,
    abandoned: AtomicU64,
    duration_sum: AtomicU64,
    duration_max: AtomicU64,
    end_to_end_sum: AtomicU64,
    end_to_end_max: AtomicU64,
}

/// Adds `n`: a plain load and store in a shard this thread owns (no other thread writes
/// it), an atomic addition in the shared one.
#[inline]
fn add(counter: &AtomicU64, n: u64, owned: bool) {
    if owned {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    } else {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Raises the maximum to `n` (a plain load first: the maximum rarely changes).
#[inline]
fn raise(counter: &AtomicU64, n: u64, owned: bool) {
    if n > counter.load(Ordering::Relaxed) {
        if owned {
            counter.store(n, Ordering::Relaxed);
        } else {
            counter.fetch_max(n, Ordering::Relaxed);
        }
    }
}

/// This thread's id for shard ownership: 1, 2, 3... in the order threads first count.
#[inline]
fn thread_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ID.with(|id| *id)
}

/// Counters of one (topic label, handler) pair, sharded by thread.
///
/// A call's figures go to a shard the counting thread owns, written with plain stores: on the
/// happy path a call costs no locked instruction here, and workers on different cores do not
/// pass cache lines back and forth. Threads beyond the owned shards (or whose shard another
/// thread took) share one shard with atomic additions. In-flight is derived (`delivered`
/// minus the calls that ended or were abandoned) and the duration counts are the number of
/// calls that ended. Snapshots add the shards up.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    owned: [Shard; OWNED_SHARDS],
    shared: Shard,
}

/// How a call ended, for [`Counters::finished`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Acked,
    Retried,
    Rejected,
    Failed,
    HandedBack,
}

impl Ended {
    /// The category of a handler result.
    #[inline]
    pub(crate) fn of(result: &Result<switchyard_core::Outcome, switchyard_core::BoxError>) -> Self {
        use switchyard_core::Outcome;
        match result {
            Ok(Outcome::Ack | Outcome::Reply(_)) => Self::Acked,
            Ok(Outcome::Retry { .. }) => Self::Retried,
            Ok(Outcome::Reject { .. }) => Self::Rejected,
            Err(_) if crate::breaker::is_hand_back(result) => Self::HandedBack,
            Err(_) => Self::Failed,
        }
    }
}

impl Counters {
    /// The shard this thread writes, and whether it owns it.
    #[inline]
    fn shard(&self) -> (&Shard, bool) {
        let id = thread_id();
        let shard = &self.owned[(id % OWNED_SHARDS as u64) as usize];
        let owner = shard.owner.load(Ordering::Relaxed);
        if owner == id
            || (owner == 0
                && shard
                    .owner
                    .compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
        {
            (shard, true)
        } else {
            (&self.shared, false)
        }
    }

    #[inline]
    pub(crate) fn started(&self) {
        let (shard, owned) = self.shard();
        add(&shard.delivered, 1, owned);
    }

    #[inline]
    /// Counts a call that ended `ended` after `duration` nanoseconds, `end_to_end` nanoseconds
    /// after its message's timestamp.
    pub(crate) fn finished(&self, ended: Ended, duration: u64, end_to_end: u64) {
        let (shard, owned) = self.shard();
        let count = match ended {
            Ended::Acked => &shard.acked,
            Ended::Retried => &shard.retried,
            Ended::Rejected => &shard.rejected,
            Ended::Failed => &shard.failed,
            Ended::HandedBack => &shard.handed_back,
        };
        add(count, 1, owned);
        add(&shard.duration_sum, duration, owned);
        raise(&shard.duration_max, duration, owned);
        add(&shard.end_to_end_sum, end_to_end, owned);
        raise(&shard.end_to_end_max, end_to_end, owned);
    }

    /// Counts one re-attempt the stack's retry makes of a call that has not ended.
    pub(crate) fn reattempted(&self) {
        let (shard, owned) = self.shard();
        add(&shard.reattempts, 1, owned);
    }

    pub(crate) fn abandoned(&self) {
        let (shard, owned) = self.shard();
        add(&shard.abandoned, 1, owned);
    }

    fn load(&self, topic: &str, handler: &str) -> HandlerStats {
        let shards = || self.owned.iter().chain(std::iter::once(&self.shared));
        let sum = |f: fn(&Shard) -> &AtomicU64| {
            shards().fold(0u64, |s, shard| {
                s.wrapping_add(f(shard).load(Ordering::Relaxed))
            })
        };
        let max = |f: fn(&Shard) -> &AtomicU64| {
            shards().fold(0u64, |m, shard| m.max(f(shard).load(Ordering::Relaxed)))
        };
        // Outcomes before `delivered`; separate counters are not read as one picture anyway,
        // so in-flight saturates at zero.
        let acked = sum(|s| &s.acked);
        let retried = sum(|s| &s.retried);
        let rejected = sum(|s| &s.rejected);
        let failed = sum(|s| &s.failed);
        let handed_back = sum(|s| &s.handed_back);
        let abandoned = sum(|s| &s.abandoned);
        let delivered = sum(|s| &s.delivered);
        let ended = acked + retried + rejected + failed + handed_back;
        let stats = |sum_nanos: u64, max_nanos: u64| DurationStats {
            count: ended,
            sum_seconds: Duration::from_nanos(sum_nanos).as_secs_f64(),
            max_seconds: Duration::from_nanos(max_nanos).as_secs_f64(),
        };
        HandlerStats {
            topic: topic.to_owned(),
            handler: handler.to_owned(),
            delivered,
            acked,
            retried: retried.wrapping_add(sum(|s| &s.reattempts)),
            rejected,
            failed,
            handed_back,
            in_flight: delivered.saturating_sub(ended + abandoned),
            duration: stats(sum(|s| &s.duration_sum), max(|s| &s.duration_max)),
            end_to_end: stats(sum(|s| &s.end_to_end_sum), max(|s| &s.end_to_end_max)),
        }
    }
}

/// Counters by (topic label, handler).
type Rows = BTreeMap<(String, String), Arc<Counters>>;

/// In-process counts kept beside the `metrics` facade, for snapshots. Cheap to clone; clones
/// share the counts, so one registry can serve many handlers. Counting is lock-free; the lock
/// is taken only the first time a (topic label, handler) pair is seen and for snapshots.
#[derive(Debug, Clone, Default)]
pub struct MetricsRegistry {
    rows: Arc<Mutex<Rows>>,
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn counters(&self, topic: &str, handler: &str) -> Arc<Counters> {
        let mut rows = self.rows.lock();
        rows.entry((topic.to_owned(), handler.to_owned()))
            .or_default()
            .clone()
    }

    /// Drops every row of `handler` (all its topic labels): for a handler whose name is
    /// never used again (e.g. a node's per-connection WebSocket subscriptions), so the
    /// registry does not grow with handlers that came and went. A stack still running
    /// under that name goes on counting into rows no snapshot shows; one made later under
    /// the name starts from zero.
    pub fn forget(&self, handler: &str) {
        self.rows.lock().retain(|(_, h), _| h != handler);
    }

    /// The counts now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let rows = self.rows.lock();
        MetricsSnapshot {
            taken_at: SystemTime::now(),
            handlers: rows
                .iter()
                .map(|((topic, handler), c)| c.load(topic, handler))
                .collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// More threads than owned shards, all counting at once: the shared shard and the owned
    /// ones together lose nothing.
    #[test]
    fn sharded_counts_add_up_across_threads() {
        const THREADS: u64 = 3 * OWNED_SHARDS as u64;
        const CALLS: u64 = 2_000;
        let counters = Arc::new(Counters::default());
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for i in 0..CALLS {
                        counters.started();
                        let ended = if i % 4 == 0 {
                            Ended::Failed
                        } else {
                            Ended::Acked
                        };
                        counters.finished(ended, 1_000, (t + 1) * 1_000);
                    }
                    counters.reattempted();
                    counters.started();
                    counters.abandoned();
                    counters.started(); // still running when the snapshot is taken
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let stats = counters.load("t", "h");
        assert_eq!(stats.delivered, THREADS * (CALLS + 2));
        assert_eq!(stats.acked, THREADS * CALLS * 3 / 4);
        assert_eq!(stats.failed, THREADS * CALLS / 4);
        assert_eq!(stats.retried, THREADS, "re-attempts are retries");
        assert_eq!(stats.in_flight, THREADS, "re-attempts end no call");
        assert_eq!(stats.duration.count, THREADS * CALLS);
        let micros = |s: f64| (s * 1e6).round() as u64;
        assert_eq!(micros(stats.duration.sum_seconds), THREADS * CALLS);
        assert_eq!(micros(stats.duration.max_seconds), 1);
        assert_eq!(micros(stats.end_to_end.max_seconds), THREADS);
        assert_eq!(
            micros(stats.end_to_end.sum_seconds),
            CALLS * THREADS * (THREADS + 1) / 2
        );
    }

    /// `forget` drops every topic row of one handler and no other handler's.
    #[test]
    fn forget_drops_the_rows_of_one_handler() {
        let r = MetricsRegistry::new();
        let _ = r.counters("a.#", "gone");
        let _ = r.counters("b.#", "gone");
        let _ = r.counters("a.#", "stays");
        r.forget("gone");
        let names: Vec<_> = r
            .snapshot()
            .handlers
            .iter()
            .map(|h| h.handler.clone())
            .collect();
        assert_eq!(names, vec!["stays".to_owned()]);
    }
}
