//! The [`Runner`]: starts a [`Pipeline`], feeds it from [`Source`]s with at most N runs in
//! flight, and shuts it down without losing what it accepted.
//!
//! Shutdown order (see [`RunningPipeline::shutdown`]): stop the sources → close intake → wait
//! until no run is in flight (the drain) → stop the stage tasks, which call `finish` → snapshot the
//! monitor. Runs still in flight when the drain deadline passes are failed and dead-lettered with
//! reason `Shutdown`, never dropped silently.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{DeadLetter, DeadLetterSink, Envelope, InMemoryDeadLetters};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{FeedError, SourceError, StageError, StartError, short_type_name};
use crate::handoff::Settle;
use crate::monitor::{Monitor, MonitorSnapshot};
use crate::pipeline::{BuildCtx, Emit, Item, Pipeline, Shared};

/// Tells a task to stop. Cheap to clone; also fires when the runner is gone.
#[derive(Debug, Clone)]
pub struct StopSignal {
    rx: watch::Receiver<bool>,
}

impl StopSignal {
    /// A signal and the sender that fires it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self { rx })
    }

    /// Resolves once stop was requested (or the sender was dropped).
    pub async fn stopped(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Whether stop was requested.
    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}

/// Where messages come from. A source receives messages, hands each to the pipeline through its
/// [`Feed`] and stops when its [`StopSignal`] fires (or when it runs out).
///
/// A message is *acknowledged* by the pipeline when [`Feed::send`] returns `Ok`: from then on it is
/// exported, failed into the dead-letter sink, or (past the drain deadline) dead-lettered with
/// reason `Shutdown`.
pub trait Source<T>: Send + 'static {
    /// Name used in the monitor. Defaults to the type's name.
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name(std::any::type_name::<Self>()))
    }

    /// Receives until stopped or exhausted.
    fn run(
        self,
        feed: Feed<T>,
        stop: StopSignal,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// A source that feeds the items of an iterator, then ends.
#[derive(Debug, Clone)]
pub struct IterSource<I> {
    iter: I,
}

impl<I> IterSource<I> {
    /// A source yielding `iter`'s items.
    pub fn new(iter: I) -> Self {
        Self { iter }
    }
}

impl<T, I> Source<T> for IterSource<I>
where
    T: Send + 'static,
    I: IntoIterator<Item = T> + Send + 'static,
    I::IntoIter: Send,
{
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("iter-source")
    }

    async fn run(self, feed: Feed<T>, stop: StopSignal) -> Result<(), SourceError> {
        for item in self.iter {
            if stop.is_stopped() || feed.send(item).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Hands messages to a started pipeline. Cheap to clone: several sources may feed one pipeline
/// (fan-in).
pub struct Feed<T> {
    entry: Emit<T>,
    shared: Arc<Shared>,
}

impl<T> Clone for Feed<T> {
    fn clone(&self) -> Self {
        Self {
            entry: self.entry.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Feed<T> {
    /// Starts a run for `value`, waiting while the in-flight limit is reached. `Ok` means the
    /// pipeline acknowledged the message. Fails only once the pipeline is shutting down, giving the
    /// value back. A failed run is dead-lettered with an empty payload (no origin was given).
    pub async fn send(&self, value: T) -> Result<(), FeedError<T>> {
        self.start(value, None, Settle::none()).await
    }

    /// Like [`send`](Self::send), remembering the raw message `value` came from: if the run fails,
    /// `origin` (raw bytes included) goes to the dead-letter sink.
    pub async fn send_with_origin(&self, value: T, origin: Envelope) -> Result<(), FeedError<T>> {
        self.start(value, Some(origin), Settle::none()).await
    }

    /// Like [`send_with_origin`](Self::send_with_origin), for a message that must be settled
    /// where it came from: `settle` is settled ([`Settle::done`]) once the run ended, its
    /// output produced or `origin` dead-lettered. Refused (shutdown), `settle` is dropped
    /// unsettled, which hands the message back to where it came from when that can take it
    /// back ([`Settle::can_hand_back`]); the value and `origin` come back in the error.
    pub async fn send_settled(
        &self,
        value: T,
        origin: Envelope,
        settle: Settle,
    ) -> Result<(), FeedError<T>> {
        self.start(value, Some(origin), settle).await
    }

    async fn start(
        &self,
        value: T,
        origin: Option<Envelope>,
        settle: Settle,
    ) -> Result<(), FeedError<T>> {
        match self.shared.start_run(origin).await {
            Ok(token) => {
                token.on_end(settle);
                (self.entry)(Item { value, token });
                Ok(())
            }
            Err(origin) => Err(FeedError { value, origin }),
        }
    }
}

impl<T> Feed<T> {
    /// Dead-letters a message the source could not turn into a run (undecodable, or refused at
    /// shutdown); counted as `rejected` in the monitor.
    pub fn dead_letter(&self, letter: DeadLetter) {
        self.shared.dead_letters.put(letter);
        self.shared.monitor.record_rejected();
    }

    /// The pipeline's monitor (sources record their own operations in it).
    pub fn monitor(&self) -> &Monitor {
        &self.shared.monitor
    }

    /// Whether intake is closed (shutdown started).
    pub fn is_closed(&self) -> bool {
        self.shared.semaphore.is_closed()
    }
}

/// Starts pipelines. Every default is documented on its setter.
///
/// ```
/// use std::sync::Arc;
/// use switchyard_core::InMemoryDeadLetters;
/// use switchyard_pipeline::{map_fn, IterSource, Monitor, Pipeline, Runner, StageError};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let pipeline = Pipeline::new(map_fn("parse", |s: &'static str| s.parse::<i64>().map_err(StageError::decode)))
///     .then(map_fn("double", |x: i64| Ok::<_, StageError>(x * 2)));
/// let dlq = Arc::new(InMemoryDeadLetters::new(100));
/// let mut running = Runner::new(pipeline).max_in_flight(8).dead_letters(dlq.clone()).start().await?;
/// running.spawn_source(IterSource::new(vec!["1", "2", "x"]));
/// let report = running.run_until(std::future::pending::<()>()).await; // ends when the source does
/// assert_eq!((report.monitor.completed, report.monitor.failed), (2, 1));
/// assert_eq!(dlq.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Runner<In, Out> {
    pipeline: Pipeline<In, Out>,
    max_in_flight: usize,
    monitor: Monitor,
    dead_letters: Arc<dyn DeadLetterSink>,
    drain_timeout: Duration,
}

impl<In, Out> std::fmt::Debug for Runner<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("pipeline", &self.pipeline)
            .field("max_in_flight", &self.max_in_flight)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

/// Runs in flight unless [`Runner::max_in_flight`] says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Drain deadline unless [`Runner::drain_timeout`] says otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl<In, Out> Runner<In, Out>
where
    In: Send + 'static,
    Out: Send + 'static,
{
    /// A runner for `pipeline` with the defaults: 64 runs in flight, a fresh [`Monitor`], a
    /// 10,000-entry [`InMemoryDeadLetters`], a 30 s drain deadline.
    pub fn new(pipeline: Pipeline<In, Out>) -> Self {
        Self {
            pipeline,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            monitor: Monitor::new(),
            dead_letters: Arc::new(InMemoryDeadLetters::default()),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// At most `n` runs in flight (at least 1); sources wait for a free slot (backpressure).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Records into `monitor` (keep a clone to read it while running).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = monitor;
        self
    }

    /// Dead-letters failed runs and undecodable messages into `sink`.
    pub fn dead_letters(mut self, sink: impl DeadLetterSink) -> Self {
        self.dead_letters = Arc::new(sink);
        self
    }

    /// How long shutdown waits for sources to stop and in-flight runs to finish, measured on
    /// tokio's clock from the start of the shutdown (on a paused clock, virtual time).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Spawns the stage tasks and calls every stage's `init`. On an error every task is stopped
    /// again and nothing is left running.
    pub async fn start(self) -> Result<RunningPipeline<In>, StartError> {
        if self.max_in_flight == 0 {
            return Err(StartError::InvalidConfig(
                "max_in_flight must be at least 1",
            ));
        }
        let shared = Arc::new(Shared::new(
            self.monitor,
            self.dead_letters,
            self.max_in_flight,
        ));
        let (stop_tx, stop) = StopSignal::new();
        let mut ctx = BuildCtx {
            shared: shared.clone(),
            stop,
            ready: Vec::new(),
            tasks: JoinSet::new(),
        };
        let end: Emit<Out> = Arc::new(|item: Item<Out>| item.token.settle());
        let entry = self.pipeline.build(end, &mut ctx);
        let BuildCtx { ready, tasks, .. } = ctx;
        let mut running = RunningPipeline {
            entry,
            shared,
            stop_tx,
            sources_stop_tx: StopSignal::new().0,
            tasks,
            sources: JoinSet::new(),
            drain_timeout: self.drain_timeout,
            source_errors: Vec::new(),
        };
        for (stage, rx) in ready {
            let res = rx
                .await
                .unwrap_or_else(|_| Err(StartError::InitAborted { stage }));
            if let Err(e) = res {
                let _ = running.stop_tx.send(true);
                while running.tasks.join_next().await.is_some() {}
                return Err(e);
            }
        }
        Ok(running)
    }
}

/// Why a pipeline stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The shutdown future given to [`RunningPipeline::run_until`] resolved (e.g. SIGINT/SIGTERM).
    Requested,
    /// Every source ended by itself.
    SourcesFinished,
}

/// What a stopped pipeline reports.
#[derive(Debug)]
pub struct RunReport {
    /// Why it stopped.
    pub reason: StopReason,
    /// Every number at the end, after the drain.
    pub monitor: MonitorSnapshot,
    /// Whether every accepted run ended before the drain deadline.
    pub drained: bool,
    /// How long the shutdown took, on tokio's clock (virtual time on a paused clock).
    pub shutdown_took: Duration,
    /// Sources that ended with an error (name, error).
    pub source_errors: Vec<(String, SourceError)>,
    /// Stages whose `finish` failed (name, error).
    pub finish_errors: Vec<(String, StageError)>,
}

/// A started pipeline. Feed it directly with [`feed`](Self::feed) or spawn sources, then
/// [`run_until`](Self::run_until) a shutdown signal.
///
/// End it with `run_until` or [`shutdown`](Self::shutdown): dropping it aborts the stage and
/// source tasks without draining, and stages' `finish` (e.g. an exporter's flush) does not run.
pub struct RunningPipeline<In> {
    entry: Emit<In>,
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    sources_stop_tx: watch::Sender<bool>,
    tasks: JoinSet<crate::pipeline::TaskEnd>,
    sources: JoinSet<(String, Result<(), SourceError>)>,
    drain_timeout: Duration,
    source_errors: Vec<(String, SourceError)>,
}

impl<In> std::fmt::Debug for RunningPipeline<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningPipeline")
            .field("in_flight", &self.shared.in_flight())
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl<In: Send + 'static> RunningPipeline<In> {
    /// A handle to feed the pipeline by hand.
    pub fn feed(&self) -> Feed<In> {
        Feed {
            entry: self.entry.clone(),
            shared: self.shared.clone(),
        }
    }

    /// The pipeline's monitor.
    pub fn monitor(&self) -> &Monitor {
        &self.shared.monitor
    }

    /// Spawns `source` as a task feeding this pipeline. Several sources may feed one pipeline
    /// (fan-in).
    pub fn spawn_source<S: Source<In>>(&mut self, source: S) {
        let name = source.name().into_owned();
        let feed = self.feed();
        let stop = StopSignal {
            rx: self.sources_stop_tx.subscribe(),
        };
        // Owns the source; ends when the source returns (stop signal or exhaustion).
        self.sources
            .spawn(async move { (name, source.run(feed, stop).await) });
    }

    /// Runs until `shutdown` resolves or, if sources were spawned, until all of them ended; then
    /// shuts down gracefully.
    pub async fn run_until<F: Future>(mut self, shutdown: F) -> RunReport {
        let reason = if self.sources.is_empty() {
            shutdown.await;
            StopReason::Requested
        } else {
            let sources = &mut self.sources;
            let errors = &mut self.source_errors;
            let all_sources_done = async {
                while let Some(done) = sources.join_next().await {
                    collect_source_end(done, errors);
                }
            };
            tokio::select! {
                _ = shutdown => StopReason::Requested,
                () = all_sources_done => StopReason::SourcesFinished,
            }
        };
        self.stop(reason).await
    }

    /// Shuts down now: stop sources, close intake, drain, stop stages.
    pub async fn shutdown(self) -> RunReport {
        self.stop(StopReason::Requested).await
    }

    async fn stop(mut self, reason: StopReason) -> RunReport {
        // Deadlines on tokio's clock, the one the waits below run on (on a paused clock, time
        // skipped before the shutdown does not count against the drain).
        let started = Instant::now();
        let deadline = started + self.drain_timeout;
        // 1. Sources stop receiving. A source blocked on a full pipeline still gets its slot as
        //    runs finish, so this ends.
        let _ = self.sources_stop_tx.send(true);
        let sources_done = tokio::time::timeout_at(deadline, async {
            while let Some(done) = self.sources.join_next().await {
                collect_source_end(done, &mut self.source_errors);
            }
        })
        .await;
        if sources_done.is_err() {
            tracing::warn!("sources did not stop before the drain deadline; aborting them");
            self.sources.abort_all();
            while let Some(done) = self.sources.join_next().await {
                collect_source_end(done, &mut self.source_errors);
            }
        }
        // 2. Close intake: no new run can start (manual feeds get FeedError from now on).
        self.shared.semaphore.close();
        // 3. Drain: wait until every accepted run ended.
        let drained = self
            .shared
            .wait_idle(deadline.saturating_duration_since(Instant::now()))
            .await;
        if !drained {
            tracing::warn!(
                in_flight = self.shared.in_flight(),
                "drain deadline passed; failing the runs still in flight"
            );
        }
        // 4. Stop the stage tasks; each calls `finish`.
        let _ = self.stop_tx.send(true);
        drop(self.entry);
        let mut finish_errors = Vec::new();
        // A stage stuck in `run` or `finish` past the deadline (plus a grace second) is aborted.
        let grace = deadline.max(Instant::now()) + Duration::from_secs(1);
        let tasks = &mut self.tasks;
        let joined = tokio::time::timeout_at(grace, async {
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err((stage, e))) => finish_errors.push((stage, e)),
                    Err(join) => tracing::error!(error = %join, "stage task ended abnormally"),
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("stage tasks did not stop in time; aborting them");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        RunReport {
            reason,
            monitor: self.shared.monitor.snapshot(),
            drained,
            shutdown_took: started.elapsed(),
            source_errors: self.source_errors,
            finish_errors,
        }
    }
}

fn collect_source_end(
    done: Result<(String, Result<(), SourceError>), tokio::task::JoinError>,
    errors: &mut Vec<(String, SourceError)>,
) {
    match done {
        Ok((_, Ok(()))) => {}
        Ok((name, Err(e))) => {
            tracing::error!(source = %name, error = %e, "source failed");
            errors.push((name, e));
        }
        Err(join) if join.is_cancelled() => {}
        Err(join) => tracing::error!(error = %join, "source task ended abnormally"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_signal_fires_on_send_and_on_drop() {
        let (tx, mut stop) = StopSignal::new();
        assert!(!stop.is_stopped());
        tx.send(true).unwrap();
        stop.stopped().await;
        assert!(stop.is_stopped());

        let (tx, mut stop) = StopSignal::new();
        drop(tx);
        assert!(stop.is_stopped());
        stop.stopped().await;
    }
}
