//! The [`Monitor`]: what every stage did, how long it took and how runs ended.
//!
//! Counts are kept per stage and operation (`parse`/`run`, `zmq-source`/`recv`, ...). Durations of
//! successful calls go into a bounded window per operation (the most recent `window` samples, 1024
//! by default) from which p50/p95/p99 are computed on demand; memory stays bounded however long the
//! pipeline runs. Errors are counted by their error type. Run counters (`accepted`, `completed`,
//! `failed`, `rejected`) all start at zero.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use smol_str::SmolStr;
use tokio::sync::Notify;

/// Samples kept per operation unless [`Monitor::with_window`] says otherwise.
pub const DEFAULT_WINDOW: usize = 1024;

/// Collects counts and timings from every stage of a pipeline. Cheap to clone; all clones share
/// the same numbers.
///
/// ```
/// use std::time::Duration;
/// use switchyard_pipeline::Monitor;
/// let m = Monitor::new();
/// let op = m.op("parse", "run");
/// op.success(Duration::from_micros(10));
/// op.error("decode");
/// let snap = m.snapshot();
/// let parse = snap.op("parse", "run").unwrap();
/// assert_eq!((parse.success, parse.errors), (1, 1));
/// assert_eq!(parse.error_types["decode"], 1);
/// assert_eq!(snap.completed, 0); // every counter starts initialised
/// ```
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

struct Inner {
    window: usize,
    ops: Mutex<BTreeMap<(SmolStr, SmolStr), Arc<OpCell>>>,
    accepted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    changed: Notify,
}

struct OpCell {
    window: usize,
    stats: Mutex<OpStats>,
}

#[derive(Default)]
struct OpStats {
    success: u64,
    errors: u64,
    total_nanos: u128,
    max_nanos: u64,
    recent: VecDeque<u64>,
    error_types: BTreeMap<SmolStr, u64>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("window", &self.inner.window)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor keeping the last [`DEFAULT_WINDOW`] durations per operation.
    pub fn new() -> Self {
        Self::with_window(DEFAULT_WINDOW)
    }

    /// A monitor keeping the last `window` durations per operation (at least 1).
    pub fn with_window(window: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                window: window.max(1),
                ops: Mutex::new(BTreeMap::new()),
                accepted: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                changed: Notify::new(),
            }),
        }
    }

    /// The recorder for one stage and operation, created on first use. Keep it: recording through
    /// it touches only that operation's lock.
    pub fn op(&self, stage: &str, operation: &str) -> OpRecorder {
        let mut ops = self.inner.ops.lock();
        let cell = ops
            .entry((SmolStr::new(stage), SmolStr::new(operation)))
            .or_insert_with(|| {
                Arc::new(OpCell {
                    window: self.inner.window,
                    stats: Mutex::new(OpStats::default()),
                })
            })
            .clone();
        OpRecorder {
            cell,
            monitor: self.inner.clone(),
        }
    }

    /// A source handed one message to the pipeline (a run started).
    pub fn record_accepted(&self) {
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
    }

    /// A run finished with every branch successful.
    pub fn record_completed(&self) {
        self.inner.completed.fetch_add(1, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
    }

    /// A run finished with at least one failed branch.
    pub fn record_failed(&self) {
        self.inner.failed.fetch_add(1, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
    }

    /// A source dead-lettered a message before any run started (undecodable, or refused at shutdown).
    pub fn record_rejected(&self) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
    }

    /// Runs started.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Runs completed.
    pub fn completed(&self) -> u64 {
        self.inner.completed.load(Ordering::Relaxed)
    }

    /// Runs failed.
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// Messages dead-lettered by a source before a run started.
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// Every message a source received and has finished with: `completed + failed + rejected`.
    pub fn settled(&self) -> u64 {
        self.completed() + self.failed() + self.rejected()
    }

    /// Waits until `condition` holds for this monitor, or `timeout` passes. Returns whether it held.
    /// Wakes on every counter change, never by polling.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&Monitor) -> bool,
    ) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if condition(self) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// A copy of every number, with percentiles computed from the windows.
    pub fn snapshot(&self) -> MonitorSnapshot {
        let cells: Vec<_> = self
            .inner
            .ops
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let ops = cells
            .into_iter()
            .map(|((stage, operation), cell)| cell.snapshot(stage.as_str(), operation.as_str()))
            .collect();
        MonitorSnapshot {
            accepted: self.accepted(),
            completed: self.completed(),
            failed: self.failed(),
            rejected: self.rejected(),
            ops,
        }
    }
}

/// Records calls of one stage operation. Obtained from [`Monitor::op`]; cheap to clone.
#[derive(Clone)]
pub struct OpRecorder {
    cell: Arc<OpCell>,
    /// The monitor, whose waiters ([`Monitor::wait_until`]) each record wakes.
    monitor: Arc<Inner>,
}

impl fmt::Debug for OpRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpRecorder").finish_non_exhaustive()
    }
}

impl OpRecorder {
    /// One successful call that took `took`.
    pub fn success(&self, took: Duration) {
        let n = nanos(took);
        let mut s = self.cell.stats.lock();
        s.success += 1;
        s.total_nanos += u128::from(n);
        s.max_nanos = s.max_nanos.max(n);
        if s.recent.len() >= self.cell.window {
            s.recent.pop_front();
        }
        s.recent.push_back(n);
        drop(s);
        self.monitor.changed.notify_waiters();
    }

    /// One failed call, counted under `error_type`. Failed calls do not enter the duration window.
    pub fn error(&self, error_type: &str) {
        let mut s = self.cell.stats.lock();
        s.errors += 1;
        match s.error_types.get_mut(error_type) {
            Some(c) => *c += 1,
            None => {
                s.error_types.insert(SmolStr::new(error_type), 1);
            }
        }
        drop(s);
        self.monitor.changed.notify_waiters();
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl OpCell {
    fn snapshot(&self, stage: &str, operation: &str) -> OpSnapshot {
        let (success, errors, total_nanos, max_nanos, mut sorted, error_types) = {
            let s = self.stats.lock();
            (
                s.success,
                s.errors,
                s.total_nanos,
                s.max_nanos,
                s.recent.iter().copied().collect::<Vec<u64>>(),
                s.error_types
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect::<BTreeMap<String, u64>>(),
            )
        };
        // Sort outside the lock so recording never waits for a snapshot's sort.
        sorted.sort_unstable();
        OpSnapshot {
            stage: stage.to_owned(),
            operation: operation.to_owned(),
            success,
            errors,
            mean_ns: if success == 0 {
                None
            } else {
                u64::try_from(total_nanos / u128::from(success)).ok()
            },
            max_ns: (success > 0).then_some(max_nanos),
            window: sorted.len(),
            p50_ns: percentile(&sorted, 50.0),
            p95_ns: percentile(&sorted, 95.0),
            p99_ns: percentile(&sorted, 99.0),
            error_types,
        }
    }
}

/// The numbers of one stage operation at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpSnapshot {
    /// Stage (or source) name.
    pub stage: String,
    /// Operation (`run`, `recv`, `publish`, ...).
    pub operation: String,
    /// Successful calls.
    pub success: u64,
    /// Failed calls.
    pub errors: u64,
    /// Mean duration of all successful calls, in nanoseconds.
    pub mean_ns: Option<u64>,
    /// Longest successful call, in nanoseconds.
    pub max_ns: Option<u64>,
    /// How many samples the percentiles come from (the bounded window).
    pub window: usize,
    /// Median of the window, in nanoseconds.
    pub p50_ns: Option<u64>,
    /// 95th percentile of the window, in nanoseconds.
    pub p95_ns: Option<u64>,
    /// 99th percentile of the window, in nanoseconds.
    pub p99_ns: Option<u64>,
    /// Error counts by error type.
    pub error_types: BTreeMap<String, u64>,
}

/// Every number of a [`Monitor`] at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitorSnapshot {
    /// Runs started (messages a source handed to the pipeline and it acknowledged).
    pub accepted: u64,
    /// Runs whose every branch succeeded.
    pub completed: u64,
    /// Runs with a failed branch (each is in the dead-letter sink).
    pub failed: u64,
    /// Messages a source dead-lettered before starting a run.
    pub rejected: u64,
    /// Per stage and operation, sorted by stage then operation.
    pub ops: Vec<OpSnapshot>,
}

impl MonitorSnapshot {
    /// The numbers of one stage operation.
    pub fn op(&self, stage: &str, operation: &str) -> Option<&OpSnapshot> {
        self.ops
            .iter()
            .find(|o| o.stage == stage && o.operation == operation)
    }

    /// Runs started but not yet completed or failed.
    pub fn in_flight(&self) -> u64 {
        self.accepted.saturating_sub(self.completed + self.failed)
    }
}

struct Micros(Option<u64>);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ns) => write!(f, "{:.1}", ns as f64 / 1000.0),
            None => f.write_str("-"),
        }
    }
}

impl fmt::Display for MonitorSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "runs: accepted {} completed {} failed {} rejected {} in flight {}",
            self.accepted,
            self.completed,
            self.failed,
            self.rejected,
            self.in_flight()
        )?;
        writeln!(
            f,
            "{:<24} {:<10} {:>9} {:>7} {:>9} {:>9} {:>9}  errors by type",
            "stage", "operation", "ok", "errors", "p50 µs", "p95 µs", "p99 µs"
        )?;
        for o in &self.ops {
            let types: Vec<String> = o
                .error_types
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(
                f,
                "{:<24} {:<10} {:>9} {:>7} {:>9} {:>9} {:>9}  {}",
                o.stage,
                o.operation,
                o.success,
                o.errors,
                Micros(o.p50_ns).to_string(),
                Micros(o.p95_ns).to_string(),
                Micros(o.p99_ns).to_string(),
                types.join(" ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_bounded_and_percentiles_follow_it() {
        let m = Monitor::with_window(100);
        let op = m.op("s", "run");
        for i in 1..=1000u64 {
            op.success(Duration::from_nanos(i));
        }
        let snap = m.snapshot();
        let s = snap.op("s", "run").unwrap();
        assert_eq!(s.success, 1000);
        assert_eq!(s.window, 100);
        // The window holds 901..=1000.
        assert_eq!(s.p50_ns, Some(950));
        assert_eq!(s.p95_ns, Some(995));
        assert_eq!(s.p99_ns, Some(999));
        assert_eq!(s.max_ns, Some(1000));
        assert_eq!(s.mean_ns, Some(500));
    }

    #[test]
    fn percentile_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 100.0), Some(4));
    }

    #[test]
    fn counters_start_at_zero_and_errors_group_by_type() {
        let m = Monitor::new();
        let snap = m.snapshot();
        assert_eq!(
            (snap.accepted, snap.completed, snap.failed, snap.rejected),
            (0, 0, 0, 0)
        );
        let op = m.op("a", "run");
        op.error("decode");
        op.error("decode");
        op.error("timeout");
        m.record_accepted();
        m.record_failed();
        let snap = m.snapshot();
        let a = snap.op("a", "run").unwrap();
        assert_eq!(a.errors, 3);
        assert_eq!(a.error_types["decode"], 2);
        assert_eq!(a.error_types["timeout"], 1);
        assert_eq!(a.p50_ns, None);
        assert_eq!(snap.failed, 1);
        assert_eq!(m.settled(), 1);
        let text = snap.to_string();
        assert!(text.contains("decode=2"), "{text}");
    }

    #[tokio::test]
    async fn wait_until_wakes_on_change() {
        let m = Monitor::new();
        let m2 = m.clone();
        let task = tokio::spawn(async move {
            for _ in 0..5 {
                m2.record_accepted();
                tokio::task::yield_now().await;
            }
        });
        assert!(
            m.wait_until(Duration::from_secs(5), |m| m.accepted() == 5)
                .await
        );
        assert!(
            !m.wait_until(Duration::from_millis(10), |m| m.accepted() == 6)
                .await
        );
        task.await.unwrap();
    }
}
