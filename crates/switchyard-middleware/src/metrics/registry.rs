use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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
    /// `Retry` outcomes.
    pub retried: u64,
    /// `Reject` outcomes.
    pub rejected: u64,
    /// Errors.
    pub failed: u64,
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

/// Sum and maximum of a set of durations; the count is the number of calls that ended.
#[derive(Debug, Default)]
struct AtomicDurations {
    sum_nanos: AtomicU64,
    max_nanos: AtomicU64,
}

impl AtomicDurations {
    fn observe(&self, d: Duration) {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(n, Ordering::Relaxed);
        // A plain load first: the maximum rarely changes, so the common case writes nothing.
        if n > self.max_nanos.load(Ordering::Relaxed) {
            self.max_nanos.fetch_max(n, Ordering::Relaxed);
        }
    }

    fn load(&self, count: u64) -> DurationStats {
        DurationStats {
            count,
            sum_seconds: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
            max_seconds: Duration::from_nanos(self.max_nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
    }
}

/// Lock-free counters of one (topic label, handler) pair.
///
/// Kept to four atomic additions per call on the happy path (delivered, the outcome, the two
/// duration sums): the in-flight figure is derived (`delivered` minus the calls that ended or
/// were abandoned) and the duration counts are the number of calls that ended.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    abandoned: AtomicU64,
    duration: AtomicDurations,
    end_to_end: AtomicDurations,
}

/// How a call ended, for [`Counters::finished`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Acked,
    Retried,
    Rejected,
    Failed,
}

impl Ended {
    /// The category of a handler result.
    pub(crate) fn of(result: &Result<switchyard_core::Outcome, switchyard_core::BoxError>) -> Self {
        use switchyard_core::Outcome;
        match result {
            Ok(Outcome::Ack | Outcome::Reply(_)) => Self::Acked,
            Ok(Outcome::Retry { .. }) => Self::Retried,
            Ok(Outcome::Reject { .. }) => Self::Rejected,
            Err(_) => Self::Failed,
        }
    }
}

impl Counters {
    pub(crate) fn started(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn finished(&self, ended: Ended, duration: Duration, end_to_end: Duration) {
        match ended {
            Ended::Acked => &self.acked,
            Ended::Retried => &self.retried,
            Ended::Rejected => &self.rejected,
            Ended::Failed => &self.failed,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.duration.observe(duration);
        self.end_to_end.observe(end_to_end);
    }

    pub(crate) fn abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    fn load(&self, topic: &str, handler: &str) -> HandlerStats {
        // Separate counters are not read as one picture: in-flight saturates at zero.
        let acked = self.acked.load(Ordering::Relaxed);
        let retried = self.retried.load(Ordering::Relaxed);
        let rejected = self.rejected.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let abandoned = self.abandoned.load(Ordering::Relaxed);
        let delivered = self.delivered.load(Ordering::Relaxed);
        let ended = acked + retried + rejected + failed;
        HandlerStats {
            topic: topic.to_owned(),
            handler: handler.to_owned(),
            delivered,
            acked,
            retried,
            rejected,
            failed,
            in_flight: delivered.saturating_sub(ended + abandoned),
            duration: self.duration.load(ended),
            end_to_end: self.end_to_end.load(ended),
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
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.entry((topic.to_owned(), handler.to_owned()))
            .or_default()
            .clone()
    }

    /// The counts now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        MetricsSnapshot {
            taken_at: SystemTime::now(),
            handlers: rows
                .iter()
                .map(|((topic, handler), c)| c.load(topic, handler))
                .collect(),
        }
    }
}
