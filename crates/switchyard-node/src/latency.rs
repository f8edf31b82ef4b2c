//! Handler latency percentiles for `/v1/stats`: every handler call on the node's bus is timed
//! into a per-handler histogram of fixed log-scale buckets (four per doubling, 1 µs to about
//! 2 minutes), counted with atomics, so recording takes no lock. A percentile is the upper
//! bound of the bucket it falls in (at most 19 % above the true value), capped by the largest
//! call seen. The figures cover every call since the node started.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard::{BoxError, BoxHandler, Envelope, Outcome, boxed};

/// Buckets per doubling of the duration.
const PER_DOUBLING: f64 = 4.0;
/// Number of buckets: bucket `i` holds calls up to `1 µs × 2^(i/4)`; the last one everything
/// longer (2^(27) µs is about 134 s).
const BUCKETS: usize = 109;
/// Upper bound of bucket 0, nanoseconds.
const FIRST_NS: f64 = 1_000.0;

/// The bucket of a duration in nanoseconds.
fn bucket(nanos: u64) -> usize {
    if (nanos as f64) <= FIRST_NS {
        return 0;
    }
    let i = (PER_DOUBLING * (nanos as f64 / FIRST_NS).log2()).ceil();
    (i as usize).min(BUCKETS - 1)
}

/// Upper bound of bucket `i`, seconds.
fn upper_seconds(i: usize) -> f64 {
    FIRST_NS * (i as f64 / PER_DOUBLING).exp2() / 1e9
}

/// One handler's histogram.
#[derive(Debug)]
struct Histogram {
    counts: [AtomicU64; BUCKETS],
    max_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            max_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket(nanos)].fetch_add(1, Ordering::Relaxed);
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    fn load(&self) -> ([u64; BUCKETS], u64) {
        (
            std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            self.max_nanos.load(Ordering::Relaxed),
        )
    }
}

/// Count, p50/p95/p99 and max of a set of calls, seconds (`null` percentiles when empty).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    /// Calls timed.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50_seconds: Option<f64>,
    /// 95th percentile.
    pub(crate) p95_seconds: Option<f64>,
    /// 99th percentile.
    pub(crate) p99_seconds: Option<f64>,
    /// Longest call.
    pub(crate) max_seconds: Option<f64>,
}

impl Percentiles {
    fn of(counts: &[u64; BUCKETS], max_nanos: u64) -> Self {
        let count: u64 = counts.iter().sum();
        let max = max_nanos as f64 / 1e9;
        let at = |q: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            // The smallest bucket whose cumulative count reaches rank ⌈q·count⌉.
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Some(upper_seconds(i).min(max));
                }
            }
            Some(max)
        };
        Self {
            count,
            p50_seconds: at(0.50),
            p95_seconds: at(0.95),
            p99_seconds: at(0.99),
            max_seconds: (count > 0).then_some(max),
        }
    }
}

/// One handler's figures in `/v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct HandlerLatency {
    /// Handler (subscription) name.
    pub(crate) handler: String,
    /// Its percentiles.
    #[serde(flatten)]
    pub(crate) latency: Percentiles,
}

/// `latency` in `/v1/stats`: all handlers together and each one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct LatencyJson {
    /// What the figures cover.
    pub(crate) window: &'static str,
    /// Every handler's calls together.
    pub(crate) all: Percentiles,
    /// One row per handler, by name.
    pub(crate) handlers: Vec<HandlerLatency>,
}

/// Histograms by handler name; cheap to clone (clones share them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Latencies {
    rows: Arc<RwLock<BTreeMap<String, Arc<Histogram>>>>,
}

impl Latencies {
    fn histogram(&self, handler: &str) -> Arc<Histogram> {
        if let Some(h) = self
            .rows
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(handler)
        {
            return h.clone();
        }
        self.rows
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(handler.to_owned())
            .or_default()
            .clone()
    }

    /// `handler`, timing each call into the histogram of `name`, and reporting the result
    /// of a delivery of a replayed message to `live`'s replay tracker (one atomic load per
    /// call while no replay is watched).
    pub(crate) fn wrap(
        &self,
        name: &str,
        handler: BoxHandler,
        live: Arc<crate::live::Live>,
        trace: Option<Arc<crate::trace::TraceBuffer>>,
    ) -> BoxHandler {
        boxed(Timed {
            inner: handler,
            histogram: self.histogram(name),
            name: name.into(),
            live,
            trace,
        })
    }

    /// Drops the histogram of `name` (a per-connection WebSocket subscription that ended:
    /// its name is never used again), so the rows do not grow with client churn.
    pub(crate) fn forget(&self, name: &str) {
        self.rows
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Percentiles of every handler and of all of them together.
    pub(crate) fn snapshot(&self) -> LatencyJson {
        let rows = self.rows.read().unwrap_or_else(|p| p.into_inner());
        let mut total = [0u64; BUCKETS];
        let mut total_max = 0;
        let handlers = rows
            .iter()
            .map(|(name, h)| {
                let (counts, max) = h.load();
                for (t, n) in total.iter_mut().zip(counts) {
                    *t += n;
                }
                total_max = total_max.max(max);
                HandlerLatency {
                    handler: name.clone(),
                    latency: Percentiles::of(&counts, max),
                }
            })
            .collect();
        LatencyJson {
            window: "since_start",
            all: Percentiles::of(&total, total_max),
            handlers,
        }
    }
}

/// A handler whose calls are timed (and, for replayed messages, followed).
#[derive(Clone)]
struct Timed {
    inner: BoxHandler,
    histogram: Arc<Histogram>,
    /// The handler's (subscription's) name.
    name: Arc<str>,
    live: Arc<crate::live::Live>,
    /// Where each call is kept for `/v1/trace` (`None`: tracing off).
    trace: Option<Arc<crate::trace::TraceBuffer>>,
}

impl tower::Service<Envelope> for Timed {
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let started = Instant::now();
        let watched = self
            .live
            .replays
            .active()
            .then(|| (env.id.clone(), self.live.clone(), self.name.clone()));
        let traced = self.trace.clone().map(|t| {
            let message = (
                env.id.clone(),
                env.correlation_id.clone(),
                env.delivery.attempt,
                env.topic.clone(),
            );
            (t, message, self.name.clone(), std::time::SystemTime::now())
        });
        let call = self.inner.call(env);
        let histogram = self.histogram.clone();
        Box::pin(async move {
            let out = call.await;
            let took = started.elapsed();
            histogram.record(took);
            if let Some((id, live, name)) = watched {
                live.replay_delivered(&id, &name, &out);
            }
            if let Some((trace, message, name, at)) = traced {
                trace.delivered(message, &name, at, took, &out);
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_a_fourth_of_a_doubling() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1_000), 0);
        assert_eq!(bucket(1_001), 1);
        assert_eq!(bucket(2_000), 4);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        for i in 1..BUCKETS - 1 {
            let upper = (upper_seconds(i) * 1e9).floor() as u64;
            assert_eq!(bucket(upper), i, "upper bound of bucket {i}");
            assert_eq!(bucket(upper + 2), i + 1, "just above bucket {i}");
        }
    }

    #[test]
    fn percentiles_are_within_a_bucket_of_the_truth() {
        let h = Histogram::default();
        // 1..=1000 ms: p50 = 500 ms, p95 = 950 ms, p99 = 990 ms.
        for ms in 1..=1000 {
            h.record(Duration::from_millis(ms));
        }
        let (counts, max) = h.load();
        let p = Percentiles::of(&counts, max);
        assert_eq!(p.count, 1000);
        assert_eq!(p.max_seconds, Some(1.0));
        for (got, want) in [
            (p.p50_seconds, 0.5),
            (p.p95_seconds, 0.95),
            (p.p99_seconds, 0.99),
        ] {
            let got = got.unwrap();
            assert!(got >= want && got <= want * 1.19, "{got} for {want}");
        }
    }

    #[test]
    fn no_calls_no_percentiles() {
        let p = Percentiles::of(&[0; BUCKETS], 0);
        assert_eq!(p.count, 0);
        assert_eq!(p.p50_seconds, None);
        assert_eq!(p.max_seconds, None);
    }
}
