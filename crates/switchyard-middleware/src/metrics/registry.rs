use std::collections::BTreeMap;
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
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        self.count += 1;
        self.sum_seconds += s;
        if s > self.max_seconds {
            self.max_seconds = s;
        }
    }

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

/// In-process counts kept beside the `metrics` facade, for snapshots. Cheap to clone; clones
/// share the counts, so one registry can serve many handlers.
#[derive(Debug, Clone, Default)]
pub struct MetricsRegistry {
    stats: Arc<Mutex<BTreeMap<(String, String), HandlerStats>>>,
}

pub(crate) enum Ended {
    Acked,
    Retried,
    Rejected,
    Failed,
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, topic: &str, handler: &str, f: impl FnOnce(&mut HandlerStats) -> R) -> R {
        let mut map = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_owned(), handler.to_owned());
        let entry = map.entry(key).or_insert_with(|| HandlerStats {
            topic: topic.to_owned(),
            handler: handler.to_owned(),
            ..HandlerStats::default()
        });
        f(entry)
    }

    pub(crate) fn started(&self, topic: &str, handler: &str) {
        self.with(topic, handler, |s| {
            s.delivered += 1;
            s.in_flight += 1;
        });
    }

    pub(crate) fn finished(
        &self,
        topic: &str,
        handler: &str,
        ended: Ended,
        duration: Duration,
        end_to_end: Duration,
    ) {
        self.with(topic, handler, |s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            match ended {
                Ended::Acked => s.acked += 1,
                Ended::Retried => s.retried += 1,
                Ended::Rejected => s.rejected += 1,
                Ended::Failed => s.failed += 1,
            }
            s.duration.observe(duration);
            s.end_to_end.observe(end_to_end);
        });
    }

    pub(crate) fn abandoned(&self, topic: &str, handler: &str) {
        self.with(topic, handler, |s| {
            s.in_flight = s.in_flight.saturating_sub(1)
        });
    }

    /// The counts now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let map = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        MetricsSnapshot {
            taken_at: SystemTime::now(),
            handlers: map.values().cloned().collect(),
        }
    }
}
